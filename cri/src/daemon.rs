//! crustd's life: prepare directories and the socket, open the store, serve CRI
//! and metrics, and on SIGTERM/SIGINT stop accepting, let in-flight calls finish
//! (bounded by `shutdown_timeout_secs`) and return. Containers and shims are not
//! touched by a daemon exit: they belong to the node, not to this process.

use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use k8s_cri::v1::image_service_server::ImageServiceServer;
use k8s_cri::v1::runtime_service_server::RuntimeServiceServer;
use tokio::sync::watch;

use crust_images::ImageStore;
use crust_sandbox::container::{Containers, ContainersConfig};
use crust_sandbox::{Paths, PodSandboxes};

use crate::config::{CgroupDriver, Config};
use crate::instrument::InstrumentLayer;
use crate::rootfs::ImageRootfs;
use crate::server::CriServer;
use crate::store::{Store, StoreError};
use crate::{Cri, metrics};

/// CRI requests outgrow gRPC's 4 MiB default (kubelet allows 16 MiB).
const MAX_MESSAGE_SIZE: usize = 16 * 1024 * 1024;
/// Responses may be larger still: ExecSync carries up to 16 MiB of stdout and
/// 16 MiB of stderr; what a client accepts is the client's choice.
const MAX_RESPONSE_SIZE: usize = 40 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("creating {path}: {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("socket {0} is held by a running crustd (or another live server); refusing to start")]
    SocketInUse(PathBuf),
    #[error("socket {path}: {message}")]
    Socket { path: PathBuf, message: String },
    #[error("metrics address {addr}: {source}")]
    Metrics {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("streaming address {addr}: {source}")]
    Streaming {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("opening the image store: {0}")]
    Images(#[from] crust_images::Error),
    #[error("opening pods and containers: {0}")]
    Sandbox(#[from] crust_sandbox::Error),
    #[error("serving CRI: {0}")]
    Serve(String),
    #[error("installing signal handlers: {0}")]
    Signals(std::io::Error),
}

/// Runs crustd until SIGTERM or SIGINT.
pub async fn run(config: Config) -> Result<(), DaemonError> {
    prepare_dirs(&config.root_dir, &config.state_dir)?;
    let _socket_lock = lock_socket(&config.socket)?;
    let listener = bind_socket(&config.socket)?;

    let store = Store::open(&config.root_dir.join("state.redb"))?;
    metrics::init();
    let metrics_listener = if config.metrics.enabled {
        let addr = config.metrics.address;
        Some(
            metrics::bind(addr)
                .await
                .map_err(|source| DaemonError::Metrics { addr, source })?,
        )
    } else {
        None
    };

    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(DaemonError::Signals)?;
    let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .map_err(DaemonError::Signals)?;

    let shutdown_timeout = Duration::from_secs(config.shutdown_timeout_secs);
    let socket_path = config.socket.clone();
    // Opening the image store also collects what interrupted pulls left behind.
    let cri = Arc::new(open_services(config, store).await?);
    let (stop_tx, stop_rx) = watch::channel(false);

    let metrics_task = metrics_listener.map(|l| {
        let stop = stopped(stop_rx.clone());
        tokio::spawn(async move {
            if let Err(e) = metrics::serve(l, stop).await {
                tracing::error!("metrics endpoint: {e}");
            }
        })
    });

    let trimmer = tokio::spawn(crate::memory::trim_periodically(stopped(stop_rx.clone())));
    let reloader = crate::reload::on_sighup(
        cri.config.source.clone(),
        cri.config.images.clone(),
        cri.images.clone(),
        stopped(stop_rx.clone()),
    )
    .map_err(DaemonError::Signals)?;

    let server = CriServer(cri.clone());
    let runtime = RuntimeServiceServer::new(server.clone())
        .max_decoding_message_size(MAX_MESSAGE_SIZE)
        .max_encoding_message_size(MAX_RESPONSE_SIZE);
    let images = ImageServiceServer::new(server)
        .max_decoding_message_size(MAX_MESSAGE_SIZE)
        .max_encoding_message_size(MAX_RESPONSE_SIZE);
    let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
    let instrument = InstrumentLayer::default();
    let in_flight = instrument.in_flight();
    let mut serve = tokio::spawn(
        tonic::transport::Server::builder()
            .layer(instrument)
            .add_service(runtime)
            .add_service(images)
            .serve_with_incoming_shutdown(incoming, stopped(stop_rx)),
    );

    tracing::info!(
        socket = %socket_path.display(),
        version = crate::RUNTIME_VERSION,
        "crustd is serving CRI"
    );
    let ready = tokio::spawn(crate::notify::ready_when_answering(socket_path.clone()));

    let result = tokio::select! {
        r = &mut serve => {
            // The server ended by itself: that is a failure, not a shutdown.
            Err(DaemonError::Serve(match r {
                Ok(Ok(())) => "server stopped unexpectedly".to_string(),
                Ok(Err(e)) => e.to_string(),
                Err(e) => e.to_string(),
            }))
        }
        _ = sigterm.recv() => Ok("SIGTERM"),
        _ = sigint.recv() => Ok("SIGINT"),
    };
    let result = match result {
        Ok(signal) => {
            tracing::info!(
                signal,
                "shutting down: no new calls, finishing in-flight ones"
            );
            crate::notify::stopping();
            let _ = stop_tx.send(true);
            // The server stops accepting at once; it is done when every
            // connection has closed or, since clients may keep idle
            // connections open, when no call is in flight any more.
            let drained = async {
                tokio::select! {
                    r = &mut serve => match r {
                        Ok(Ok(())) => Ok(()),
                        Ok(Err(e)) => Err(DaemonError::Serve(e.to_string())),
                        Err(e) => Err(DaemonError::Serve(e.to_string())),
                    },
                    _ = in_flight.idle() => Ok(()),
                }
            };
            match tokio::time::timeout(shutdown_timeout, drained).await {
                Ok(r) => r,
                Err(_) => {
                    tracing::warn!(
                        "in-flight calls did not finish within {}s; exiting anyway",
                        shutdown_timeout.as_secs()
                    );
                    Ok(())
                }
            }
        }
        Err(e) => Err(e),
    };
    serve.abort();
    ready.abort();
    trimmer.abort();
    reloader.abort();
    if let Some(t) = metrics_task {
        t.abort();
    }
    let _ = std::fs::remove_file(&socket_path);
    tracing::info!("crustd stopped");
    result
}

/// Opens the images, pods and containers of this node from the state store.
async fn open_services(config: Config, store: Store) -> Result<Cri, DaemonError> {
    let db = store.database();
    let images = ImageStore::open(
        config.root_dir.join("images"),
        config.images.clone(),
        db.clone(),
    )
    .await?;
    let pods = PodSandboxes::open(
        config.sandbox.clone(),
        db.clone(),
        Paths {
            root_dir: config.root_dir.clone(),
            state_dir: config.state_dir.clone(),
        },
        config.cgroup_driver,
    )?;
    let containers = Containers::open(
        ContainersConfig {
            state_dir: config.state_dir.clone(),
            systemd_cgroup: config.cgroup_driver == CgroupDriver::Systemd,
        },
        db,
        pods.clone(),
        Arc::new(ImageRootfs(images.clone())),
    )
    .await?;
    let streaming = crate::streaming::start(&config.streaming, containers.clone(), pods.clone())
        .await
        .map_err(|source| DaemonError::Streaming {
            addr: config.streaming.address,
            source,
        })?;
    Ok(Cri {
        config,
        store,
        images,
        pods,
        containers,
        streaming,
    })
}

async fn stopped(mut rx: watch::Receiver<bool>) {
    // An error means the sender is gone, which also means stop.
    let _ = rx.wait_for(|s| *s).await;
}

/// Creates a missing directory (and its missing parents) 0700; an existing one keeps its
/// mode here (it may be shared, like the socket's `/run`).
fn create_dir(dir: &Path) -> Result<(), DaemonError> {
    if !dir.exists() {
        crust_state::private::create_dir(dir).map_err(|source| DaemonError::Dir {
            path: dir.to_owned(),
            source,
        })?;
    }
    Ok(())
}

/// Creates root_dir and state_dir, and makes an older install's crust-owned paths private:
/// the two dirs, what is directly in them, and the directories holding images, bundles and
/// pods with their entries (each change is logged). Below them, crust creates everything
/// owner-only.
fn prepare_dirs(root_dir: &Path, state_dir: &Path) -> Result<(), DaemonError> {
    for dir in [root_dir, state_dir] {
        create_dir(dir)?;
    }
    for dir in [
        root_dir.to_owned(),
        root_dir.join("images"),
        state_dir.to_owned(),
        state_dir.join("containers"),
        state_dir.join("pods"),
    ] {
        crust_state::private::tighten_dir_and_entries(&dir);
    }
    Ok(())
}

/// An exclusive lock beside the socket, held for the daemon's life. It closes the
/// race where two crustds starting at once both find the socket stale.
fn lock_socket(socket: &Path) -> Result<std::fs::File, DaemonError> {
    let parent = socket.parent().unwrap_or(Path::new("/"));
    // Only root may use the socket (0660 root:root): its directory, if crust makes it, is
    // root's alone too.
    create_dir(parent)?;
    let mut lock_path = socket.as_os_str().to_owned();
    lock_path.push(".lock");
    let lock_path = PathBuf::from(lock_path);
    let file = crust_state::private::create_file(&lock_path).map_err(|e| DaemonError::Socket {
        path: lock_path.clone(),
        message: e.to_string(),
    })?;
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(DaemonError::SocketInUse(socket.to_owned()));
    }
    Ok(file)
}

/// Binds the CRI socket: a live server on it is refused, a stale socket file is
/// replaced, anything else at that path is left alone and refused.
fn bind_socket(path: &Path) -> Result<tokio::net::UnixListener, DaemonError> {
    let sock_err = |message: String| DaemonError::Socket {
        path: path.to_owned(),
        message,
    };
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(DaemonError::SocketInUse(path.to_owned()));
            }
            tracing::info!(socket = %path.display(), "replacing stale socket");
            std::fs::remove_file(path)
                .map_err(|e| sock_err(format!("removing stale socket: {e}")))?;
        }
        Ok(_) => {
            return Err(sock_err(
                "exists and is not a socket; refusing to replace it".to_string(),
            ));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(sock_err(e.to_string())),
    }
    let listener = tokio::net::UnixListener::bind(path).map_err(|e| sock_err(e.to_string()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .map_err(|e| sock_err(format!("chmod: {e}")))?;
    std::os::unix::fs::chown(path, Some(0), Some(0))
        .map_err(|e| sock_err(format!("chown: {e}")))?;
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Log lines written while `f` runs.
    fn logged(f: impl FnOnce()) -> String {
        #[derive(Clone, Default)]
        struct Buf(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Buf::default();
        let w = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || w.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(subscriber, f);
        String::from_utf8(buf.0.lock().unwrap().clone()).unwrap()
    }

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn start_up_tightens_an_older_install_and_logs_it() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("root");
        let state = d.path().join("state");
        let bundle = state.join("containers/c1");
        std::fs::create_dir_all(root.join("images")).unwrap();
        std::fs::create_dir_all(&bundle).unwrap();
        std::fs::write(root.join("state.redb"), "").unwrap();
        for (p, m) in [
            (&root, 0o755),
            (&root.join("images"), 0o755),
            (&root.join("state.redb"), 0o644),
            (&state, 0o711),
            (&state.join("containers"), 0o755),
            (&bundle, 0o755),
        ] {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
        }
        let log = logged(|| prepare_dirs(&root, &state).unwrap());
        for p in [
            &root,
            &root.join("images"),
            &state,
            &state.join("containers"),
            &bundle,
        ] {
            assert_eq!(mode(p), 0o700, "{}", p.display());
        }
        assert_eq!(mode(&root.join("state.redb")), 0o600);
        assert!(
            log.contains(&format!("path={}", root.display())) && log.contains("0755 -> 0700"),
            "{log}"
        );
        assert!(log.contains("0644 -> 0600"), "{log}");
        // Nothing left to change: nothing logged the second time.
        assert_eq!(logged(|| prepare_dirs(&root, &state).unwrap()), "");
    }

    #[test]
    fn new_dirs_are_made_owner_only() {
        let d = tempfile::tempdir().unwrap();
        let (root, state) = (d.path().join("a/root"), d.path().join("b/state"));
        prepare_dirs(&root, &state).unwrap();
        for p in [&root, &state, &d.path().join("a"), &d.path().join("b")] {
            assert_eq!(mode(p), 0o700, "{}", p.display());
        }
    }
}

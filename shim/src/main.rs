//! `crust-shim`: crust's per-pod containerd shim v2.
//!
//! One process per pod; every container of the pod and every exec is a task of it.
//! `crust-shim -namespace NS -id POD -address EVENTS start` (cwd = the pod's state dir,
//! `BootstrapParams` on stdin carrying the events ttrpc address and the socket directory)
//! starts the daemon detached (own session), prints where it listens and exits. The
//! socket goes in crust's own directory (the bootstrap's `socket_dir`, else
//! `$CRUST_SHIM_SOCKET_DIR`, else `/run/crust/s`; never `/run/containerd`); a second
//! `start` for the same pod finds the serving shim and prints its address.
//!
//! The shim's own log goes to the `log` FIFO when someone reads it (containerd does),
//! else to `shim.log` in the pod dir, never blocking; crust does not make that FIFO (one
//! nobody reads while crustd is down would stall the shim). The server's stderr is
//! `shim.log` too, so a start that fails leaves its reason there.
//!
//! The Task service and the modules it delegates to: `service.rs`.

mod cgroup;
mod checkpoint;
mod container;
mod io;
mod nexec;
mod oom;
mod process;
mod publisher;
mod reaper;
mod runtime;
mod service;

use std::{
    env,
    fs::{File, OpenOptions},
    io::{Read, Write},
    os::unix::{fs::OpenOptionsExt, process::CommandExt},
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    time::SystemTime,
};

use async_trait::async_trait;
use containerd_shim::{
    Config, DeleteResponse, Error, Flags, StartOpts,
    asynchronous::{ExitSignal, Shim, publisher::RemotePublisher, run},
};

/// Where sockets go when the start parameters name no socket directory.
const DEFAULT_SOCKET_DIR: &str = "/run/crust/s";
/// Environment variable overriding [`DEFAULT_SOCKET_DIR`].
const SOCKET_DIR_ENV: &str = "CRUST_SHIM_SOCKET_DIR";

fn ioe(err: std::io::Error) -> Error {
    Error::IoError {
        context: "crust-shim start".to_string(),
        err,
    }
}

struct CrustShim {
    namespace: String,
    exit: Arc<ExitSignal>,
}

#[async_trait]
impl Shim for CrustShim {
    type T = service::Service;

    async fn new(_runtime_id: &str, args: &Flags, _config: &mut Config) -> Self {
        if args.action.is_empty() {
            init_logger(args.debug);
        }
        CrustShim {
            namespace: args.namespace.clone(),
            exit: Arc::new(ExitSignal::default()),
        }
    }

    async fn start_shim(&mut self, mut opts: StartOpts) -> containerd_shim::Result<String> {
        if opts.socket_dir.is_none() {
            opts.socket_dir =
                Some(env::var(SOCKET_DIR_ENV).unwrap_or_else(|_| DEFAULT_SOCKET_DIR.to_string()));
        }
        let address = opts.socket_address(&opts.id);
        let sock_path = address.trim_start_matches("unix://").to_string();
        // A shim for this pod already serving: reuse it.
        if std::os::unix::net::UnixStream::connect(&sock_path).is_ok() {
            write_private("address", &address).map_err(ioe)?;
            return Ok(address);
        }
        let _ = std::fs::remove_file(&sock_path);

        let exe = env::current_exe().map_err(ioe)?;
        // The server's stderr (and, once it listens, its stdout) is shim.log: a failure
        // before its logger is up still leaves a trace there.
        let stderr = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open("shim.log")
            .map_err(ioe)?;
        let mut cmd = Command::new(exe);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .args(["-namespace", &opts.namespace, "-id", &opts.id])
            .args(["-address", &opts.address, "-socket", &address]);
        if !opts.ttrpc_address.is_empty() {
            cmd.env("TTRPC_ADDRESS", &opts.ttrpc_address);
        }
        if opts.debug {
            cmd.arg("-debug");
        }
        // Own session and process group: the shim outlives whoever started it.
        // SAFETY: setsid is async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                nix::unistd::setsid().map_err(std::io::Error::from)?;
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(ioe)?;
        // The server points its stdout elsewhere once it listens: EOF means ready (or dead).
        let mut sink = Vec::new();
        if let Some(mut out) = child.stdout.take() {
            let _ = out.read_to_end(&mut sink);
        }
        if std::os::unix::net::UnixStream::connect(&sock_path).is_err() {
            let st = child.wait().map_err(ioe)?;
            return Err(Error::Other(format!(
                "shim server did not start ({st}); see shim.log in {}",
                env::current_dir()
                    .map(|d| d.display().to_string())
                    .unwrap_or_default()
            )));
        }
        write_private("address", &address).map_err(ioe)?;
        write_private("shim.pid", &child.id().to_string()).map_err(ioe)?;
        Ok(address)
    }

    async fn delete_shim(&mut self) -> containerd_shim::Result<DeleteResponse> {
        // Called after a shim died: nothing of ours outlives it but the socket.
        if let Ok(addr) = std::fs::read_to_string("address") {
            let _ = std::fs::remove_file(addr.trim().trim_start_matches("unix://"));
        }
        Ok(DeleteResponse {
            exit_status: 128 + 9,
            exited_at: Some(SystemTime::now().into()).into(),
            ..Default::default()
        })
    }

    async fn wait(&mut self) {
        self.exit.wait().await;
    }

    async fn create_task_service(&self, remote: RemotePublisher) -> Self::T {
        // Our own publisher (ordered, no protobuf reflection) replaces the framework's.
        let publisher = publisher::Publisher::new(&remote.address, &self.namespace);
        drop(remote);
        service::Service::new(publisher, self.exit.clone()).await
    }
}

/// Shim diagnostics: to the `log` FIFO when someone reads it (containerd does),
/// otherwise appended to `shim.log` in the working directory. Never blocks.
struct FileLogger(Mutex<File>);

impl log::Log for FileLogger {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= log::max_level()
    }
    fn log(&self, r: &log::Record) {
        if !self.enabled(r.metadata()) {
            return;
        }
        let line = format!(
            "{} {} {}: {}\n",
            crust_crilog::rfc3339_nano(SystemTime::now()),
            r.level(),
            r.target(),
            r.args()
        );
        let _ = self
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .write_all(line.as_bytes());
    }
    fn flush(&self) {}
}

/// The shim's state files in the pod directory: root's alone, like everything crust keeps.
fn write_private(name: &str, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(name)?;
    f.write_all(text.as_bytes())
}

fn init_logger(debug: bool) {
    let file = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open("log")
        .or_else(|_| {
            OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .custom_flags(libc::O_CLOEXEC)
                .open("shim.log")
        });
    let Ok(file) = file else { return };
    let level = env::var("RUST_LOG")
        .ok()
        .and_then(|l| l.parse().ok())
        .unwrap_or(if debug {
            log::LevelFilter::Debug
        } else {
            log::LevelFilter::Info
        });
    if log::set_boxed_logger(Box::new(FileLogger(Mutex::new(file)))).is_ok() {
        log::set_max_level(level);
    }
}

fn main() {
    // One malloc arena: the few short-lived blocking threads must not each grow their own.
    // SAFETY: called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(2)
        .thread_keep_alive(std::time::Duration::from_secs(1))
        .build();
    let Ok(rt) = rt else {
        eprintln!("crust-shim: cannot build runtime");
        std::process::exit(1);
    };
    let config = Config {
        no_setup_logger: true,
        ..Default::default()
    };
    rt.block_on(run::<CrustShim>("io.crust.shim.v1", Some(config)));
}

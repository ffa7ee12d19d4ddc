//! End-to-end harness: each test starts its own `crustd` (the built binary) with a
//! temporary root dir, state dir, socket and metrics port, waits until it answers,
//! and hands the test CRI clients over the unix socket. Dropping the [`Crustd`]
//! stops that crustd by PID, unmounts whatever was left under its directories and
//! removes them, also when the test failed.
//!
//! The binary is taken from `$CRUSTD_BIN`, else next to the test executable's
//! target dir (`target/<profile>/crustd`): `hack/test` builds it first.

pub mod chaos;
pub mod crictl;
pub mod net;
pub mod registry;
pub mod tree;
pub mod workload;

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use hyper_util::rt::TokioIo;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tonic::transport::{Channel, Endpoint, Uri};

pub use k8s_cri::v1 as cri;

/// How long crustd may take to answer its first call.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// e2e tests need root (namespaces, mounts, cgroups). They fail loudly without it
/// rather than pass having checked nothing.
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "crust e2e tests must run as root (they start crustd, runc and CNI plugins)"
    );
}

/// Path of a built workspace binary (`crustd`, `crust-shim`).
pub fn binary(name: &str) -> PathBuf {
    let env = format!("{}_BIN", name.to_uppercase().replace('-', "_"));
    if let Some(p) = std::env::var_os(env) {
        return PathBuf::from(p);
    }
    // target/<profile>/deps/<test> → target/<profile>/<name>
    let exe = std::env::current_exe().expect("test executable path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executable lives in target/<profile>/deps");
    profile_dir.join(name)
}

/// A free TCP port on 127.0.0.1 (bound and released; good enough for tests).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Options for a test's crustd.
#[derive(Default, Clone)]
pub struct Options {
    /// Extra TOML appended to the generated config (top-level keys and tables).
    pub extra_config: String,
    /// Extra `[sandbox]` keys.
    pub sandbox_config: String,
    /// Extra `[images]` keys.
    pub images_config: String,
    /// Mount a tmpfs of this size (`size=` option, e.g. "64m") on root_dir before crustd
    /// starts; it goes with the rest of the temp dir's mounts on drop.
    pub root_dir_tmpfs: Option<String>,
    /// The same for state_dir.
    pub state_dir_tmpfs: Option<String>,
    /// Environment variables set for crustd (e.g. `NOTIFY_SOCKET`).
    pub env: Vec<(String, String)>,
}

/// A running crustd owned by one test.
pub struct Crustd {
    child: Option<Child>,
    dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub root_dir: PathBuf,
    pub state_dir: PathBuf,
    pub cni_conf_dir: PathBuf,
    pub config_path: PathBuf,
    pub log_path: PathBuf,
    pub metrics_addr: SocketAddr,
    env: Vec<(String, String)>,
}

impl Crustd {
    /// Starts a crustd with default test options.
    pub async fn start() -> Result<Crustd> {
        Crustd::start_with(Options::default()).await
    }

    pub async fn start_with(opts: Options) -> Result<Crustd> {
        require_root();
        let dir = tempfile::Builder::new()
            .prefix("crust-e2e-")
            .tempdir()
            .context("temp dir")?;
        let base = dir.path().to_path_buf();
        let socket = base.join("run/crust.sock");
        let root_dir = base.join("root");
        let state_dir = base.join("state");
        let cni_conf_dir = base.join("cni");
        std::fs::create_dir_all(&cni_conf_dir)?;
        let metrics_addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let config_path = base.join("crust.toml");
        let config = format!(
            "socket = {socket:?}\nroot_dir = {root_dir:?}\nstate_dir = {state_dir:?}\n\
             log_level = \"crust_cri=debug,crust_sandbox=debug,crust_images=debug,info\"\nshutdown_timeout_secs = 5\n{extra}\n\
             [metrics]\naddress = \"{metrics_addr}\"\n\
             [sandbox]\ncni_conf_dir = {cni_conf_dir:?}\n{sandbox}\n{images}",
            extra = opts.extra_config,
            sandbox = opts.sandbox_config,
            images = if opts.images_config.is_empty() {
                String::new()
            } else {
                format!("[images]\n{}\n", opts.images_config)
            },
        );
        std::fs::write(&config_path, config)?;
        for (dir, size) in [
            (&root_dir, &opts.root_dir_tmpfs),
            (&state_dir, &opts.state_dir_tmpfs),
        ] {
            if let Some(size) = size {
                std::fs::create_dir_all(dir)?;
                nix::mount::mount(
                    Some("tmpfs"),
                    dir,
                    Some("tmpfs"),
                    nix::mount::MsFlags::empty(),
                    Some(format!("size={size},mode=0700").as_str()),
                )
                .with_context(|| format!("tmpfs on {}", dir.display()))?;
            }
        }
        let log_path = base.join("crustd.log");
        let mut crustd = Crustd {
            child: None,
            dir,
            socket,
            root_dir,
            state_dir,
            cni_conf_dir,
            config_path,
            log_path,
            metrics_addr,
            env: opts.env,
        };
        // free_port() only finds a port that was free a moment ago: when
        // another process took it meanwhile, try again with another.
        let mut tries = 0;
        loop {
            match crustd.spawn().await {
                Ok(()) => return Ok(crustd),
                Err(e) if tries < 5 && e.to_string().contains("Address already in use") => {
                    tries += 1;
                    let new_addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
                    let text = std::fs::read_to_string(&crustd.config_path)?
                        .replace(&crustd.metrics_addr.to_string(), &new_addr.to_string());
                    std::fs::write(&crustd.config_path, text)?;
                    crustd.metrics_addr = new_addr;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The temporary directory everything of this crustd lives under.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    async fn spawn(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)?;
        let child = Command::new(binary("crustd"))
            .arg("--config")
            .arg(&self.config_path)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", binary("crustd").display()))?;
        self.child = Some(child);
        self.wait_ready().await
    }

    async fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                self.child = None;
                bail!("crustd exited during start with {status}:\n{}", self.log());
            }
            if let Ok(mut c) = self.runtime().await
                && c.version(cri::VersionRequest::default()).await.is_ok()
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "crustd did not answer within {START_TIMEOUT:?}:\n{}",
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A gRPC channel over the unix socket.
    pub async fn channel(&self) -> Result<Channel> {
        channel(&self.socket).await
    }

    pub async fn runtime(&self) -> Result<RuntimeServiceClient<Channel>> {
        Ok(RuntimeServiceClient::new(self.channel().await?)
            .max_decoding_message_size(32 * 1024 * 1024))
    }

    pub async fn images(&self) -> Result<ImageServiceClient<Channel>> {
        Ok(ImageServiceClient::new(self.channel().await?)
            .max_decoding_message_size(32 * 1024 * 1024))
    }

    /// crustd's own log so far (printed by failing assertions).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Sends a signal to this crustd.
    pub fn signal(&self, sig: Signal) -> Result<()> {
        let pid = self.pid().context("crustd is not running")?;
        kill(Pid::from_raw(pid as i32), sig)?;
        Ok(())
    }

    /// Waits for crustd to exit (after a signal) and returns its exit status.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Result<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut().context("crustd is not running")?;
        loop {
            if let Some(status) = child.try_wait()? {
                self.child = None;
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!("crustd did not exit within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILLs crustd, as a crash would; everything it started stays.
    pub async fn crash(&mut self) -> Result<()> {
        self.signal(Signal::SIGKILL)?;
        self.wait_exit(Duration::from_secs(10)).await?;
        Ok(())
    }

    /// Starts crustd again on the same directories and config.
    pub async fn restart(&mut self) -> Result<()> {
        if self.child.is_some() {
            self.signal(Signal::SIGTERM)?;
            self.wait_exit(Duration::from_secs(15)).await?;
        }
        self.spawn().await
    }

    /// The text of `GET /metrics`.
    pub async fn metrics(&self) -> Result<String> {
        http_get(self.metrics_addr, "/metrics").await
    }

    /// Writes a file into this crustd's CNI conf dir.
    pub fn write_cni_config(&self, name: &str, json: &str) -> Result<PathBuf> {
        let p = self.cni_conf_dir.join(name);
        std::fs::File::create(&p)?.write_all(json.as_bytes())?;
        Ok(p)
    }

    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = Pid::from_raw(child.id() as i32);
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Crustd {
    fn drop(&mut self) {
        // A test that failed half-way leaves pods behind: remove them through
        // CRI while crustd still runs, so their shims, containers, mounts,
        // cgroups and IPs go the way a kubelet would make them go.
        if self.child.is_some() {
            remove_all_pods(&self.socket);
        }
        self.stop();
        kill_shims_of(self.dir.path());
        if std::thread::panicking() {
            eprintln!(
                "---- crustd log ({}) ----\n{}",
                self.log_path.display(),
                self.log()
            );
        }
        unmount_below(self.dir.path());
    }
}

/// Removes every pod of the crustd on `socket`, bounded in time. Runs on a
/// thread of its own: Drop may be called inside a test's async runtime.
fn remove_all_pods(socket: &Path) {
    let socket = socket.to_path_buf();
    let worker = std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        rt.block_on(async {
            let work = async {
                let mut c = RuntimeServiceClient::new(channel(&socket).await.ok()?);
                let pods = c
                    .list_pod_sandbox(cri::ListPodSandboxRequest::default())
                    .await
                    .ok()?
                    .into_inner()
                    .items;
                for p in pods {
                    let _ = c
                        .remove_pod_sandbox(cri::RemovePodSandboxRequest {
                            pod_sandbox_id: p.id,
                        })
                        .await;
                }
                Some(())
            };
            let _ = tokio::time::timeout(Duration::from_secs(60), work).await;
        });
    });
    let _ = worker.join();
}

/// SIGKILLs any process whose command line names a path under `dir`: the
/// shims (and whatever else) this test's crustd started and left behind.
fn kill_shims_of(dir: &Path) {
    let needle = dir.to_string_lossy().into_owned();
    let me = std::process::id();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return;
    };
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let cmdline = std::fs::read(p.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(&needle) {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
    }
}

/// Lazily unmounts every mount point at or below `dir`, deepest first, so the
/// temp dir can be removed even when a test failed half-way.
pub fn unmount_below(dir: &Path) {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let mut points: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape_mount_path)
        .filter(|p| p.starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for p in points {
        let _ = nix::mount::umount2(&p, nix::mount::MntFlags::MNT_DETACH);
    }
}

fn unescape_mount_path(s: &str) -> PathBuf {
    // mountinfo escapes space, tab, newline and backslash as \ooo.
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && let Ok(v) =
                u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 4]).unwrap_or("-"), 8)
        {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    PathBuf::from(<std::ffi::OsString as std::os::unix::ffi::OsStringExt>::from_vec(out))
}

/// A gRPC channel over a unix socket.
pub async fn channel(socket: &Path) -> Result<Channel> {
    let socket = socket.to_path_buf();
    let channel = Endpoint::try_from("http://[::]:50051")?
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(
                    tokio::net::UnixStream::connect(socket).await?,
                ))
            }
        }))
        .await?;
    Ok(channel)
}

/// A gRPC transport over one bare HTTP/2 connection to a unix socket. Unlike a
/// tonic `Channel`, which gives up by itself (Canceled) when a request's timeout
/// passes, it sends `grpc-timeout` and waits for the server's answer: what the
/// server does at a deadline is what a test of it sees.
#[derive(Clone)]
pub struct Bare(hyper::client::conn::http2::SendRequest<tonic::body::Body>);

impl tower::Service<tonic::codegen::http::Request<tonic::body::Body>> for Bare {
    type Response = tonic::codegen::http::Response<hyper::body::Incoming>;
    type Error = hyper::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, hyper::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), hyper::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: tonic::codegen::http::Request<tonic::body::Body>) -> Self::Future {
        let mut sender = self.0.clone();
        Box::pin(async move {
            // HTTP/2 wants a scheme and an authority; tonic gives the path only.
            let (mut parts, body) = req.into_parts();
            if let Ok(uri) = format!("http://localhost{}", parts.uri.path()).parse() {
                parts.uri = uri;
            }
            sender
                .send_request(tonic::codegen::http::Request::from_parts(parts, body))
                .await
        })
    }
}

/// CRI clients over a [`Bare`] connection to `socket`.
pub async fn bare_clients(
    socket: &Path,
) -> Result<(RuntimeServiceClient<Bare>, ImageServiceClient<Bare>)> {
    let stream = tokio::net::UnixStream::connect(socket).await?;
    let (sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        TokioIo::new(stream),
    )
    .await?;
    tokio::spawn(conn);
    let bare = Bare(sender);
    Ok((
        RuntimeServiceClient::new(bare.clone()),
        ImageServiceClient::new(bare),
    ))
}

/// A minimal HTTP/1.0 GET on loopback, returning the body.
pub async fn http_get(addr: SocketAddr, path: &str) -> Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .context("malformed HTTP response")?;
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        bail!("GET {path}: {head}");
    }
    Ok(body.to_string())
}

/// The value of one sample line (`name{labels} value`) in a metrics text.
pub fn metric_value(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(name_and_labels))
        .and_then(|rest| rest.trim().parse().ok())
}

//! The shim v2 Task service: every container of the pod (and their execs) in one process.

use std::{
    collections::{HashMap, VecDeque},
    os::unix::process::ExitStatusExt,
    path::{Path, PathBuf},
    process::ExitStatus,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use async_trait::async_trait;
use containerd_shim::{
    Task, TtrpcContext, TtrpcResult,
    api::{
        CloseIORequest, ConnectRequest, ConnectResponse, CreateTaskRequest, CreateTaskResponse,
        DeleteRequest, DeleteResponse, ExecProcessRequest, KillRequest, Options, PidsRequest,
        PidsResponse, ResizePtyRequest, ShutdownRequest, StartRequest, StartResponse, StateRequest,
        StateResponse, StatsRequest, StatsResponse, UpdateTaskRequest, WaitRequest, WaitResponse,
    },
    asynchronous::{ExitSignal, monitor::monitor_subscribe},
    monitor::{Subject, Topic},
    protos::{
        events::task::{
            TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskIO, TaskOOM,
            TaskStart,
        },
        protobuf::{
            Message, MessageField, well_known_types::any::Any, well_known_types::empty::Empty,
            well_known_types::timestamp::Timestamp,
        },
        topics,
        ttrpc::{self, Code},
        types::task::{ProcessInfo, Status},
    },
};
use log::{debug, info, warn};
use oci_spec::runtime::{LinuxResources, Process as ProcessSpec};
use runc::options::{CreateOpts, DeleteOpts, ExecOpts, GlobalOpts, KillOpts};
use tokio::sync::{oneshot, watch};

use crate::{
    cgroup::Cgroups,
    io::{self as pio, ConsoleSocket, ShimIo, StdioSpec},
    publisher::Publisher,
};

pub use crust_shim_protocol::{CREATE_AND_START_OPTIONS, REOPEN_LOG_ANNOTATION};
/// runc state root when the create options carry none.
pub const DEFAULT_RUNC_ROOT: &str = "/run/crust/runc";
/// How long an exit waits for its output to be copied out before it is reported.
const DRAIN_LIMIT: Duration = Duration::from_secs(2);
const UNCLAIMED_MAX: usize = 256;

fn status(code: Code, msg: impl ToString) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, msg))
}
fn not_found(what: &str, id: &str) -> ttrpc::Error {
    status(Code::NOT_FOUND, format!("{what} {id} not found"))
}
fn internal(msg: impl ToString) -> ttrpc::Error {
    status(Code::INTERNAL, msg)
}
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
fn ts(t: Option<SystemTime>) -> MessageField<Timestamp> {
    t.map(Timestamp::from).into()
}

/// Exits reaped by the framework's SIGCHLD handler, routed to whoever waits for them.
#[derive(Debug, Default)]
pub struct Reaper {
    waiters: Mutex<HashMap<i32, oneshot::Sender<i32>>>,
    /// Exits of pids nobody claimed yet (a process that exited before its pid was known).
    unclaimed: Mutex<VecDeque<(i32, i32, SystemTime, Instant)>>,
}

impl Reaper {
    fn claim_waiter(&self, pid: i32, code: i32) -> bool {
        match lock(&self.waiters).remove(&pid) {
            Some(tx) => {
                let _ = tx.send(code);
                true
            }
            None => false,
        }
    }

    fn stash(&self, pid: i32, code: i32, at: SystemTime) {
        let mut u = lock(&self.unclaimed);
        if u.len() >= UNCLAIMED_MAX {
            u.pop_front();
        }
        u.push_back((pid, code, at, Instant::now()));
    }

    /// An exit of `pid` reaped after `since`, if any.
    fn take_unclaimed(&self, pid: i32, since: Instant) -> Option<(i32, SystemTime)> {
        let mut u = lock(&self.unclaimed);
        let i = u.iter().position(|e| e.0 == pid && e.3 >= since)?;
        u.remove(i).map(|e| (e.1, e.2))
    }
}

/// Runs runc commands without tokio's child reaping: the framework reaps every child
/// (`waitpid(-1)`), so the exit status comes back through the [`Reaper`].
#[derive(Debug)]
struct RuncSpawner(Arc<Reaper>);

#[async_trait]
impl runc::Spawner for RuncSpawner {
    async fn execute(&self, cmd: runc::Command) -> runc::Result<(ExitStatus, u32, String, String)> {
        use tokio::io::AsyncReadExt;
        let mut cmd = cmd;
        let (tx, rx) = oneshot::channel();
        // No await between spawn and registering the waiter: on the current-thread
        // runtime the reaper task cannot run in between.
        let mut child = cmd
            .as_std_mut()
            .spawn()
            .map_err(runc::error::Error::ProcessSpawnFailed)?;
        let pid = child.id();
        lock(&self.0.waiters).insert(pid as i32, tx);
        let out = child.stdout.take();
        let err = child.stderr.take();
        async fn read_all(p: Option<impl Into<std::os::fd::OwnedFd>>) -> String {
            let Some(p) = p else { return String::new() };
            let Ok(mut r) = tokio::net::unix::pipe::Receiver::from_owned_fd(p.into()) else {
                return String::new();
            };
            let mut v = Vec::new();
            let _ = r.read_to_end(&mut v).await;
            String::from_utf8_lossy(&v).into_owned()
        }
        let (stdout, stderr) = tokio::join!(read_all(out), read_all(err));
        let code = rx.await.unwrap_or(255);
        drop(child);
        Ok((
            ExitStatus::from_raw((code & 0xff) << 8),
            pid,
            stdout,
            stderr,
        ))
    }
}

#[derive(Debug)]
struct Proc {
    stdio: StdioSpec,
    pid: u32,
    status: Status,
    exiting: bool,
    exit_status: u32,
    exited_at: Option<SystemTime>,
    done: watch::Sender<bool>,
    io: ShimIo,
    /// Exec processes: the spec until started.
    spec: Option<ProcessSpec>,
}

impl Proc {
    fn new(stdio: StdioSpec) -> Self {
        Proc {
            stdio,
            pid: 0,
            status: Status::CREATED,
            exiting: false,
            exit_status: 0,
            exited_at: None,
            done: watch::channel(false).0,
            io: ShimIo::default(),
            spec: None,
        }
    }
}

struct Container {
    bundle: PathBuf,
    runc: Arc<runc::Runc>,
    init: Proc,
    execs: HashMap<String, Proc>,
    /// Root filesystem the shim mounted from the create request.
    mounted_rootfs: Option<PathBuf>,
    cgroups: Cgroups,
    /// The memory cgroup's `oom_kill` count already reported with `/tasks/oom`.
    ooms_reported: u64,
    oom_watch: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for Container {
    fn drop(&mut self) {
        if let Some(h) = self.oom_watch.take() {
            h.abort();
        }
    }
}

impl Container {
    fn proc(&self, exec_id: &str) -> Option<&Proc> {
        if exec_id.is_empty() {
            Some(&self.init)
        } else {
            self.execs.get(exec_id)
        }
    }
    fn proc_mut(&mut self, exec_id: &str) -> Option<&mut Proc> {
        if exec_id.is_empty() {
            Some(&mut self.init)
        } else {
            self.execs.get_mut(exec_id)
        }
    }
}

struct Inner {
    publisher: Publisher,
    exit: Arc<ExitSignal>,
    reaper: Arc<Reaper>,
    containers: Mutex<HashMap<String, Container>>,
}

#[derive(Clone)]
pub struct Service(Arc<Inner>);

impl Service {
    pub async fn new(publisher: Publisher, exit: Arc<ExitSignal>) -> Self {
        let svc = Service(Arc::new(Inner {
            publisher,
            exit,
            reaper: Arc::new(Reaper::default()),
            containers: Mutex::new(HashMap::new()),
        }));
        match monitor_subscribe(Topic::All).await {
            Ok(mut sub) => {
                let s = svc.clone();
                tokio::spawn(async move {
                    while let Some(ev) = sub.rx.recv().await {
                        if let Subject::Pid(pid) = ev.subject {
                            s.on_exit(pid, ev.exit_code, SystemTime::now());
                        }
                    }
                });
            }
            Err(e) => warn!("subscribe to exits: {e}"),
        }
        svc
    }

    fn publish(&self, topic: &'static str, type_url: &'static str, ev: &impl Message) {
        self.0.publisher.publish(topic, type_url, ev);
    }

    fn on_exit(&self, pid: i32, code: i32, at: SystemTime) {
        if self.0.reaper.claim_waiter(pid, code) {
            return;
        }
        let found = {
            let mut cs = lock(&self.0.containers);
            cs.iter_mut().find_map(|(cid, c)| {
                let hit =
                    |p: &Proc| p.pid as i32 == pid && !p.exiting && p.status != Status::STOPPED;
                if hit(&c.init) {
                    c.init.exiting = true;
                    Some((cid.clone(), String::new()))
                } else {
                    c.execs.iter_mut().find(|(_, p)| hit(p)).map(|(eid, p)| {
                        p.exiting = true;
                        (cid.clone(), eid.clone())
                    })
                }
            })
        };
        match found {
            Some((cid, eid)) => {
                let s = self.clone();
                tokio::spawn(async move { s.finish(cid, eid, code, at).await });
            }
            None => self.0.reaper.stash(pid, code, at),
        }
    }

    /// Records an exit once the output is drained, then reports it.
    async fn finish(&self, cid: String, eid: String, code: i32, at: SystemTime) {
        let (copiers, cgroups) = {
            let mut cs = lock(&self.0.containers);
            let Some(c) = cs.get_mut(&cid) else { return };
            let cg = c.cgroups.clone();
            let Some(p) = c.proc_mut(&eid) else { return };
            (std::mem::take(&mut p.io.copiers), cg)
        };
        let mut io = ShimIo {
            copiers,
            ..Default::default()
        };
        io.drain(DRAIN_LIMIT).await;
        if eid.is_empty() {
            self.report_oom(&cid, &cgroups, false);
        }
        let pid = {
            let mut cs = lock(&self.0.containers);
            let Some(p) = cs.get_mut(&cid).and_then(|c| c.proc_mut(&eid)) else {
                return;
            };
            p.status = Status::STOPPED;
            p.exit_status = code as u32;
            p.exited_at = Some(at);
            p.exiting = false;
            p.done.send_replace(true);
            p.pid
        };
        info!("container {cid} exec '{eid}' pid {pid} exited with {code}");
        let ev = TaskExit {
            container_id: cid.clone(),
            id: if eid.is_empty() { cid } else { eid },
            pid,
            exit_status: code as u32,
            exited_at: ts(Some(at)),
            ..Default::default()
        };
        self.publish(
            topics::TASK_EXIT_EVENT_TOPIC,
            "containerd.events.TaskExit",
            &ev,
        );
    }

    /// Publishes `/tasks/oom` when the memory cgroup counted OOM kills not reported yet
    /// (`notified`: the kernel signalled an OOM, report it even without a counter).
    fn report_oom(&self, cid: &str, cgroups: &Cgroups, notified: bool) {
        let kills = cgroups.oom_kills();
        let new = {
            let mut cs = lock(&self.0.containers);
            let Some(c) = cs.get_mut(cid) else { return };
            match kills {
                Some(n) if n > c.ooms_reported => {
                    c.ooms_reported = n;
                    true
                }
                Some(_) => false,
                None => notified && cgroups.memory_exists(),
            }
        };
        if new {
            info!("container {cid}: OOM");
            let ev = TaskOOM {
                container_id: cid.to_string(),
                ..Default::default()
            };
            self.publish(
                topics::TASK_OOM_EVENT_TOPIC,
                "containerd.events.TaskOOM",
                &ev,
            );
        }
    }

    /// Follows the container's OOM eventfd until its memory cgroup is gone.
    async fn watch_oom(self, cid: String, efd: std::os::fd::OwnedFd) {
        use std::os::fd::AsRawFd;
        let cgroups = {
            let cs = lock(&self.0.containers);
            match cs.get(&cid) {
                Some(c) => c.cgroups.clone(),
                None => return,
            }
        };
        // SAFETY: the AsyncFd owns the descriptor for as long as it is registered.
        let Ok(afd) = (unsafe { tokio::io::unix::AsyncFd::register(efd) }) else {
            return;
        };
        loop {
            let Ok(mut guard) = afd.readable().await else {
                return;
            };
            let mut buf = [0u8; 8];
            // SAFETY: reads 8 bytes into a local buffer from our eventfd.
            let n = unsafe { libc::read(afd.get_ref().as_raw_fd(), buf.as_mut_ptr().cast(), 8) };
            if n < 0 {
                guard.clear_ready();
                continue;
            }
            if !cgroups.memory_exists() {
                return;
            }
            self.report_oom(&cid, &cgroups, true);
        }
    }

    /// After a pid became known: if it already exited, handle that exit now.
    fn claim_early_exit(&self, pid: u32, since: Instant) {
        if let Some((code, at)) = self.0.reaper.take_unclaimed(pid as i32, since) {
            self.on_exit(pid as i32, code, at);
        }
    }

    /// The `/tasks/start` event of a container's init process.
    fn publish_start(&self, container_id: String, pid: u32) {
        let ev = TaskStart {
            container_id,
            pid,
            ..Default::default()
        };
        self.publish(
            topics::TASK_START_EVENT_TOPIC,
            "containerd.events.TaskStart",
            &ev,
        );
    }

    fn runc_of(&self, id: &str) -> TtrpcResult<(Arc<runc::Runc>, PathBuf)> {
        let cs = lock(&self.0.containers);
        let c = cs.get(id).ok_or_else(|| not_found("container", id))?;
        Ok((c.runc.clone(), c.bundle.clone()))
    }

    fn build_runc(&self, opts: &Options, bundle: &Path) -> TtrpcResult<runc::Runc> {
        let binary = if opts.binary_name.is_empty() {
            "runc"
        } else {
            &opts.binary_name
        };
        let root = if opts.root.is_empty() {
            DEFAULT_RUNC_ROOT
        } else {
            &opts.root
        };
        let mut g = GlobalOpts::new()
            .command(binary)
            .root(root)
            .log(bundle.join("log.json"))
            .log_json()
            .systemd_cgroup(opts.systemd_cgroup);
        g.custom_spawner(Arc::new(RuncSpawner(self.0.reaper.clone())));
        g.build()
            .map_err(|e| status(Code::FAILED_PRECONDITION, format!("runc {binary}: {e}")))
    }
}

/// The last error runc logged in the bundle's log.json, for a readable message.
fn runc_error(bundle: &Path, e: runc::error::Error) -> ttrpc::Error {
    let last = std::fs::read_to_string(bundle.join("log.json"))
        .ok()
        .and_then(|text| {
            text.lines().rev().find_map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).ok()?;
                (v.get("level")?.as_str()? == "error")
                    .then(|| v.get("msg")?.as_str().map(str::to_string))?
            })
        });
    let msg = match last {
        Some(m) => format!("runc: {m}"),
        None => format!("runc: {e}"),
    };
    if msg.contains("does not exist") {
        status(Code::NOT_FOUND, msg)
    } else {
        internal(msg)
    }
}

fn read_pid(path: &Path) -> TtrpcResult<u32> {
    let s = std::fs::read_to_string(path)
        .map_err(|e| internal(format!("read {}: {e}", path.display())))?;
    s.trim()
        .parse()
        .map_err(|e| internal(format!("pid file {}: {e}", path.display())))
}

fn unmount(target: &Path) {
    if let Err(e) = nix::mount::umount2(target, nix::mount::MntFlags::MNT_DETACH) {
        warn!("unmount {}: {e}", target.display());
    }
}

/// `runc create`, or `runc run --detach` when the task starts at once: it
/// returns once the process runs.
async fn launch(
    runc: &runc::Runc,
    start_now: bool,
    id: &str,
    bundle: &Path,
    opts: &CreateOpts,
) -> TtrpcResult<()> {
    if start_now {
        runc.run(id, bundle, Some(opts)).await
    } else {
        runc.create(id, bundle, Some(opts)).await
    }
    .map(|_| ())
    .map_err(|e| runc_error(bundle, e))
}

/// Runs runc create/exec with a console socket, returning the pty master.
async fn with_console<F, T>(sock: ConsoleSocket, run: F) -> TtrpcResult<(T, std::os::fd::OwnedFd)>
where
    F: std::future::Future<Output = TtrpcResult<T>>,
{
    let recv = tokio::spawn(sock.receive());
    let r = run.await;
    let r = match r {
        Ok(r) => r,
        Err(e) => {
            recv.abort();
            return Err(e);
        }
    };
    match tokio::time::timeout(Duration::from_secs(10), recv).await {
        Ok(Ok(Ok(fd))) => Ok((r, fd)),
        Ok(Ok(Err(e))) => Err(internal(format!("console socket: {e}"))),
        _ => Err(internal("no pty master received from runc")),
    }
}

#[async_trait]
impl Task for Service {
    async fn create(
        &self,
        _ctx: &TtrpcContext,
        req: CreateTaskRequest,
    ) -> TtrpcResult<CreateTaskResponse> {
        let id = req.id.clone();
        let began = Instant::now();
        if id.is_empty() || id.contains('/') {
            return Err(status(Code::INVALID_ARGUMENT, "bad container id"));
        }
        if lock(&self.0.containers).contains_key(&id) {
            return Err(status(
                Code::ALREADY_EXISTS,
                format!("container {id} exists"),
            ));
        }
        // runc will move the container's init into its cgroups: start that lock's wait now.
        crate::cgroup::prime_migration_lock();
        let bundle = PathBuf::from(&req.bundle);
        let opts = match req.options.as_ref() {
            Some(any) if !any.value.is_empty() => Options::parse_from_bytes(&any.value)
                .map_err(|e| status(Code::INVALID_ARGUMENT, format!("options: {e}")))?,
            _ => Options::new(),
        };
        let start_now = req
            .options
            .as_ref()
            .is_some_and(|any| any.type_url == CREATE_AND_START_OPTIONS);
        let runc = Arc::new(self.build_runc(&opts, &bundle)?);
        let stdio = StdioSpec {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };

        let mut mounted = None;
        if !req.rootfs.is_empty() {
            let target = bundle.join("rootfs");
            std::fs::create_dir_all(&target).map_err(|e| internal(format!("mkdir rootfs: {e}")))?;
            for m in &req.rootfs {
                if let Err(e) = containerd_shim::util::mount_rootfs(m, &target).await {
                    if mounted.is_some() {
                        unmount(&target);
                    }
                    return Err(internal(format!("mount rootfs: {e}")));
                }
                mounted = Some(target.clone());
            }
        }
        let cleanup_mount = |m: &Option<PathBuf>| {
            if let Some(t) = m {
                unmount(t);
            }
        };

        let pid_file = bundle.join("init.pid");
        let since = Instant::now();
        let (child_io, mut shim_io) = if stdio.terminal {
            (pio::ChildIo::default(), ShimIo::default())
        } else {
            match pio::prepare(&stdio) {
                Ok(x) => x,
                Err(e) => {
                    cleanup_mount(&mounted);
                    return Err(internal(format!("stdio: {e}")));
                }
            }
        };
        let mut copts = CreateOpts::new()
            .pid_file(&pid_file)
            .io(Arc::new(child_io))
            .no_pivot(opts.no_pivot_root)
            .no_new_keyring(opts.no_new_keyring)
            .detach(start_now);
        let launched = Instant::now();
        let result = if stdio.terminal {
            match ConsoleSocket::new() {
                Ok(sock) => {
                    copts = copts.console_socket(&sock.path);
                    let run = launch(&runc, start_now, &id, &bundle, &copts);
                    with_console(sock, run).await.and_then(|(_, master)| {
                        pio::attach_console(&stdio, master, &mut shim_io)
                            .map_err(|e| internal(format!("console: {e}")))
                    })
                }
                Err(e) => Err(internal(format!("console socket: {e}"))),
            }
        } else {
            launch(&runc, start_now, &id, &bundle, &copts).await
        };
        let runc_ms = launched.elapsed().as_secs_f64() * 1e3;
        // The write ends of the process's stdio go with `copts`.
        drop(copts);
        let pid = match result {
            Ok(()) => read_pid(&pid_file),
            Err(e) => Err(e),
        };
        let pid = match pid {
            Ok(p) => p,
            Err(e) => {
                let _ = runc.delete(&id, Some(&DeleteOpts::new().force(true))).await;
                cleanup_mount(&mounted);
                return Err(e);
            }
        };

        let mut init = Proc::new(stdio.clone());
        init.pid = pid;
        init.io = shim_io;
        if start_now {
            init.status = Status::RUNNING;
        }
        let container = Container {
            bundle: bundle.clone(),
            runc,
            init,
            execs: HashMap::new(),
            mounted_rootfs: mounted,
            // A process started at once (run --detach) may be gone already:
            // its cgroup is then the one the spec names.
            cgroups: Cgroups::of_pid(pid)
                .ok()
                .or_else(|| Cgroups::of_bundle(&bundle))
                .unwrap_or_default(),
            ooms_reported: 0,
            oom_watch: None,
        };
        let oom_fd = container.cgroups.oom_eventfd();
        lock(&self.0.containers).insert(id.clone(), container);
        match oom_fd {
            Ok(fd) => {
                let h = tokio::spawn(self.clone().watch_oom(id.clone(), fd));
                if let Some(c) = lock(&self.0.containers).get_mut(&id) {
                    c.oom_watch = Some(h);
                }
            }
            Err(e) => debug!("no OOM notifications for {id}: {e}"),
        }
        self.claim_early_exit(pid, since);
        info!(
            "created container {id} pid {pid}{} (runc {runc_ms:.1} ms of {:.1} ms)",
            if start_now { ", started" } else { "" },
            began.elapsed().as_secs_f64() * 1e3
        );

        let ev = TaskCreate {
            container_id: id.clone(),
            bundle: req.bundle.clone(),
            rootfs: req.rootfs.clone(),
            io: Some(TaskIO {
                stdin: stdio.stdin,
                stdout: stdio.stdout,
                stderr: stdio.stderr,
                terminal: stdio.terminal,
                ..Default::default()
            })
            .into(),
            pid,
            ..Default::default()
        };
        self.publish(
            topics::TASK_CREATE_EVENT_TOPIC,
            "containerd.events.TaskCreate",
            &ev,
        );
        if start_now {
            self.publish_start(id, pid);
        }
        Ok(CreateTaskResponse {
            pid,
            ..Default::default()
        })
    }

    async fn start(&self, _ctx: &TtrpcContext, req: StartRequest) -> TtrpcResult<StartResponse> {
        let (runc, bundle) = self.runc_of(&req.id)?;
        if req.exec_id.is_empty() {
            {
                let cs = lock(&self.0.containers);
                let c = cs
                    .get(&req.id)
                    .ok_or_else(|| not_found("container", &req.id))?;
                if c.init.status != Status::CREATED {
                    return Err(status(
                        Code::FAILED_PRECONDITION,
                        format!("container {} is not in created state", req.id),
                    ));
                }
            }
            runc.start(&req.id)
                .await
                .map_err(|e| runc_error(&bundle, e))?;
            let pid = {
                let mut cs = lock(&self.0.containers);
                let c = cs
                    .get_mut(&req.id)
                    .ok_or_else(|| not_found("container", &req.id))?;
                if c.init.status == Status::CREATED {
                    c.init.status = Status::RUNNING;
                }
                c.init.pid
            };
            self.publish_start(req.id.clone(), pid);
            return Ok(StartResponse {
                pid,
                ..Default::default()
            });
        }

        // An exec process.
        let (spec, stdio) = {
            let mut cs = lock(&self.0.containers);
            let c = cs
                .get_mut(&req.id)
                .ok_or_else(|| not_found("container", &req.id))?;
            if c.init.status != Status::RUNNING {
                return Err(status(
                    Code::FAILED_PRECONDITION,
                    format!("container {} is not running", req.id),
                ));
            }
            let p = c
                .execs
                .get_mut(&req.exec_id)
                .ok_or_else(|| not_found("exec", &req.exec_id))?;
            let spec = p.spec.take().ok_or_else(|| {
                status(
                    Code::FAILED_PRECONDITION,
                    format!("exec {} already started", req.exec_id),
                )
            })?;
            (spec, p.stdio.clone())
        };
        // runc exec moves the process into the container's cgroups (see `prime_migration_lock`).
        crate::cgroup::prime_migration_lock();
        let pid_file = bundle.join(format!("exec-{}.pid", req.exec_id));
        let since = Instant::now();
        let (child_io, mut shim_io) = if stdio.terminal {
            (pio::ChildIo::default(), ShimIo::default())
        } else {
            pio::prepare(&stdio).map_err(|e| internal(format!("stdio: {e}")))?
        };
        let mut eopts = ExecOpts::new()
            .pid_file(&pid_file)
            .detach(true)
            .io(Arc::new(child_io));
        let result = if stdio.terminal {
            let sock = ConsoleSocket::new().map_err(|e| internal(format!("console: {e}")))?;
            eopts = eopts.console_socket(&sock.path);
            let run = async {
                runc.exec(&req.id, &spec, Some(&eopts))
                    .await
                    .map_err(|e| runc_error(&bundle, e))
            };
            with_console(sock, run).await.and_then(|(_, master)| {
                pio::attach_console(&stdio, master, &mut shim_io)
                    .map_err(|e| internal(format!("console: {e}")))
            })
        } else {
            runc.exec(&req.id, &spec, Some(&eopts))
                .await
                .map_err(|e| runc_error(&bundle, e))
        };
        drop(eopts);
        let pid = match result {
            Ok(()) => read_pid(&pid_file),
            Err(e) => Err(e),
        };
        let _ = std::fs::remove_file(&pid_file);
        let pid = match pid {
            Ok(pid) => pid,
            Err(e) => {
                // The exec never ran: it counts as exited.
                let mut cs = lock(&self.0.containers);
                if let Some(p) = cs
                    .get_mut(&req.id)
                    .and_then(|c| c.execs.get_mut(&req.exec_id))
                {
                    p.status = Status::STOPPED;
                    p.exit_status = 255;
                    p.exited_at = Some(SystemTime::now());
                    p.done.send_replace(true);
                }
                return Err(e);
            }
        };
        {
            let mut cs = lock(&self.0.containers);
            if let Some(p) = cs
                .get_mut(&req.id)
                .and_then(|c| c.execs.get_mut(&req.exec_id))
            {
                p.pid = pid;
                p.status = Status::RUNNING;
                p.io = shim_io;
            }
        }
        self.claim_early_exit(pid, since);
        let ev = TaskExecStarted {
            container_id: req.id.clone(),
            exec_id: req.exec_id.clone(),
            pid,
            ..Default::default()
        };
        self.publish(
            topics::TASK_EXEC_STARTED_EVENT_TOPIC,
            "containerd.events.TaskExecStarted",
            &ev,
        );
        Ok(StartResponse {
            pid,
            ..Default::default()
        })
    }

    async fn delete(&self, _ctx: &TtrpcContext, req: DeleteRequest) -> TtrpcResult<DeleteResponse> {
        if !req.exec_id.is_empty() {
            let mut cs = lock(&self.0.containers);
            let c = cs
                .get_mut(&req.id)
                .ok_or_else(|| not_found("container", &req.id))?;
            let p = c
                .execs
                .get(&req.exec_id)
                .ok_or_else(|| not_found("exec", &req.exec_id))?;
            if p.status == Status::RUNNING {
                return Err(status(
                    Code::FAILED_PRECONDITION,
                    format!("exec {} is running", req.exec_id),
                ));
            }
            let p = c
                .execs
                .remove(&req.exec_id)
                .ok_or_else(|| not_found("exec", &req.exec_id))?;
            return Ok(DeleteResponse {
                pid: p.pid,
                exit_status: p.exit_status,
                exited_at: ts(p.exited_at),
                ..Default::default()
            });
        }

        let (runc, bundle, st) = {
            let cs = lock(&self.0.containers);
            let c = cs
                .get(&req.id)
                .ok_or_else(|| not_found("container", &req.id))?;
            (c.runc.clone(), c.bundle.clone(), c.init.status)
        };
        if st == Status::RUNNING {
            return Err(status(
                Code::FAILED_PRECONDITION,
                format!("container {} is running; kill it first", req.id),
            ));
        }
        let force = st == Status::CREATED;
        if let Err(e) = runc
            .delete(&req.id, Some(&DeleteOpts::new().force(force)))
            .await
        {
            let e = runc_error(&bundle, e);
            if !matches!(&e, ttrpc::Error::RpcStatus(s) if s.code() == Code::NOT_FOUND) {
                return Err(e);
            }
        }
        let c = lock(&self.0.containers).remove(&req.id);
        let Some(mut c) = c else {
            return Err(not_found("container", &req.id));
        };
        if let Some(t) = &c.mounted_rootfs {
            unmount(t);
        }
        let _ = std::fs::remove_file(c.bundle.join("init.pid"));
        c.init.io.close_stdin();
        for p in c.execs.values_mut() {
            p.io.close_stdin();
        }
        let resp = DeleteResponse {
            pid: c.init.pid,
            exit_status: c.init.exit_status,
            exited_at: ts(c.init.exited_at),
            ..Default::default()
        };
        let ev = TaskDelete {
            container_id: req.id.clone(),
            pid: c.init.pid,
            exit_status: c.init.exit_status,
            exited_at: ts(c.init.exited_at),
            ..Default::default()
        };
        self.publish(
            topics::TASK_DELETE_EVENT_TOPIC,
            "containerd.events.TaskDelete",
            &ev,
        );
        info!("deleted container {}", req.id);
        Ok(resp)
    }

    async fn pids(&self, _ctx: &TtrpcContext, req: PidsRequest) -> TtrpcResult<PidsResponse> {
        let (runc, bundle) = self.runc_of(&req.id)?;
        let pids = runc.ps(&req.id).await.map_err(|e| runc_error(&bundle, e))?;
        Ok(PidsResponse {
            processes: pids
                .into_iter()
                .map(|pid| ProcessInfo {
                    pid: pid as u32,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
    }

    async fn kill(&self, _ctx: &TtrpcContext, req: KillRequest) -> TtrpcResult<Empty> {
        let (runc, bundle, pid, st, exiting) = {
            let cs = lock(&self.0.containers);
            let c = cs
                .get(&req.id)
                .ok_or_else(|| not_found("container", &req.id))?;
            let p = c
                .proc(&req.exec_id)
                .ok_or_else(|| not_found("exec", &req.exec_id))?;
            (c.runc.clone(), c.bundle.clone(), p.pid, p.status, p.exiting)
        };
        // Reaped but not yet reported counts as finished: its pid may already be reused.
        if (st == Status::STOPPED || exiting) && !req.all {
            return Err(status(Code::NOT_FOUND, "process already finished"));
        }
        if req.exec_id.is_empty() {
            runc.kill(&req.id, req.signal, Some(&KillOpts::new().all(req.all)))
                .await
                .map_err(|e| runc_error(&bundle, e))?;
        } else {
            if pid == 0 {
                return Err(status(Code::FAILED_PRECONDITION, "exec not started"));
            }
            let sig = nix::sys::signal::Signal::try_from(req.signal as i32)
                .map_err(|e| status(Code::INVALID_ARGUMENT, e))?;
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig)
                .map_err(|e| status(Code::NOT_FOUND, format!("kill {pid}: {e}")))?;
        }
        Ok(Empty::new())
    }

    async fn exec(&self, _ctx: &TtrpcContext, req: ExecProcessRequest) -> TtrpcResult<Empty> {
        let spec: ProcessSpec = serde_json::from_slice(&req.spec.value)
            .map_err(|e| status(Code::INVALID_ARGUMENT, format!("exec spec: {e}")))?;
        {
            let mut cs = lock(&self.0.containers);
            let c = cs
                .get_mut(&req.id)
                .ok_or_else(|| not_found("container", &req.id))?;
            if req.exec_id.is_empty() || c.execs.contains_key(&req.exec_id) {
                return Err(status(
                    Code::ALREADY_EXISTS,
                    format!("exec id '{}' empty or in use", req.exec_id),
                ));
            }
            let mut p = Proc::new(StdioSpec {
                stdin: req.stdin.clone(),
                stdout: req.stdout.clone(),
                stderr: req.stderr.clone(),
                terminal: req.terminal,
            });
            p.spec = Some(spec);
            c.execs.insert(req.exec_id.clone(), p);
        }
        let ev = TaskExecAdded {
            container_id: req.id.clone(),
            exec_id: req.exec_id.clone(),
            ..Default::default()
        };
        self.publish(
            topics::TASK_EXEC_ADDED_EVENT_TOPIC,
            "containerd.events.TaskExecAdded",
            &ev,
        );
        Ok(Empty::new())
    }

    async fn resize_pty(&self, _ctx: &TtrpcContext, req: ResizePtyRequest) -> TtrpcResult<Empty> {
        let cs = lock(&self.0.containers);
        let c = cs
            .get(&req.id)
            .ok_or_else(|| not_found("container", &req.id))?;
        let p = c
            .proc(&req.exec_id)
            .ok_or_else(|| not_found("exec", &req.exec_id))?;
        let console =
            p.io.console
                .as_ref()
                .ok_or_else(|| status(Code::FAILED_PRECONDITION, "process has no terminal"))?;
        pio::resize(console, req.width, req.height)
            .map_err(|e| internal(format!("resize: {e}")))?;
        Ok(Empty::new())
    }

    async fn close_io(&self, _ctx: &TtrpcContext, req: CloseIORequest) -> TtrpcResult<Empty> {
        let mut cs = lock(&self.0.containers);
        let c = cs
            .get_mut(&req.id)
            .ok_or_else(|| not_found("container", &req.id))?;
        let p = c
            .proc_mut(&req.exec_id)
            .ok_or_else(|| not_found("exec", &req.exec_id))?;
        if req.stdin {
            p.io.close_stdin();
        }
        Ok(Empty::new())
    }

    async fn update(&self, _ctx: &TtrpcContext, req: UpdateTaskRequest) -> TtrpcResult<Empty> {
        if req.annotations.contains_key(REOPEN_LOG_ANNOTATION) {
            let cs = lock(&self.0.containers);
            let c = cs
                .get(&req.id)
                .ok_or_else(|| not_found("container", &req.id))?;
            if c.init.status != Status::RUNNING {
                return Err(status(
                    Code::FAILED_PRECONDITION,
                    format!("container {} is not running", req.id),
                ));
            }
            match c.init.io.reopen_log() {
                Ok(true) => {}
                Ok(false) => {
                    return Err(status(
                        Code::FAILED_PRECONDITION,
                        format!("container {} has no CRI log", req.id),
                    ));
                }
                Err(e) => return Err(internal(format!("reopen log: {e}"))),
            }
        }
        if let Some(any) = req.resources.as_ref()
            && !any.value.is_empty()
        {
            let res: LinuxResources = serde_json::from_slice(&any.value)
                .map_err(|e| status(Code::INVALID_ARGUMENT, format!("resources: {e}")))?;
            let (runc, bundle) = self.runc_of(&req.id)?;
            runc.update(&req.id, &res)
                .await
                .map_err(|e| runc_error(&bundle, e))?;
        }
        Ok(Empty::new())
    }

    async fn wait(&self, _ctx: &TtrpcContext, req: WaitRequest) -> TtrpcResult<WaitResponse> {
        let mut rx = {
            let cs = lock(&self.0.containers);
            let c = cs
                .get(&req.id)
                .ok_or_else(|| not_found("container", &req.id))?;
            c.proc(&req.exec_id)
                .ok_or_else(|| not_found("exec", &req.exec_id))?
                .done
                .subscribe()
        };
        let _ = rx.wait_for(|d| *d).await;
        let cs = lock(&self.0.containers);
        let p = cs
            .get(&req.id)
            .and_then(|c| c.proc(&req.exec_id))
            .ok_or_else(|| not_found("process", &req.id))?;
        Ok(WaitResponse {
            exit_status: p.exit_status,
            exited_at: ts(p.exited_at),
            ..Default::default()
        })
    }

    async fn state(&self, _ctx: &TtrpcContext, req: StateRequest) -> TtrpcResult<StateResponse> {
        let cs = lock(&self.0.containers);
        let c = cs
            .get(&req.id)
            .ok_or_else(|| not_found("container", &req.id))?;
        let p = c
            .proc(&req.exec_id)
            .ok_or_else(|| not_found("exec", &req.exec_id))?;
        Ok(StateResponse {
            id: req.id.clone(),
            exec_id: req.exec_id.clone(),
            bundle: c.bundle.display().to_string(),
            pid: p.pid,
            status: p.status.into(),
            stdin: p.stdio.stdin.clone(),
            stdout: p.stdio.stdout.clone(),
            stderr: p.stdio.stderr.clone(),
            terminal: p.stdio.terminal,
            exit_status: p.exit_status,
            exited_at: ts(p.exited_at),
            ..Default::default()
        })
    }

    async fn stats(&self, _ctx: &TtrpcContext, req: StatsRequest) -> TtrpcResult<StatsResponse> {
        let cg = {
            let cs = lock(&self.0.containers);
            cs.get(&req.id)
                .ok_or_else(|| not_found("container", &req.id))?
                .cgroups
                .clone()
        };
        let any = Any {
            type_url: "io.containerd.cgroups.v1.Metrics".to_string(),
            value: cg.metrics().write_to_bytes().map_err(internal)?,
            ..Default::default()
        };
        Ok(StatsResponse {
            stats: Some(any).into(),
            ..Default::default()
        })
    }

    async fn connect(
        &self,
        _ctx: &TtrpcContext,
        req: ConnectRequest,
    ) -> TtrpcResult<ConnectResponse> {
        let task_pid = lock(&self.0.containers)
            .get(&req.id)
            .map(|c| c.init.pid)
            .unwrap_or(0);
        Ok(ConnectResponse {
            shim_pid: std::process::id(),
            task_pid,
            version: env!("CARGO_PKG_VERSION").to_string(),
            ..Default::default()
        })
    }

    async fn shutdown(&self, _ctx: &TtrpcContext, req: ShutdownRequest) -> TtrpcResult<Empty> {
        let n = lock(&self.0.containers).len();
        if n > 0 && !req.now {
            debug!("shutdown ignored: {n} containers left");
            return Ok(Empty::new());
        }
        info!("shutting down ({n} containers left)");
        self.0.exit.signal();
        Ok(Empty::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn early_exits_are_kept_for_the_pid_that_claims_them() {
        let r = Reaper::default();
        let before = Instant::now();
        let at = SystemTime::now();
        r.stash(100, 3, at);
        // An exit reaped before the operation began is not this process's.
        assert_eq!(r.take_unclaimed(100, Instant::now()), None);
        assert_eq!(r.take_unclaimed(100, before), Some((3, at)));
        assert_eq!(r.take_unclaimed(100, before), None, "claimed once");
    }

    #[test]
    fn unclaimed_exits_are_bounded() {
        let r = Reaper::default();
        let since = Instant::now();
        for pid in 0..(UNCLAIMED_MAX as i32 + 10) {
            r.stash(pid, 0, SystemTime::now());
        }
        assert_eq!(lock(&r.unclaimed).len(), UNCLAIMED_MAX);
        assert_eq!(r.take_unclaimed(0, since), None, "oldest dropped");
        assert!(r.take_unclaimed(UNCLAIMED_MAX as i32 + 9, since).is_some());
    }

    #[test]
    fn waiters_get_the_exit_code() {
        let r = Reaper::default();
        let (tx, mut rx) = oneshot::channel();
        lock(&r.waiters).insert(7, tx);
        assert!(r.claim_waiter(7, 2));
        assert_eq!(rx.try_recv(), Ok(2));
        assert!(!r.claim_waiter(7, 2));
    }
}

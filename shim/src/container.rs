//! A container's lifecycle in the shim: create (the rootfs the request names mounted, stdio
//! prepared, `runc create` — or `runc run --detach` when crust asks to create and start in
//! one call — its cgroups and OOM eventfd found), start, update, stats, pids and delete.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::Arc,
    time::Instant,
};

use containerd_shim::{
    TtrpcResult,
    api::{
        CreateTaskRequest, CreateTaskResponse, DeleteRequest, DeleteResponse, Options, PidsRequest,
        PidsResponse, StartRequest, StartResponse, StatsRequest, StatsResponse, UpdateTaskRequest,
    },
    protos::{
        events::task::{TaskCreate, TaskDelete, TaskIO, TaskStart},
        protobuf::{Message, well_known_types::any::Any, well_known_types::empty::Empty},
        topics,
        ttrpc::{self, Code},
        types::task::{ProcessInfo, Status},
    },
};
use log::{debug, info};
use oci_spec::runtime::LinuxResources;
use runc::options::{CreateOpts, DeleteOpts};

use crate::cgroup::Cgroups;
use crate::checkpoint::RuncCli;
use crate::io::{self as pio, ConsoleSocket, ShimIo, StdioSpec};
use crate::process::Proc;
use crate::runtime::{launch, read_pid, runc_error, unmount, with_console};
use crate::service::{
    CREATE_AND_START_OPTIONS, REOPEN_LOG_ANNOTATION, Service, internal, lock, not_found, status, ts,
};

/// A container of the pod: its runc, init process, execs and cgroups.
pub(crate) struct Container {
    pub(crate) bundle: PathBuf,
    pub(crate) runc: Arc<runc::Runc>,
    /// The same runc as a command line, for calls the client lacks (checkpoint).
    pub(crate) cli: RuncCli,
    pub(crate) init: Proc,
    pub(crate) execs: HashMap<String, Proc>,
    /// Created with `no_new_keyring` (execs then keep the shim's session keyring).
    pub(crate) no_new_keyring: bool,
    /// Root filesystem the shim mounted from the create request.
    pub(crate) mounted_rootfs: Option<PathBuf>,
    pub(crate) cgroups: Cgroups,
    /// The memory cgroup's `oom_kill` count already reported with `/tasks/oom`.
    pub(crate) ooms_reported: u64,
    pub(crate) oom_watch: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for Container {
    fn drop(&mut self) {
        if let Some(h) = self.oom_watch.take() {
            h.abort();
        }
    }
}

impl Container {
    pub(crate) fn proc(&self, exec_id: &str) -> Option<&Proc> {
        if exec_id.is_empty() {
            Some(&self.init)
        } else {
            self.execs.get(exec_id)
        }
    }
    pub(crate) fn proc_mut(&mut self, exec_id: &str) -> Option<&mut Proc> {
        if exec_id.is_empty() {
            Some(&mut self.init)
        } else {
            self.execs.get_mut(exec_id)
        }
    }

    /// The init (`exec_id` empty) or exec `exec_id`; NotFound when there is none.
    pub(crate) fn process(&self, exec_id: &str) -> TtrpcResult<&Proc> {
        self.proc(exec_id).ok_or_else(|| not_found("exec", exec_id))
    }

    /// Exec `exec_id` (added, maybe not started); NotFound when there is none.
    pub(crate) fn exec_mut(&mut self, exec_id: &str) -> TtrpcResult<&mut Proc> {
        self.execs
            .get_mut(exec_id)
            .ok_or_else(|| not_found("exec", exec_id))
    }
}

impl Service {
    /// Creates a container; started at once (`runc run --detach`) when the options have
    /// crust's create-and-start type.
    pub(crate) async fn create_container(
        &self,
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
        let (opts, start_now) = create_options(&req)?;
        // A checkpoint to restore (CRIU images): runc restore runs it at once.
        let restore_from = crate::checkpoint::restore_from(&req)?;
        let start_now = start_now || restore_from.is_some();
        let runc = Arc::new(crate::runtime::build(&self.0.reaper, &opts, &bundle)?);
        let cli = RuncCli::new(&opts, &bundle);
        let stdio = StdioSpec {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        let mounted = mount_rootfs(&req, &bundle).await?;
        let since = Instant::now();
        let launch = Launch {
            id: &id,
            bundle: &bundle,
            opts: &opts,
            start_now,
            restore: restore_from.as_deref().map(|images| (self, &cli, images)),
        };
        let (pid, shim_io, runc_ms) = match run_init(&runc, &launch, &stdio).await {
            Ok(ran) => ran,
            Err(e) => {
                if let Some(t) = &mounted {
                    unmount(t);
                }
                return Err(e);
            }
        };
        let mut init = Proc::new(stdio.clone());
        init.pid = pid;
        init.io = shim_io;
        if start_now {
            init.status = Status::RUNNING;
        }
        self.add_container(
            &id,
            Container {
                bundle: bundle.clone(),
                runc,
                cli,
                init,
                execs: HashMap::new(),
                no_new_keyring: opts.no_new_keyring,
                mounted_rootfs: mounted,
                // A process started at once (run --detach) may be gone already:
                // its cgroup is then the one the spec names.
                cgroups: Cgroups::of_pid(pid)
                    .ok()
                    .or_else(|| Cgroups::of_bundle(&bundle))
                    .unwrap_or_default(),
                ooms_reported: 0,
                oom_watch: None,
            },
        );
        self.claim_early_exit(pid, since);
        info!(
            "created container {id} pid {pid}{} (runc {runc_ms:.1} ms of {:.1} ms)",
            if start_now { ", started" } else { "" },
            began.elapsed().as_secs_f64() * 1e3
        );
        self.publish_create(&req, stdio, pid);
        if start_now {
            self.publish_start(id, pid);
        }
        Ok(CreateTaskResponse {
            pid,
            ..Default::default()
        })
    }

    /// Keeps a created container and follows its OOM eventfd.
    fn add_container(&self, id: &str, container: Container) {
        let oom_fd = container.cgroups.oom_eventfd();
        lock(&self.0.containers).insert(id.to_string(), container);
        match oom_fd {
            Ok(fd) => {
                let h = tokio::spawn(self.clone().watch_oom(id.to_string(), fd));
                if let Some(c) = lock(&self.0.containers).get_mut(id) {
                    c.oom_watch = Some(h);
                }
            }
            Err(e) => debug!("no OOM notifications for {id}: {e}"),
        }
    }

    fn publish_create(&self, req: &CreateTaskRequest, stdio: StdioSpec, pid: u32) {
        let ev = TaskCreate {
            container_id: req.id.clone(),
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
    }

    /// Starts a created container (`runc start`).
    pub(crate) async fn start_init(&self, req: StartRequest) -> TtrpcResult<StartResponse> {
        let (runc, bundle) = self.runc_of(&req.id)?;
        {
            let c = self.container(&req.id)?;
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
            let mut c = self.container(&req.id)?;
            if c.init.status == Status::CREATED {
                c.init.status = Status::RUNNING;
            }
            c.init.pid
        };
        self.publish_start(req.id.clone(), pid);
        Ok(StartResponse {
            pid,
            ..Default::default()
        })
    }

    /// Deletes a container that is not running (`runc delete`, forced for one only created),
    /// unmounting the rootfs the shim mounted.
    pub(crate) async fn delete_container(&self, req: DeleteRequest) -> TtrpcResult<DeleteResponse> {
        let (runc, bundle, st) = {
            let c = self.container(&req.id)?;
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

    pub(crate) async fn container_pids(&self, req: PidsRequest) -> TtrpcResult<PidsResponse> {
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

    /// Reopens the CRI log (crust's annotation) and/or applies new resources (`runc update`).
    pub(crate) async fn update_container(&self, req: UpdateTaskRequest) -> TtrpcResult<Empty> {
        if req.annotations.contains_key(REOPEN_LOG_ANNOTATION) {
            let c = self.container(&req.id)?;
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

    /// The container's cgroup statistics as containerd's v1 `Metrics`.
    pub(crate) async fn container_stats(&self, req: StatsRequest) -> TtrpcResult<StatsResponse> {
        let cg = { self.container(&req.id)?.cgroups.clone() };
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

    /// The `/tasks/start` event of a container's init process.
    pub(crate) fn publish_start(&self, container_id: String, pid: u32) {
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

    pub(crate) fn runc_of(&self, id: &str) -> TtrpcResult<(Arc<runc::Runc>, PathBuf)> {
        let c = self.container(id)?;
        Ok((c.runc.clone(), c.bundle.clone()))
    }
}

/// The runc options of a create request, and whether it asks to start at once (crust's
/// create-and-start options type).
fn create_options(req: &CreateTaskRequest) -> TtrpcResult<(Options, bool)> {
    let opts = match req.options.as_ref() {
        Some(any) if !any.value.is_empty() => Options::parse_from_bytes(&any.value)
            .map_err(|e| status(Code::INVALID_ARGUMENT, format!("options: {e}")))?,
        _ => Options::new(),
    };
    let start_now = req
        .options
        .as_ref()
        .is_some_and(|any| any.type_url == CREATE_AND_START_OPTIONS);
    Ok((opts, start_now))
}

/// Mounts the rootfs the create request names (none: crustd mounted it) at
/// `<bundle>/rootfs`; the target when something was mounted.
async fn mount_rootfs(req: &CreateTaskRequest, bundle: &Path) -> TtrpcResult<Option<PathBuf>> {
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
    Ok(mounted)
}

/// What the init is launched with.
struct Launch<'a> {
    id: &'a str,
    bundle: &'a Path,
    opts: &'a Options,
    start_now: bool,
    /// CRIU images to restore the init from (`runc restore --detach`) instead.
    restore: Option<(&'a Service, &'a RuncCli, &'a Path)>,
}

/// The init launched with its stdio (a pty when it asks for a terminal): its pid, the
/// shim's side of the stdio and the milliseconds runc took. A failed launch is deleted
/// with `runc delete --force`.
async fn run_init(
    runc: &runc::Runc,
    l: &Launch<'_>,
    stdio: &StdioSpec,
) -> TtrpcResult<(u32, ShimIo, f64)> {
    let pid_file = l.bundle.join("init.pid");
    let (child_io, mut shim_io) = if stdio.terminal {
        (pio::ChildIo::default(), ShimIo::default())
    } else {
        pio::prepare(stdio).map_err(|e| internal(format!("stdio: {e}")))?
    };
    let mut copts = CreateOpts::new()
        .pid_file(&pid_file)
        .io(Arc::new(child_io))
        .no_pivot(l.opts.no_pivot_root)
        .no_new_keyring(l.opts.no_new_keyring)
        .detach(l.start_now);
    let launched = Instant::now();
    let result = if stdio.terminal {
        match ConsoleSocket::new() {
            Ok(sock) => {
                copts = copts.console_socket(&sock.path);
                let run = launch(runc, l.start_now, l.id, l.bundle, &copts);
                with_console(sock, run).await.and_then(|(_, master)| {
                    pio::attach_console(stdio, master, &mut shim_io)
                        .map_err(|e| internal(format!("console: {e}")))
                })
            }
            Err(e) => Err(internal(format!("console socket: {e}"))),
        }
    } else if let Some((svc, cli, images)) = l.restore {
        svc.restore(cli, l.id, l.bundle, images, &copts).await
    } else {
        launch(runc, l.start_now, l.id, l.bundle, &copts).await
    };
    let runc_ms = launched.elapsed().as_secs_f64() * 1e3;
    // The write ends of the process's stdio go with `copts`.
    drop(copts);
    match result.and_then(|()| read_pid(&pid_file)) {
        Ok(pid) => Ok((pid, shim_io, runc_ms)),
        Err(e) => {
            let _ = runc
                .delete(l.id, Some(&DeleteOpts::new().force(true)))
                .await;
            Err(e)
        }
    }
}

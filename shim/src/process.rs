//! A container's processes — its init and its execs — as the shim keeps them: stdio,
//! pid, status, exit; and the exec operations: add, start (`runc exec --detach`), signal,
//! resize, close stdin, wait, state, delete.

use std::{
    path::Path,
    sync::Arc,
    time::{Instant, SystemTime},
};

use containerd_shim::{
    TtrpcResult,
    api::{
        CloseIORequest, DeleteRequest, DeleteResponse, ExecProcessRequest, KillRequest,
        ResizePtyRequest, StartRequest, StartResponse, StateRequest, StateResponse, WaitRequest,
        WaitResponse,
    },
    protos::{
        events::task::{TaskExecAdded, TaskExecStarted},
        protobuf::well_known_types::empty::Empty,
        topics,
        ttrpc::Code,
        types::task::Status,
    },
};
use oci_spec::runtime::Process as ProcessSpec;
use runc::options::{ExecOpts, KillOpts};
use tokio::sync::watch;

use crate::io::{self as pio, ConsoleSocket, ShimIo, StdioSpec};
use crate::runtime::{read_pid, runc_error, with_console};
use crate::service::{Service, internal, lock, not_found, status, ts};

#[derive(Debug)]
pub(crate) struct Proc {
    pub(crate) stdio: StdioSpec,
    pub(crate) pid: u32,
    pub(crate) status: Status,
    pub(crate) exiting: bool,
    pub(crate) exit_status: u32,
    pub(crate) exited_at: Option<SystemTime>,
    pub(crate) done: watch::Sender<bool>,
    pub(crate) io: ShimIo,
    /// Exec processes: the spec until started.
    pub(crate) spec: Option<ProcessSpec>,
}

impl Proc {
    pub(crate) fn new(stdio: StdioSpec) -> Self {
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

impl Service {
    /// Starts an added exec with `runc exec --detach`; an exec that never ran counts as
    /// exited (255).
    pub(crate) async fn start_exec(&self, req: StartRequest) -> TtrpcResult<StartResponse> {
        let (runc, bundle) = self.runc_of(&req.id)?;
        let (spec, stdio, init_pid, no_new_keyring) = {
            let mut c = self.container(&req.id)?;
            if c.init.status != Status::RUNNING || c.init.exiting {
                return Err(status(
                    Code::FAILED_PRECONDITION,
                    format!("container {} is not running", req.id),
                ));
            }
            let (init_pid, nnk) = (c.init.pid, c.no_new_keyring);
            let p = c.exec_mut(&req.exec_id)?;
            let spec = p.spec.take().ok_or_else(|| {
                status(
                    Code::FAILED_PRECONDITION,
                    format!("exec {} already started", req.exec_id),
                )
            })?;
            (spec, p.stdio.clone(), init_pid, nnk)
        };
        let since = Instant::now();
        let target = ExecTarget {
            id: &req.id,
            exec_id: &req.exec_id,
            bundle: &bundle,
            init_pid,
            no_new_keyring,
        };
        let ran = self.run_exec(&runc, &target, &spec, &stdio).await;
        let (pid, shim_io) = match ran {
            Ok(ran) => ran,
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

    /// Deletes a finished (or never started) exec.
    pub(crate) async fn delete_exec(&self, req: DeleteRequest) -> TtrpcResult<DeleteResponse> {
        let mut c = self.container(&req.id)?;
        let p = c.exec_mut(&req.exec_id)?;
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
        Ok(DeleteResponse {
            pid: p.pid,
            exit_status: p.exit_status,
            exited_at: ts(p.exited_at),
            ..Default::default()
        })
    }

    /// Adds an exec of the given process spec; [`start_exec`](Self::start_exec) runs it.
    pub(crate) async fn add_exec(&self, req: ExecProcessRequest) -> TtrpcResult<Empty> {
        let spec: ProcessSpec = serde_json::from_slice(&req.spec.value)
            .map_err(|e| status(Code::INVALID_ARGUMENT, format!("exec spec: {e}")))?;
        {
            let mut c = self.container(&req.id)?;
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

    /// Signals the init (through runc; `all`: every process of the container) or an exec.
    pub(crate) async fn kill_process(&self, req: KillRequest) -> TtrpcResult<Empty> {
        let (runc, bundle, pid, st, exiting) = {
            let c = self.container(&req.id)?;
            let p = c.process(&req.exec_id)?;
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

    pub(crate) async fn resize_pty_of(&self, req: ResizePtyRequest) -> TtrpcResult<Empty> {
        let c = self.container(&req.id)?;
        let p = c.process(&req.exec_id)?;
        let console =
            p.io.console
                .as_ref()
                .ok_or_else(|| status(Code::FAILED_PRECONDITION, "process has no terminal"))?;
        pio::resize(console, req.width, req.height)
            .map_err(|e| internal(format!("resize: {e}")))?;
        Ok(Empty::new())
    }

    pub(crate) async fn close_io_of(&self, req: CloseIORequest) -> TtrpcResult<Empty> {
        let mut c = self.container(&req.id)?;
        let p = c
            .proc_mut(&req.exec_id)
            .ok_or_else(|| not_found("exec", &req.exec_id))?;
        if req.stdin {
            p.io.close_stdin();
        }
        Ok(Empty::new())
    }

    /// Waits until the process exited.
    pub(crate) async fn wait_process(&self, req: WaitRequest) -> TtrpcResult<WaitResponse> {
        let mut rx = {
            let c = self.container(&req.id)?;
            c.process(&req.exec_id)?.done.subscribe()
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

    pub(crate) async fn process_state(&self, req: StateRequest) -> TtrpcResult<StateResponse> {
        let c = self.container(&req.id)?;
        let p = c.process(&req.exec_id)?;
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
}

/// The container an exec starts in.
struct ExecTarget<'a> {
    id: &'a str,
    exec_id: &'a str,
    bundle: &'a Path,
    init_pid: u32,
    no_new_keyring: bool,
}

impl Service {
    /// Starts `spec` in the container: natively when [`crate::nexec`] can apply all of
    /// what runc would, else with `runc exec --detach`; its pid and the shim's side of
    /// its stdio (a pty when it asks for a terminal).
    async fn run_exec(
        &self,
        runc: &runc::Runc,
        t: &ExecTarget<'_>,
        spec: &ProcessSpec,
        stdio: &StdioSpec,
    ) -> TtrpcResult<(u32, ShimIo)> {
        // Moving the process into the container's cgroups waits for the migration lock.
        crate::cgroup::prime_migration_lock();
        let (child_io, mut shim_io) = if stdio.terminal {
            (pio::ChildIo::default(), ShimIo::default())
        } else {
            pio::prepare(stdio).map_err(|e| internal(format!("stdio: {e}")))?
        };
        let native = crate::nexec::Request {
            container_id: t.id,
            bundle: t.bundle,
            init_pid: t.init_pid,
            no_new_keyring: t.no_new_keyring,
            process: spec,
            stdio: child_io.raw_fds(),
            terminal: stdio.terminal,
        };
        let reaper = self.0.reaper.clone();
        match crate::nexec::start(&native, |pid| reaper.watch(pid)).await {
            Ok(Some(started)) => match started.console {
                Some(master) => pio::attach_console(stdio, master, &mut shim_io)
                    .map(|()| (started.pid, shim_io))
                    .map_err(|e| internal(format!("console: {e}"))),
                None => Ok((started.pid, shim_io)),
            },
            Ok(None) => {
                let pid_file = t.bundle.join(format!("exec-{}.pid", t.exec_id));
                let ran =
                    runc_exec(runc, t, spec, stdio, (child_io, &mut shim_io), &pid_file).await;
                let _ = std::fs::remove_file(&pid_file);
                ran.map(|pid| (pid, shim_io))
            }
            Err(e) => Err(internal(e)),
        }
    }
}

/// `runc exec --detach` of `spec`: the pid runc wrote (a pty master, with a terminal,
/// wired to `shim_io`).
async fn runc_exec(
    runc: &runc::Runc,
    t: &ExecTarget<'_>,
    spec: &ProcessSpec,
    stdio: &StdioSpec,
    (child_io, shim_io): (pio::ChildIo, &mut ShimIo),
    pid_file: &Path,
) -> TtrpcResult<u32> {
    let mut eopts = ExecOpts::new()
        .pid_file(pid_file)
        .detach(true)
        .io(Arc::new(child_io));
    let result = if stdio.terminal {
        let sock = ConsoleSocket::new().map_err(|e| internal(format!("console: {e}")))?;
        eopts = eopts.console_socket(&sock.path);
        let run = async {
            runc.exec(t.id, spec, Some(&eopts))
                .await
                .map_err(|e| runc_error(t.bundle, e))
        };
        with_console(sock, run).await.and_then(|(_, master)| {
            pio::attach_console(stdio, master, shim_io)
                .map_err(|e| internal(format!("console: {e}")))
        })
    } else {
        runc.exec(t.id, spec, Some(&eopts))
            .await
            .map_err(|e| runc_error(t.bundle, e))
    };
    drop(eopts);
    result.and_then(|()| read_pid(pid_file))
}

//! An in-memory task runtime for unit tests of the container lifecycle: tasks that run until
//! killed (or told to exit), a shim that can be lost, failures on demand.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use async_trait::async_trait;
use containerd_shim_protos::cgroups::metrics::Metrics;
use oci_spec::runtime::{LinuxResources, Process};
use tokio::sync::watch;

use super::{Connector, TaskRuntime};
use crate::pod::PodRecord;
use crate::shim::{CreateTask, ExitInfo, Result, ShimError, TaskIo, TaskState, TaskStatus};

#[derive(Debug, Clone)]
struct Task {
    pid: u32,
    status: TaskStatus,
    exit_status: u32,
    exited_at: Option<SystemTime>,
}

#[derive(Default)]
struct State {
    tasks: HashMap<(String, String), Task>,
    next_pid: u32,
    /// Every call, as `"<method> <id>[/<exec>]"`.
    calls: Vec<String>,
    /// The shim is gone: every call is Unavailable.
    lost: bool,
    /// `create_and_start` fails with this, after creating the task (a start cut short).
    fail_start: Option<String>,
    /// The processes ignore SIGTERM.
    ignore_term: bool,
    /// Execs exit at once with this code.
    exec_exit: u32,
    /// Bumped when the client goes away: the waits it had sent never answer.
    epoch: u64,
}

impl State {
    fn task(&self, id: &str, exec_id: &str) -> Result<&Task> {
        self.tasks
            .get(&key(id, exec_id))
            .ok_or_else(|| missing(id, exec_id))
    }

    /// Ok when the container's task is there.
    fn exists(&self, id: &str) -> Result<()> {
        self.task(id, "").map(|_| ())
    }
}

/// One pod's fake shim.
pub struct FakeShim {
    state: Mutex<State>,
    /// Bumped on every change, for waiters.
    changed: watch::Sender<u64>,
}

impl Default for FakeShim {
    fn default() -> Self {
        FakeShim {
            state: Mutex::new(State {
                next_pid: 100,
                ..Default::default()
            }),
            changed: watch::channel(0).0,
        }
    }
}

fn key(id: &str, exec_id: &str) -> (String, String) {
    (id.to_string(), exec_id.to_string())
}

impl FakeShim {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn notify(&self) {
        self.changed.send_modify(|n| *n += 1);
    }

    /// Runs `f` on the state after recording the call; Unavailable once the shim is lost.
    fn call<T>(
        &self,
        what: &str,
        id: &str,
        exec_id: &str,
        f: impl FnOnce(&mut State) -> Result<T>,
    ) -> Result<T> {
        let r = {
            let mut s = self.lock();
            let name = if exec_id.is_empty() {
                format!("{what} {id}")
            } else {
                format!("{what} {id}/{exec_id}")
            };
            s.calls.push(name);
            if s.lost {
                return Err(ShimError::Unavailable("connection closed".into()));
            }
            f(&mut s)
        };
        self.notify();
        r
    }

    /// The calls made so far.
    pub fn calls(&self) -> Vec<String> {
        self.lock().calls.clone()
    }

    /// The tasks it holds, as `id` or `id/exec`.
    pub fn tasks(&self) -> Vec<String> {
        let mut t: Vec<String> = self
            .lock()
            .tasks
            .keys()
            .map(|(i, e)| {
                if e.is_empty() {
                    i.clone()
                } else {
                    format!("{i}/{e}")
                }
            })
            .collect();
        t.sort();
        t
    }

    pub fn fail_start(&self, message: &str) {
        self.lock().fail_start = Some(message.to_string());
    }

    pub fn ignore_sigterm(&self) {
        self.lock().ignore_term = true;
    }

    /// The shim dies: calls and waits in progress fail Unavailable; its tasks die with it.
    pub fn lose(&self) {
        let mut s = self.lock();
        s.lost = true;
        s.tasks.clear();
        drop(s);
        self.notify();
    }

    /// The client (crustd) goes away: the waits it sent are never answered.
    pub fn drop_client(&self) {
        self.lock().epoch += 1;
        self.notify();
    }

    /// The container's process exits by itself with `code`.
    pub fn exit(&self, id: &str, code: u32) {
        if let Some(t) = self.lock().tasks.get_mut(&key(id, "")) {
            end(t, code);
        }
        self.notify();
    }
}

fn end(t: &mut Task, code: u32) {
    if t.status != TaskStatus::Stopped {
        t.status = TaskStatus::Stopped;
        t.exit_status = code;
        t.exited_at = Some(SystemTime::now());
    }
}

fn missing(id: &str, exec_id: &str) -> ShimError {
    ShimError::NotFound(format!("task {id}/{exec_id} not found"))
}

fn exit_info(t: &Task) -> ExitInfo {
    ExitInfo {
        pid: t.pid,
        exit_status: t.exit_status,
        exited_at: t.exited_at,
    }
}

#[async_trait]
impl TaskRuntime for FakeShim {
    async fn create_and_start(&self, t: &CreateTask) -> Result<u32> {
        self.call("create_and_start", &t.id, "", |s| {
            if s.tasks.contains_key(&key(&t.id, "")) {
                return Err(ShimError::AlreadyExists(t.id.clone()));
            }
            s.next_pid += 1;
            let pid = s.next_pid;
            s.tasks.insert(
                key(&t.id, ""),
                Task {
                    pid,
                    status: TaskStatus::Running,
                    exit_status: 0,
                    exited_at: None,
                },
            );
            match &s.fail_start {
                Some(m) => Err(ShimError::Internal(m.clone())),
                None => Ok(pid),
            }
        })
    }

    async fn start(&self, id: &str, exec_id: &str) -> Result<u32> {
        self.call("start", id, exec_id, |s| {
            let code = s.exec_exit;
            let t = s
                .tasks
                .get_mut(&key(id, exec_id))
                .ok_or_else(|| missing(id, exec_id))?;
            t.status = TaskStatus::Running;
            if !exec_id.is_empty() {
                end(t, code);
            }
            Ok(t.pid)
        })
    }

    async fn kill(&self, id: &str, exec_id: &str, signal: u32, _all: bool) -> Result<()> {
        self.call("kill", id, exec_id, |s| {
            let ignore = s.ignore_term && signal == libc::SIGTERM as u32;
            let t = s
                .tasks
                .get_mut(&key(id, exec_id))
                .ok_or_else(|| missing(id, exec_id))?;
            if !ignore {
                end(t, 128 + signal);
            }
            Ok(())
        })
    }

    async fn wait(&self, id: &str, exec_id: &str) -> Result<ExitInfo> {
        let mut changed = self.changed.subscribe();
        let epoch = {
            let mut s = self.lock();
            s.calls.push(format!("wait {id}/{exec_id}"));
            s.epoch
        };
        loop {
            let abandoned = {
                let s = self.lock();
                if s.epoch != epoch {
                    true
                } else if s.lost {
                    return Err(ShimError::Unavailable("connection closed".into()));
                } else {
                    match s.tasks.get(&key(id, exec_id)) {
                        None => return Err(missing(id, exec_id)),
                        Some(t) if t.status == TaskStatus::Stopped => return Ok(exit_info(t)),
                        Some(_) => {}
                    }
                    changed.borrow_and_update();
                    false
                }
            };
            if abandoned {
                return std::future::pending().await;
            }
            if changed.changed().await.is_err() {
                return Err(ShimError::Unavailable("fake dropped".into()));
            }
        }
    }

    async fn delete(&self, id: &str, exec_id: &str) -> Result<ExitInfo> {
        self.call("delete", id, exec_id, |s| {
            let t = s.task(id, exec_id)?;
            if t.status == TaskStatus::Running {
                return Err(ShimError::FailedPrecondition(format!("{id} is running")));
            }
            let info = exit_info(t);
            s.tasks.remove(&key(id, exec_id));
            Ok(info)
        })
    }

    async fn state(&self, id: &str, exec_id: &str) -> Result<TaskState> {
        self.call("state", id, exec_id, |s| {
            let t = s.task(id, exec_id)?;
            Ok(TaskState {
                id: id.to_string(),
                exec_id: exec_id.to_string(),
                pid: t.pid,
                status: t.status,
                exit_status: t.exit_status,
                exited_at: t.exited_at,
                bundle: String::new(),
                terminal: false,
            })
        })
    }

    async fn exec(&self, id: &str, exec_id: &str, _process: &Process, _io: &TaskIo) -> Result<()> {
        self.call("exec", id, exec_id, |s| {
            if !s.tasks.contains_key(&key(id, "")) {
                return Err(missing(id, ""));
            }
            s.next_pid += 1;
            let pid = s.next_pid;
            s.tasks.insert(
                key(id, exec_id),
                Task {
                    pid,
                    status: TaskStatus::Created,
                    exit_status: 0,
                    exited_at: None,
                },
            );
            Ok(())
        })
    }

    async fn update(&self, id: &str, _resources: &LinuxResources) -> Result<()> {
        self.call("update", id, "", |s| s.exists(id))
    }

    async fn reopen_log(&self, id: &str) -> Result<()> {
        self.call("reopen_log", id, "", |s| s.exists(id))
    }

    async fn close_stdin(&self, id: &str, exec_id: &str) -> Result<()> {
        self.call("close_stdin", id, exec_id, |_| Ok(()))
    }

    async fn resize_pty(&self, id: &str, exec_id: &str, _w: u32, _h: u32) -> Result<()> {
        self.call("resize_pty", id, exec_id, |_| Ok(()))
    }

    async fn stats(&self, id: &str) -> Result<Metrics> {
        self.call("stats", id, "", |_| Ok(Metrics::new()))
    }

    fn follow_output(&self, id: &str, _bundle: &Path, _log_path: Option<&Path>) {
        self.lock().calls.push(format!("follow_output {id}"));
    }
}

/// Hands every pod the same fake shim; refuses while `unreachable`.
#[derive(Clone, Default)]
pub struct FakeConnector {
    pub shim: Arc<FakeShim>,
    pub unreachable: Arc<std::sync::atomic::AtomicBool>,
}

#[async_trait]
impl Connector for FakeConnector {
    async fn connect(&self, _pod: &PodRecord) -> Result<Arc<dyn TaskRuntime>> {
        if self.unreachable.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(ShimError::Unavailable("no shim".into()));
        }
        Ok(self.shim.clone())
    }
}

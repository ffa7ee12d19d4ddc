//! Exits: the framework's SIGCHLD handler reaps every child (`waitpid(-1)`); each exit is
//! routed to the runc command waiting for it ([`RuncSpawner`]), else to the container
//! process with that pid, whose exit is recorded once its output is drained and then
//! published (`/tasks/exit`). An exit whose pid is not known yet (a process that ended
//! before runc's pid file was read) is kept, bounded, until the pid is claimed.

use std::{
    collections::{HashMap, VecDeque},
    os::unix::process::ExitStatusExt,
    process::ExitStatus,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use async_trait::async_trait;
use containerd_shim::protos::{events::task::TaskExit, topics, types::task::Status};
use log::info;
use tokio::sync::oneshot;

use crate::io::ShimIo;
use crate::process::Proc;
use crate::service::{Service, lock, ts};

/// How long an exit waits for its output to be copied out before it is reported.
const DRAIN_LIMIT: Duration = Duration::from_secs(2);
const UNCLAIMED_MAX: usize = 256;

/// Exits reaped by the framework's SIGCHLD handler, routed to whoever waits for them.
#[derive(Debug, Default)]
pub struct Reaper {
    waiters: Mutex<HashMap<i32, oneshot::Sender<i32>>>,
    /// Exits of pids nobody claimed yet (a process that exited before its pid was known).
    unclaimed: Mutex<VecDeque<(i32, i32, SystemTime, Instant)>>,
}

impl Reaper {
    /// The exit code of `pid`, once the framework reaps it.
    pub fn watch(&self, pid: i32) -> oneshot::Receiver<i32> {
        let (tx, rx) = oneshot::channel();
        lock(&self.waiters).insert(pid, tx);
        rx
    }

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
pub struct RuncSpawner(pub Arc<Reaper>);

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

impl Service {
    /// A reaped exit: to the runc command waiting for it, else to the process with its pid
    /// (recorded in the background), else kept for [`claim_early_exit`](Self::claim_early_exit).
    pub(crate) fn on_exit(&self, pid: i32, code: i32, at: SystemTime) {
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

    /// After a pid became known: if it already exited, handle that exit now.
    pub(crate) fn claim_early_exit(&self, pid: u32, since: Instant) {
        if let Some((code, at)) = self.0.reaper.take_unclaimed(pid as i32, since) {
            self.on_exit(pid as i32, code, at);
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

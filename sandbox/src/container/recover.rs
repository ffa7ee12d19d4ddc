//! After a restart: the starts a crash cut short. StartContainer asks the shim to create
//! and start the task, then records RUNNING; crustd killed in between leaves a record
//! that says CREATED while the shim runs the container (or is still waiting for runc to
//! start it). Left so, nothing would ever stop it: StopPodSandbox and StopContainer stop
//! only what runs. So before serving, each CREATED record is set against its shim:
//!
//! - the shim runs the task (or it has exited already): the start happened — RUNNING
//!   (started now, as far as crustd can tell), with its exit watched as for any start;
//! - the shim holds a task created but not started (a shim without create-and-start):
//!   it is deleted, the container stays CREATED and can be started;
//! - the shim knows no task, but runc's state for the container exists: runc began the
//!   start and the shim dropped the request when crustd's connection closed (its ttrpc
//!   server cancels a dead client's calls), so the shim will never know the container
//!   (its output pipes are gone with the request). After a short grace in which the shim
//!   may still take it, `runc delete --force` ends it, again until runc's state is gone
//!   (runc may still be running the start), and it is a failed start: EXITED, reason
//!   `StartError`. Not CREATED: its process ran, and a second start would run it again
//!   into the same log (chaos saw a short container's lines twice). Without runc state,
//!   the start never reached the runtime: CREATED.

use std::sync::Arc;
use std::time::Duration;

use super::record::{ContainerRecord, ContainerState};
use super::{ContainerEventKind, Inner, now_ns};
use crate::shim::{ShimError, TaskStatus};

/// How long the shim may take to show a task runc has begun.
const GRACE: Duration = Duration::from_secs(2);
/// How long runc may take to finish a start before it can be deleted.
const RUNC_DONE: Duration = Duration::from_secs(10);
/// One shim call of the settling.
const CALL: Duration = Duration::from_secs(5);

impl Inner {
    pub(super) async fn settle_interrupted_starts(self: &Arc<Self>) {
        for rec in self.records.filter(|r| r.state == ContainerState::Created) {
            self.settle_start(&rec).await;
        }
    }

    async fn settle_start(self: &Arc<Self>, rec: &ContainerRecord) {
        let Ok(pod) = self.pods.get(&rec.pod_id) else {
            return;
        };
        let root = rec
            .runtime_root
            .clone()
            .unwrap_or_else(|| self.runtime_root(&pod));
        let began = || root.join(&rec.id).exists();
        let shim = match tokio::time::timeout(CALL, self.pods.task_runtime(&pod)).await {
            Ok(Ok(shim)) => Some(shim),
            _ => None,
        };
        let began_at = tokio::time::Instant::now();
        loop {
            let state = match &shim {
                Some(s) => tokio::time::timeout(CALL, s.state(&rec.id, "")).await.ok(),
                None => None,
            };
            let waited = began_at.elapsed();
            match state {
                Some(Ok(st)) if st.status == TaskStatus::Created => {
                    let s = shim.as_ref().expect("answered");
                    let _ = s.kill(&rec.id, "", libc::SIGKILL as u32, true).await;
                    let _ = s.delete(&rec.id, "").await;
                    tracing::info!(container = %rec.id, "deleted the task of a start cut by a restart");
                    return;
                }
                Some(Ok(st)) => return self.started_before_restart(rec, st.pid),
                _ if !began() => return,
                Some(Err(ShimError::NotFound(_))) if waited < GRACE => {}
                _ if waited < RUNC_DONE => {
                    tracing::warn!(container = %rec.id, "runc began a start cut by a restart and the shim does not know it: deleting it with the runtime");
                    self.force_delete(rec).await;
                    if !began() {
                        return self.start_failed_before_restart(rec);
                    }
                }
                _ => {
                    tracing::warn!(container = %rec.id, "runc's state of a start cut by a restart stays");
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn start_failed_before_restart(&self, rec: &ContainerRecord) {
        let failed = self.update(&rec.id, |r| {
            r.state = ContainerState::Exited;
            r.finished_at_ns = now_ns();
            r.exit_code = 128;
            r.reason = "StartError".into();
            r.message = "its start was cut by a crustd restart; the runtime ended it".into();
        });
        match failed {
            Ok(rec) => self.emit(&rec, ContainerEventKind::Stopped),
            Err(e) => {
                tracing::warn!(container = %rec.id, error = %e, "recording a start cut by a restart")
            }
        }
    }

    fn started_before_restart(self: &Arc<Self>, rec: &ContainerRecord, pid: u32) {
        let updated = self.update(&rec.id, |r| {
            r.state = ContainerState::Running;
            r.pid = pid;
            r.started_at_ns = now_ns();
        });
        match updated {
            Ok(rec) => {
                tracing::info!(container = %rec.id, pid, "the shim finished a start cut by a restart: RUNNING");
                self.emit(&rec, ContainerEventKind::Started);
                self.clone().watch_exit(rec.id.clone());
            }
            Err(e) => {
                tracing::warn!(container = %rec.id, error = %e, "recording a start cut by a restart")
            }
        }
    }
}

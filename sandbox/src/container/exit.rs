//! Exit watching: a `Wait` on the shim per running container records its exit (code, time,
//! reason `Completed`/`Error`, or `OOMKilled` when the container's memory cgroup counted an
//! OOM kill); once recorded, the task is deleted from the shim (runc state and cgroups go at
//! exit, as containerd does). After a crustd restart the waits are issued again: a container
//! that exited meanwhile is reported with its exit code; a shim that cannot be reached turns
//! its running containers UNKNOWN.

use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::watch;

use super::record::ContainerState;
use super::stats::cgroupfs_path;
use super::{ContainerEventKind, Inner, to_ns};
use crate::shim::ShimError;

impl Inner {
    pub(super) fn exits_lock(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, watch::Sender<bool>>> {
        self.exits.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A receiver of the container's exit signal (true once it exited).
    pub(super) fn exit_receiver(&self, id: &str) -> watch::Receiver<bool> {
        let mut exits = self.exits_lock();
        exits
            .entry(id.to_string())
            .or_insert_with(|| watch::channel(false).0)
            .subscribe()
    }

    pub(super) fn mark_unknown(&self, id: &str, why: &str) {
        let _ = self.update(id, |r| {
            if r.state == ContainerState::Running {
                r.state = ContainerState::Unknown;
                r.message = why.to_string();
            }
        });
        if let Some(tx) = self.exits_lock().get(id) {
            let _ = tx.send(true);
        }
    }

    /// Waits for the container's exit in the background and records it.
    pub(super) fn watch_exit(self: Arc<Self>, id: String) {
        // Arm the channel now so a stop that starts right away sees the exit.
        drop(self.exit_receiver(&id));
        tokio::spawn(async move {
            let Some(rec) = self.records.find(&id) else {
                return;
            };
            let pod = match self.pods.get(&rec.pod_id) {
                Ok(p) => p,
                Err(e) => return self.mark_unknown(&id, &format!("pod is gone: {e}")),
            };
            let shim = match self.pods.task_runtime(&pod).await {
                Ok(shim) => shim,
                Err(e) => return self.mark_unknown(&id, &e.to_string()),
            };
            // After a restart, output crustd copies for the shim flows again.
            shim.follow_output(&id, &rec.bundle, rec.log_path.as_deref());
            match shim.wait(&id, "").await {
                Ok(exit) => {
                    // Held until the task is deleted: a removal that follows the exit
                    // waits for this delete (in its background part) instead of sending
                    // its own.
                    let deleted = self.task_deleted.get(&id);
                    let mut deleted = deleted.lock().await;
                    self.record_exit(&id, exit.exit_status as i32, exit.exited_at);
                    // As containerd does: once the exit is recorded the task
                    // goes from the shim (runc delete), so RemoveContainer
                    // has only crust's own parts left to remove.
                    match shim.delete(&id, "").await {
                        Ok(_) | Err(ShimError::NotFound(_)) => *deleted = true,
                        Err(e) => {
                            tracing::debug!(container = %id, error = %e, "deleting the exited task")
                        }
                    }
                }
                Err(ShimError::NotFound(_)) => {
                    // The shim does not know the container: it was restarted
                    // or the container was deleted behind crust's back.
                    self.record_exit(&id, 255, None);
                    let _ = self.update(&id, |r| r.reason = "Unknown".into());
                }
                Err(e) => {
                    self.pods.forget_task_runtime(&rec.pod_id).await;
                    self.mark_unknown(&id, &format!("shim lost: {e}"));
                }
            }
        });
    }

    pub(super) fn record_exit(&self, id: &str, code: i32, at: Option<SystemTime>) {
        let oom = self
            .records
            .find(id)
            .is_some_and(|r| oom_killed(&r.cgroups_path));
        let updated = self.update(id, |r| {
            r.state = ContainerState::Exited;
            r.exit_code = code;
            r.finished_at_ns = to_ns(at).max(r.started_at_ns);
            r.pid = 0;
            r.reason = if oom {
                "OOMKilled".into()
            } else if code == 0 {
                "Completed".into()
            } else {
                "Error".into()
            };
        });
        if let Ok(rec) = &updated {
            super::metrics::container_exited(oom);
            self.emit(rec, ContainerEventKind::Stopped);
        }
        if let Some(tx) = self.exits_lock().get(id) {
            let _ = tx.send(true);
        }
    }
}

/// Whether the kernel OOM-killed a process in this cgroup (v1 `memory.oom_control`
/// or v2 `memory.events`).
fn oom_killed(cgroups_path: &str) -> bool {
    cgroupfs_path(cgroups_path)
        .and_then(|p| crust_cgroups::oom::kills(Path::new(crust_cgroups::ROOT), &p))
        .is_some_and(|n| n > 0)
}

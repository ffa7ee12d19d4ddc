//! RemoveContainer: in any state (a running one is killed first); idempotent, an unknown id
//! is success.
//!
//! On the request path: the record is written into the bundle (`removed.json`), deleted
//! from the store (the one durable commit) and the bundle is renamed into
//! `<state_dir>/containers-trash/`. The rest is a background task: the task deleted in the
//! shim unless the exit watch did already (it holds `task_deleted` while it deletes, so the
//! two never both send one; when the shim is gone, `runc delete --force` with the state
//! root kept in the record), then the rootfs unmounted, the snapshot, the cgroups runc left
//! and the bundle's tree removed. RemovePodSandbox waits for those of its pod
//! ([`Containers::remove_all_of_pod`]), so the pod's own cgroup and directory can go. A
//! crash before the background task finished leaves the bundle in the trash, which the next
//! start finishes before anything else (`orphans.rs`), `removed.json` telling it what to
//! delete with runc.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::bundle::{release_rootfs, remove_tree};
use super::record::{ContainerRecord, ContainerState};
use super::{ContainerEventKind, Containers, Inner, Rootfs};
use crate::error::Result;
use crate::shim::ShimError;

/// The record of a removed container, kept in its bundle in the trash.
pub(super) const REMOVED_RECORD: &str = "removed.json";

/// Where removed bundles wait for their background cleanup.
pub(super) fn trash_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("containers-trash")
}

impl Containers {
    /// RemoveContainer: in any state (a running one is killed first); unknown is success.
    pub async fn remove(&self, id: &str) -> Result<()> {
        let Some(full) = self.inner.records.resolve(id)? else {
            return Ok(());
        };
        self.stop(&full, Duration::ZERO).await?;
        let Some(rec) = self.inner.records.find(&full) else {
            return Ok(());
        };
        let timer = super::metrics::OpTimer::new("remove");
        let t0 = Instant::now();
        // What the next start needs should a crash cut the cleanup short (owner-only: the
        // record holds the env).
        let _ = crust_state::private::write_file(
            &rec.bundle.join(REMOVED_RECORD),
            &serde_json::to_vec(&rec).unwrap_or_default(),
        );
        self.inner.records.remove(&rec.id)?;
        let t_record = t0.elapsed();
        let trashed = self.inner.trash(&rec);
        let deleted = self.inner.task_deleted.get(&rec.id);
        self.inner.emit(&rec, ContainerEventKind::Deleted);
        self.inner.forget(&rec.id);
        self.inner.update_metrics();
        let this = self.clone();
        let pod_id = rec.pod_id.clone();
        let cleanup = tokio::spawn(async move {
            {
                let mut deleted = deleted.lock().await;
                if !*deleted {
                    this.delete_task(&rec).await;
                    *deleted = true;
                }
            }
            let rootfs = this.inner.rootfs.clone();
            let _ = tokio::task::spawn_blocking(move || {
                clean_up(rootfs.as_ref(), &rec.id, &trashed, &rec.cgroups_path)
            })
            .await;
        });
        self.inner.cleanups_lock().push((pod_id, cleanup));
        drop(timer);
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        tracing::debug!(
            container = %full,
            record_ms = ms(t_record),
            total_ms = ms(t0.elapsed()),
            "removed"
        );
        Ok(())
    }

    /// Removes every container of a pod and waits until their rootfs, snapshots, cgroups and
    /// bundles are gone (RemovePodSandbox, before the pod's cgroup and directory go).
    pub async fn remove_all_of_pod(&self, pod_id: &str) -> Result<()> {
        for id in self.of_pod(pod_id) {
            self.remove(&id).await?;
        }
        let mine: Vec<_> = {
            let mut all = self.inner.cleanups_lock();
            let (mine, rest) = std::mem::take(&mut *all)
                .into_iter()
                .partition(|(pod, _)| pod == pod_id);
            *all = rest;
            mine
        };
        for (_, cleanup) in mine {
            let _ = cleanup.await;
        }
        Ok(())
    }

    /// Deletes the container's task in its shim (the exit watch usually did already); when
    /// the shim is gone, the runtime itself ends what may still run.
    async fn delete_task(&self, rec: &ContainerRecord) {
        let deleted = match self.inner.pods.get(&rec.pod_id) {
            Ok(pod) => match self.inner.pods.task_runtime(&pod).await {
                Ok(shim) => match shim.delete(&rec.id, "").await {
                    Ok(_) | Err(ShimError::NotFound(_)) => true,
                    Err(e) => {
                        tracing::warn!(container = %rec.id, error = %e, "deleting task in the shim");
                        false
                    }
                },
                Err(_) => false,
            },
            Err(_) => false,
        };
        if !deleted && rec.state != ContainerState::Created {
            // The shim is gone (killed, or its pod removed behind our back):
            // the container may still run, orphaned. runc itself ends it.
            self.inner.force_delete(rec).await;
        }
    }
}

impl Inner {
    /// Moves the bundle into the trash (a rename: the mounted rootfs goes with it); the
    /// bundle's own path when it cannot be moved.
    fn trash(&self, rec: &ContainerRecord) -> PathBuf {
        let trash = trash_dir(&self.cfg.state_dir);
        let to = trash.join(&rec.id);
        let moved = crust_state::private::create_dir(&trash)
            .and_then(|()| std::fs::rename(&rec.bundle, &to));
        match moved {
            Ok(()) => to,
            Err(e) => {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(container = %rec.id, error = %e, "moving the bundle to the trash; removing it in place");
                }
                rec.bundle.clone()
            }
        }
    }

    /// Drops what memory keeps of a removed container.
    fn forget(&self, id: &str) {
        self.cpu_samples
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
        self.exits_lock().remove(id);
        self.task_deleted.forget(id);
    }

    fn cleanups_lock(
        &self,
    ) -> std::sync::MutexGuard<'_, Vec<(String, tokio::task::JoinHandle<()>)>> {
        // Finished cleanups are dropped whenever the list is touched.
        let mut c = self.cleanups.lock().unwrap_or_else(|p| p.into_inner());
        c.retain(|(_, h)| !h.is_finished());
        c
    }

    /// `runc delete --force` with the container's runtime and state root: kills
    /// whatever is left of a container whose shim is gone.
    pub(super) async fn force_delete(&self, rec: &ContainerRecord) {
        let out = tokio::process::Command::from(self.runc_delete(rec))
            .output()
            .await;
        log_force_delete(&rec.id, out);
    }

    /// The same, blocking (at start).
    pub(super) fn force_delete_blocking(&self, rec: &ContainerRecord) {
        log_force_delete(&rec.id, self.runc_delete(rec).output());
    }

    fn runc_delete(&self, rec: &ContainerRecord) -> std::process::Command {
        let root = match &rec.runtime_root {
            Some(root) => root.clone(),
            // Records made before the root was kept: from the pod, while it is there.
            None => match self.pods.get(&rec.pod_id) {
                Ok(pod) => self.runtime_root(&pod),
                Err(_) => self.cfg.state_dir.join("runc"),
            },
        };
        let mut cmd = std::process::Command::new(&rec.runtime_binary);
        cmd.arg("--root")
            .arg(root)
            .args(["delete", "--force", &rec.id]);
        cmd
    }
}

fn log_force_delete(id: &str, out: std::io::Result<std::process::Output>) {
    match out {
        Ok(o) if o.status.success() => {
            tracing::info!(container = %id, "deleted with runc; its shim was gone")
        }
        Ok(o) => tracing::debug!(
            container = %id,
            stderr = %String::from_utf8_lossy(&o.stderr).trim(),
            "runc delete --force"
        ),
        Err(e) => tracing::warn!(container = %id, error = %e, "running runc delete"),
    }
}

/// What a removal leaves for later, in order: the rootfs (unmounted) and its snapshot, the
/// cgroups runc did not remove (after a lost shim, or in hierarchies it does not manage:
/// name=systemd, a hybrid v2 mount; never for the systemd driver's `slice:prefix:name`),
/// then the bundle. Blocking: it may wait a little for a busy cgroup.
pub(super) fn clean_up(rootfs: &dyn Rootfs, id: &str, bundle: &Path, cgroups_path: &str) {
    let t0 = Instant::now();
    if let Err(e) = release_rootfs(rootfs, id, &bundle.join("rootfs")) {
        // The bundle stays in the trash: the next start tries again.
        tracing::warn!(container = %id, error = %e, "releasing the rootfs of a removed container");
        return;
    }
    if !cgroups_path.is_empty() && !cgroups_path.contains(':') {
        crate::cgroup::remove_everywhere(cgroups_path);
    }
    if let Err(e) = remove_tree(bundle) {
        tracing::warn!(container = %id, error = %e, "removing the bundle of a removed container");
    }
    tracing::debug!(container = %id, ms = t0.elapsed().as_secs_f64() * 1e3, "removed container cleaned up");
}

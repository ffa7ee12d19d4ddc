//! RemovePodSandbox: stop, then release namespaces, files, cgroup and the record; idempotent.

use super::PodSandboxes;
use super::stop::stop_locked;
use crate::cgroup;
use crate::error::Result;
use crate::namespaces;

impl PodSandboxes {
    /// Removes a pod in any state. An unknown id is success.
    pub async fn remove(&self, id: &str) -> Result<()> {
        let inner = &self.inner;
        let Some(id) = inner.resolve(id)? else {
            return Ok(());
        };
        let lock = inner.op_lock(&id);
        let _guard = lock.lock().await;
        let Some(rec) = inner.pods.find(&id) else {
            return Ok(());
        };
        let started = std::time::Instant::now();
        let rec = stop_locked(inner, rec).await?;
        // Containers of the pod are gone by now (cri removes them first).
        super::shim::stop_shim(&rec.id, &rec.dir, rec.shim_pid).await;
        self.forget_task_runtime(&rec.id).await;
        tracing::debug!(pod = %id, ms = started.elapsed().as_millis() as u64, "shim gone");
        let r = rec.clone();
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            if let Some(shm) = &r.shm {
                namespaces::unmount(shm)?;
            }
            namespaces::destroy(&r.namespaces);
            match std::fs::remove_dir_all(&r.dir) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
            if let Some(cg) = &r.cgroup {
                cgroup::remove(cg)?;
            }
            Ok(())
        })
        .await
        .map_err(|e| crate::Error::Internal(format!("remove task: {e}")))??;
        tracing::debug!(pod = %id, ms = started.elapsed().as_millis() as u64, "namespaces, files and cgroup gone");
        // Under the record's lock: a concurrent liveness refresh cannot write it back.
        inner.pods.remove(&id)?;
        inner.names.forget_id(&id);
        inner.update_metrics();
        drop(_guard);
        inner.forget_op_lock(&id);
        tracing::info!(pod = %id, "pod sandbox removed");
        Ok(())
    }
}

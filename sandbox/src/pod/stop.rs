//! StopPodSandbox: network down (CNI DEL, IP released), infra process gone; idempotent.

use super::record::PodRecord;
use super::spec::PodState;
use super::{Inner, PodSandboxes};
use crate::cni::RuntimeConf;
use crate::error::Result;
use crate::namespaces;

impl PodSandboxes {
    /// Stops a pod. An unknown id is success.
    pub async fn stop(&self, id: &str) -> Result<()> {
        let Some(id) = self.inner.resolve(id)? else {
            return Ok(());
        };
        let lock = self.inner.op_lock(&id);
        let _guard = lock.lock().await;
        let Some(rec) = self.inner.pods.find(&id) else {
            return Ok(());
        };
        stop_locked(&self.inner, rec).await?;
        Ok(())
    }
}

/// Stop with the pod's op lock held. Every step is safe to repeat.
pub(super) async fn stop_locked(inner: &Inner, mut rec: PodRecord) -> Result<PodRecord> {
    // Containers of the pod are stopped here once they exist (issue 5, through the shim).
    if rec.network.is_some() || inner.cni.cached(&rec.id).is_some() {
        let rt = match &rec.namespaces.net {
            Some(netns) => super::run::runtime_conf(&rec.id, netns, &rec.spec),
            None => RuntimeConf::default(),
        };
        let network = crate::cni::find_network_config(&inner.config.cni_conf_dir).ok();
        // The cache (written at ADD) wins over today's config; the config only stands in when
        // the cache is gone.
        inner
            .cni
            .del(
                &rec.id,
                network.as_ref().filter(|_| rec.network.is_some()),
                &rt,
            )
            .await?;
    }
    let ns = rec.namespaces.clone();
    let _ = tokio::task::spawn_blocking(move || namespaces::kill_infra(&ns)).await;
    if rec.state != PodState::NotReady || !rec.ips.is_empty() || rec.network.is_some() {
        rec.state = PodState::NotReady;
        rec.ips.clear();
        rec.network = None;
        rec.cni_result = None;
        inner.save(rec.clone())?;
        tracing::info!(pod = %rec.id, "pod sandbox stopped");
    }
    Ok(rec)
}

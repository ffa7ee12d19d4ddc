//! The pod's shim: started by RunPodSandbox, shut down by RemovePodSandbox.
//!
//! crust-shim (or the handler's own shim v2 binary) runs detached with the pod directory as its
//! working directory, where it leaves `address` (and `shim.pid`); the containers of the pod
//! reach it through [`ShimClient::reconnect`] on that directory, also after a crustd restart.
//! How the handler's binary is started and fed is its [`ShimFlavour`].

use std::path::Path;
use std::time::{Duration, Instant};

use tokio::sync::broadcast;

use std::sync::Arc;

use super::record::PodRecord;
use super::{Inner, PodSandboxes};
use crate::RuntimeKind;
use crate::error::{Error, Result};
use crate::namespaces::start_time;
use crate::shim::{EventsServer, ShimClient, ShimEvent, ShimFlavour, SpawnConfig};
use crate::task::TaskRuntime;

impl PodSandboxes {
    /// The pod's task runtime (its shim), connected on first use and kept until the pod is
    /// removed or [`forget_task_runtime`](Self::forget_task_runtime) drops it.
    pub async fn task_runtime(&self, pod: &PodRecord) -> Result<Arc<dyn TaskRuntime>> {
        let mut runtimes = self.inner.runtimes.lock().await;
        if let Some(r) = runtimes.get(&pod.id) {
            return Ok(r.clone());
        }
        let r = self.inner.connector.connect(pod).await.map_err(|e| {
            Error::FailedPrecondition(format!("shim of pod {} is not reachable: {e}", pod.id))
        })?;
        runtimes.insert(pod.id.clone(), r.clone());
        Ok(r)
    }

    /// Drops the connection to a pod's shim (lost): the next use connects again.
    pub async fn forget_task_runtime(&self, pod_id: &str) {
        self.inner.runtimes.lock().await.remove(pod_id);
    }
}

/// The containerd namespace crust's shims run in.
pub const SHIM_NAMESPACE: &str = "k8s.io";

impl Inner {
    /// The events endpoint shims publish to, started on first use.
    pub(super) async fn events_address(&self) -> Result<String> {
        let address = self
            .events
            .get_or_try_init(|| async {
                let path = self.paths.state_dir.join("events.sock");
                let (server, mut rx) = EventsServer::start(&path)
                    .await
                    .map_err(|e| Error::Internal(format!("shim events endpoint: {e}")))?;
                let tx = self.shim_events.clone();
                tokio::spawn(async move {
                    while let Some(ev) = rx.recv().await {
                        tracing::debug!(topic = %ev.topic, event = ?ev.event, "shim event");
                        // No subscriber is fine: containers learn exits through Wait too.
                        let _ = tx.send(ev);
                    }
                });
                let address = server.address().to_string();
                *self.events_server.lock().unwrap_or_else(|p| p.into_inner()) = Some(server);
                Ok::<_, Error>(address)
            })
            .await?;
        Ok(address.clone())
    }

    /// Starts the pod's shim and returns its pid.
    pub(super) async fn start_shim(&self, id: &str, dir: &Path, handler: &str) -> Result<u32> {
        let (_, h) = self.config.handler(handler).ok_or_else(|| {
            Error::InvalidArgument(format!("unknown runtime handler {handler:?}"))
        })?;
        let binary = match h.kind {
            RuntimeKind::Oci => self.config.resolve_shim_binary().ok_or_else(|| {
                Error::FailedPrecondition(format!(
                    "shim binary {} not found next to crustd or in PATH",
                    self.config.shim_binary.display()
                ))
            })?,
            RuntimeKind::ShimV2 => crate::resolve_binary(&h.path).ok_or_else(|| {
                Error::FailedPrecondition(format!(
                    "shim v2 binary {} of runtime handler {handler:?} not found",
                    h.path.display()
                ))
            })?,
        };
        let events = self.events_address().await?;
        let cfg = SpawnConfig {
            binary,
            namespace: SHIM_NAMESPACE.to_string(),
            socket_dir: self.paths.state_dir.join("s"),
            debug: false,
            start_timeout: Duration::from_secs(10),
            flavour: ShimFlavour::of(h.kind),
        };
        let shim = ShimClient::spawn(&cfg, id, dir, &events)
            .await
            .map_err(|e| Error::Internal(format!("starting the pod's shim: {e}")))?;
        // The pid beside the address (crust-shim writes it, the client does for shims that
        // do not), else asked.
        if let Some(pid) = std::fs::read_to_string(dir.join("shim.pid"))
            .ok()
            .and_then(|p| p.trim().parse().ok())
        {
            return Ok(pid);
        }
        shim.shim_pid()
            .await
            .map_err(|e| Error::Internal(format!("pod shim not answering: {e}")))
    }

    /// Subscribes to what the pods' shims publish.
    pub(super) fn subscribe(&self) -> broadcast::Receiver<ShimEvent> {
        self.shim_events.subscribe()
    }
}

/// Whether `pid` is a live (not zombie) shim of pod `id`: its command line names the pod.
pub(super) fn shim_alive(id: &str, pid: i32) -> bool {
    start_time(pid).is_some()
        && std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|c| c.split(|b| *b == 0).any(|arg| arg == id.as_bytes()))
            .unwrap_or(false)
}

/// Asks the pod's shim to exit now and makes sure it did (SIGKILL after a grace period, only
/// if the pid is still the shim of this pod). No shim is fine.
pub(super) async fn stop_shim(id: &str, dir: &Path, pid: Option<u32>) {
    let reached = match ShimClient::reconnect(dir).await {
        Ok(mut shim) => {
            shim.set_timeout(Duration::from_secs(5));
            if let Err(e) = shim.shutdown(true).await {
                tracing::warn!(pod = %id, error = %e, "shim shutdown");
            }
            true
        }
        Err(_) => false,
    };
    let Some(pid) = pid.map(|p| p as i32) else {
        if !reached {
            remove_socket(dir);
        }
        return;
    };
    let is_ours = |pid: i32| shim_alive(id, pid);
    let deadline = Instant::now() + Duration::from_secs(2);
    while is_ours(pid) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    if is_ours(pid) {
        tracing::warn!(pod = %id, pid, "shim did not exit; killing it");
        // SAFETY: kill on a pid checked above to be this pod's shim.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
    }
    remove_socket(dir);
}

/// Removes the socket of the pod's shim, once it is gone: a shim that was killed leaves it
/// (for a containerd-style shim outside crust's state dir, in `/run/containerd/s`).
fn remove_socket(dir: &Path) {
    let Ok(address) = std::fs::read_to_string(dir.join("address")) else {
        return;
    };
    let Some(path) = address.trim().strip_prefix("unix://") else {
        return;
    };
    // An abstract socket ("@..." or a leading NUL) has no file.
    if path.starts_with('/')
        && std::fs::symlink_metadata(path)
            .is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()))
        && let Err(e) = std::fs::remove_file(path)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(socket = path, error = %e, "removing the shim's socket");
    }
}

//! systemd's service protocol for `Type=notify` (sd_notify(3)): READY=1 once the
//! CRI socket answers a call, STOPPING=1 when a shutdown starts. Without
//! `NOTIFY_SOCKET` (not started by systemd) nothing is sent and nothing probed.
//!
//! The variable stays in crustd's environment (sd-notify reads it at each
//! notification; removing it once threads run is not sound), so whatever crustd
//! spawns that outlives it — the pod shims, and the runc they run, which would
//! take `NOTIFY_SOCKET` as the container's — is started without it (sandbox's
//! `shim/mod.rs`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use k8s_cri::v1::VersionRequest;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use sd_notify::NotifyState;
use tonic::transport::{Endpoint, Uri};

/// Whether a service manager is listening for notifications.
pub fn enabled() -> bool {
    std::env::var_os("NOTIFY_SOCKET").is_some()
}

/// Waits until a Version call on `socket` is answered, then tells systemd the
/// service is up. Returns at once when not under systemd.
pub async fn ready_when_answering(socket: PathBuf) {
    if !enabled() {
        return;
    }
    let mut tries = 0u32;
    loop {
        match tokio::time::timeout(Duration::from_secs(5), version(&socket)).await {
            Ok(Ok(())) => break,
            Ok(Err(e)) => tracing::debug!("readiness probe: {e}"),
            Err(_) => tracing::debug!("readiness probe: no answer within 5s"),
        }
        tries += 1;
        if tries.is_multiple_of(100) {
            tracing::warn!(
                tries,
                "the CRI socket does not answer yet; systemd is not told READY"
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = format!("serving CRI on {}", socket.display());
    send(&[NotifyState::Ready, NotifyState::Status(&status)]);
    tracing::debug!("told systemd READY=1");
}

/// Tells systemd the service is stopping (it then waits for the exit instead of
/// reading the silence as a failure).
pub fn stopping() {
    if enabled() {
        send(&[
            NotifyState::Stopping,
            NotifyState::Status("finishing in-flight calls"),
        ]);
    }
}

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!("notifying systemd: {e}");
    }
}

/// One CRI Version call over the unix socket, as kubelet's first call is.
async fn version(socket: &Path) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let socket = socket.to_path_buf();
    // The URI is required by tonic and ignored by the connector.
    let channel = Endpoint::try_from("http://[::]:0")?
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(
                    tokio::net::UnixStream::connect(socket).await?,
                ))
            }
        }))
        .await?;
    RuntimeServiceClient::new(channel)
        .version(VersionRequest::default())
        .await?;
    Ok(())
}

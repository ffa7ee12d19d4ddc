//! Streaming RPCs: Exec, Attach, PortForward return URLs on the streaming server.

use k8s_cri::v1::{
    AttachRequest, AttachResponse, ExecRequest, ExecResponse, PortForwardRequest,
    PortForwardResponse,
};

use crust_streaming::{ExecOptions, Request};

use crate::Cri;
use crate::error::{CriError, CriResult};

/// Exec: the request is checked (`validate::streaming`: a command, one of
/// stdin/stdout/stderr, no stderr with a TTY), the container must be running, and a
/// single-use URL on the streaming server comes back.
pub async fn exec(cri: &Cri, req: ExecRequest) -> CriResult<ExecResponse> {
    crate::validate::streaming::exec(&req)?;
    let container_id =
        crust_sandbox::container::exec_stream::require_running(&cri.containers, &req.container_id)
            .await?;
    let url = cri
        .streaming
        .url(Request::Exec {
            container_id,
            cmd: req.cmd,
            opts: ExecOptions {
                stdin: req.stdin,
                stdout: req.stdout,
                stderr: req.stderr,
                tty: req.tty,
            },
        })
        .map_err(|e| CriError::Internal(e.to_string()))?;
    Ok(ExecResponse { url })
}

/// Attach: the request is checked (`validate::streaming`), the container must be
/// running, have a CRI log for its output and, for stdin, have been created with
/// stdin. A single-use URL comes back. The streams are the ones the client asked
/// for (it opens them); what feeds them follows the container (with a TTY all of its
/// output is stdout).
pub async fn attach(cri: &Cri, req: AttachRequest) -> CriResult<AttachResponse> {
    crate::validate::streaming::attach(&req)?;
    let t = cri.containers.attach_target(&req.container_id).await?;
    if req.stdin && t.stdin_fifo.is_none() {
        return Err(CriError::InvalidArgument(format!(
            "stdin: container {} was not created with stdin",
            t.id
        )));
    }
    if (req.stdout || req.stderr) && t.log_path.is_none() {
        return Err(crust_sandbox::container::attach::no_log(&t.id).into());
    }
    let url = cri
        .streaming
        .url(Request::Attach {
            container_id: t.id.clone(),
            opts: ExecOptions {
                stdin: req.stdin,
                stdout: req.stdout,
                stderr: req.stderr,
                tty: req.tty,
            },
        })
        .map_err(|e| CriError::Internal(e.to_string()))?;
    Ok(AttachResponse { url })
}

/// PortForward: the request is checked (`validate::streaming`), the pod must be
/// READY, and a single-use URL on the streaming server comes back. The ports the
/// client forwards are named on its streams, not here.
pub async fn port_forward(cri: &Cri, req: PortForwardRequest) -> CriResult<PortForwardResponse> {
    crate::validate::streaming::port_forward(&req)?;
    let pod = cri.pods.get(&req.pod_sandbox_id)?;
    if pod.state != crust_sandbox::pod::PodState::Ready {
        return Err(crust_sandbox::Error::FailedPrecondition(format!(
            "pod sandbox {} is not ready",
            pod.id
        ))
        .into());
    }
    let url = cri
        .streaming
        .url(Request::PortForward { pod_id: pod.id })
        .map_err(|e| CriError::Internal(e.to_string()))?;
    Ok(PortForwardResponse { url })
}

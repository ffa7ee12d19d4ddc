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

/// Attach: the request is checked, the streaming server is not built yet.
pub async fn attach(_cri: &Cri, req: AttachRequest) -> CriResult<AttachResponse> {
    crate::validate::streaming::attach(&req)?;
    Err(CriError::Unimplemented("Attach"))
}

/// PortForward: the request is checked, the streaming server is not built yet.
pub async fn port_forward(_cri: &Cri, req: PortForwardRequest) -> CriResult<PortForwardResponse> {
    crate::validate::streaming::port_forward(&req)?;
    Err(CriError::Unimplemented("PortForward"))
}

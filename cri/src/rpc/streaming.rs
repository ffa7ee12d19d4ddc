//! Streaming RPCs: Exec, Attach, PortForward return URLs on the streaming server.

use k8s_cri::v1::{
    AttachRequest, AttachResponse, ExecRequest, ExecResponse, PortForwardRequest,
    PortForwardResponse,
};

use crust_streaming::{ExecOptions, Request};

use crate::Cri;
use crate::error::{CriError, CriResult};

/// Exec: checks the request (a running container, a command, at least one of
/// stdin/stdout/stderr, no stderr with a TTY: the terminal merges it into stdout)
/// and returns a single-use URL on the streaming server.
pub async fn exec(cri: &Cri, req: ExecRequest) -> CriResult<ExecResponse> {
    if req.container_id.is_empty() {
        return Err(CriError::InvalidArgument(
            "Exec needs a container id".into(),
        ));
    }
    if req.cmd.is_empty() {
        return Err(CriError::InvalidArgument("Exec needs a command".into()));
    }
    if !(req.stdin || req.stdout || req.stderr) {
        return Err(CriError::InvalidArgument(
            "Exec needs one of stdin, stdout and stderr".into(),
        ));
    }
    if req.tty && req.stderr {
        return Err(CriError::InvalidArgument(
            "Exec with a TTY cannot have a separate stderr".into(),
        ));
    }
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

/// Attach: not built yet.
pub async fn attach(_cri: &Cri, _req: AttachRequest) -> CriResult<AttachResponse> {
    Err(CriError::Unimplemented("Attach"))
}

/// PortForward: not built yet.
pub async fn port_forward(_cri: &Cri, _req: PortForwardRequest) -> CriResult<PortForwardResponse> {
    Err(CriError::Unimplemented("PortForward"))
}

//! Streaming RPCs: Exec, Attach, PortForward return URLs on the streaming server.

use k8s_cri::v1::{
    AttachRequest, AttachResponse, ExecRequest, ExecResponse, PortForwardRequest,
    PortForwardResponse,
};

use crate::Cri;
use crate::error::{CriError, CriResult};

/// Exec: not built yet.
pub async fn exec(_cri: &Cri, _req: ExecRequest) -> CriResult<ExecResponse> {
    Err(CriError::Unimplemented("Exec"))
}

/// Attach: not built yet.
pub async fn attach(_cri: &Cri, _req: AttachRequest) -> CriResult<AttachResponse> {
    Err(CriError::Unimplemented("Attach"))
}

/// PortForward: not built yet.
pub async fn port_forward(_cri: &Cri, _req: PortForwardRequest) -> CriResult<PortForwardResponse> {
    Err(CriError::Unimplemented("PortForward"))
}

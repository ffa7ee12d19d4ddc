//! Streaming RPCs: Exec, Attach, PortForward return URLs on the streaming server.

use k8s_cri::v1::{
    AttachRequest, AttachResponse, ExecRequest, ExecResponse, PortForwardRequest,
    PortForwardResponse,
};

use crate::Cri;
use crate::error::{CriError, CriResult};

/// Exec: the request is checked, the streaming server is not built yet.
pub async fn exec(_cri: &Cri, req: ExecRequest) -> CriResult<ExecResponse> {
    crate::validate::streaming::exec(&req)?;
    Err(CriError::Unimplemented("Exec"))
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

//! Pod sandbox RPCs.

use k8s_cri::v1::{
    ListPodSandboxRequest, ListPodSandboxResponse, PodSandboxStatusRequest,
    PodSandboxStatusResponse, RemovePodSandboxRequest, RemovePodSandboxResponse,
    RunPodSandboxRequest, RunPodSandboxResponse, StopPodSandboxRequest, StopPodSandboxResponse,
};

use crate::Cri;
use crate::error::{CriError, CriResult};

/// RunPodSandbox: not built yet.
pub async fn run_pod_sandbox(
    _cri: &Cri,
    _req: RunPodSandboxRequest,
) -> CriResult<RunPodSandboxResponse> {
    Err(CriError::Unimplemented("RunPodSandbox"))
}

/// StopPodSandbox: not built yet.
pub async fn stop_pod_sandbox(
    _cri: &Cri,
    _req: StopPodSandboxRequest,
) -> CriResult<StopPodSandboxResponse> {
    Err(CriError::Unimplemented("StopPodSandbox"))
}

/// RemovePodSandbox: not built yet.
pub async fn remove_pod_sandbox(
    _cri: &Cri,
    _req: RemovePodSandboxRequest,
) -> CriResult<RemovePodSandboxResponse> {
    Err(CriError::Unimplemented("RemovePodSandbox"))
}

/// PodSandboxStatus: not built yet.
pub async fn pod_sandbox_status(
    _cri: &Cri,
    _req: PodSandboxStatusRequest,
) -> CriResult<PodSandboxStatusResponse> {
    Err(CriError::Unimplemented("PodSandboxStatus"))
}

/// ListPodSandbox: not built yet.
pub async fn list_pod_sandbox(
    _cri: &Cri,
    _req: ListPodSandboxRequest,
) -> CriResult<ListPodSandboxResponse> {
    Err(CriError::Unimplemented("ListPodSandbox"))
}

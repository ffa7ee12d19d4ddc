//! Stats and metrics RPCs.

use k8s_cri::v1::{
    ContainerStatsRequest, ContainerStatsResponse, ListContainerStatsRequest,
    ListContainerStatsResponse, ListMetricDescriptorsRequest, ListMetricDescriptorsResponse,
    ListPodSandboxMetricsRequest, ListPodSandboxMetricsResponse, ListPodSandboxStatsRequest,
    ListPodSandboxStatsResponse, PodSandboxStatsRequest, PodSandboxStatsResponse,
};

use crate::Cri;
use crate::error::{CriError, CriResult};

/// ContainerStats: not built yet.
pub async fn container_stats(
    _cri: &Cri,
    _req: ContainerStatsRequest,
) -> CriResult<ContainerStatsResponse> {
    Err(CriError::Unimplemented("ContainerStats"))
}

/// ListContainerStats: not built yet.
pub async fn list_container_stats(
    _cri: &Cri,
    _req: ListContainerStatsRequest,
) -> CriResult<ListContainerStatsResponse> {
    Err(CriError::Unimplemented("ListContainerStats"))
}

/// PodSandboxStats: not built yet.
pub async fn pod_sandbox_stats(
    _cri: &Cri,
    _req: PodSandboxStatsRequest,
) -> CriResult<PodSandboxStatsResponse> {
    Err(CriError::Unimplemented("PodSandboxStats"))
}

/// ListPodSandboxStats: not built yet.
pub async fn list_pod_sandbox_stats(
    _cri: &Cri,
    _req: ListPodSandboxStatsRequest,
) -> CriResult<ListPodSandboxStatsResponse> {
    Err(CriError::Unimplemented("ListPodSandboxStats"))
}

/// ListMetricDescriptors: not built yet.
pub async fn list_metric_descriptors(
    _cri: &Cri,
    _req: ListMetricDescriptorsRequest,
) -> CriResult<ListMetricDescriptorsResponse> {
    Err(CriError::Unimplemented("ListMetricDescriptors"))
}

/// ListPodSandboxMetrics: not built yet.
pub async fn list_pod_sandbox_metrics(
    _cri: &Cri,
    _req: ListPodSandboxMetricsRequest,
) -> CriResult<ListPodSandboxMetricsResponse> {
    Err(CriError::Unimplemented("ListPodSandboxMetrics"))
}

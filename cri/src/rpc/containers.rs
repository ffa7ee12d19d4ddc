//! Container RPCs.

use k8s_cri::v1::{
    CheckpointContainerRequest, CheckpointContainerResponse, ContainerStatusRequest,
    ContainerStatusResponse, CreateContainerRequest, CreateContainerResponse, ExecSyncRequest,
    ExecSyncResponse, GetEventsRequest, ListContainersRequest, ListContainersResponse,
    RemoveContainerRequest, RemoveContainerResponse, ReopenContainerLogRequest,
    ReopenContainerLogResponse, StartContainerRequest, StartContainerResponse,
    StopContainerRequest, StopContainerResponse, UpdateContainerResourcesRequest,
    UpdateContainerResourcesResponse,
};

use crate::Cri;
use crate::EventStream;
use crate::error::{CriError, CriResult};

/// CreateContainer: not built yet.
pub async fn create_container(
    _cri: &Cri,
    _req: CreateContainerRequest,
) -> CriResult<CreateContainerResponse> {
    Err(CriError::Unimplemented("CreateContainer"))
}

/// StartContainer: not built yet.
pub async fn start_container(
    _cri: &Cri,
    _req: StartContainerRequest,
) -> CriResult<StartContainerResponse> {
    Err(CriError::Unimplemented("StartContainer"))
}

/// StopContainer: not built yet.
pub async fn stop_container(
    _cri: &Cri,
    _req: StopContainerRequest,
) -> CriResult<StopContainerResponse> {
    Err(CriError::Unimplemented("StopContainer"))
}

/// RemoveContainer: not built yet.
pub async fn remove_container(
    _cri: &Cri,
    _req: RemoveContainerRequest,
) -> CriResult<RemoveContainerResponse> {
    Err(CriError::Unimplemented("RemoveContainer"))
}

/// ListContainers: not built yet.
pub async fn list_containers(
    _cri: &Cri,
    _req: ListContainersRequest,
) -> CriResult<ListContainersResponse> {
    Err(CriError::Unimplemented("ListContainers"))
}

/// ContainerStatus: not built yet.
pub async fn container_status(
    _cri: &Cri,
    _req: ContainerStatusRequest,
) -> CriResult<ContainerStatusResponse> {
    Err(CriError::Unimplemented("ContainerStatus"))
}

/// UpdateContainerResources: not built yet.
pub async fn update_container_resources(
    _cri: &Cri,
    _req: UpdateContainerResourcesRequest,
) -> CriResult<UpdateContainerResourcesResponse> {
    Err(CriError::Unimplemented("UpdateContainerResources"))
}

/// ReopenContainerLog: not built yet.
pub async fn reopen_container_log(
    _cri: &Cri,
    _req: ReopenContainerLogRequest,
) -> CriResult<ReopenContainerLogResponse> {
    Err(CriError::Unimplemented("ReopenContainerLog"))
}

/// ExecSync: not built yet.
pub async fn exec_sync(_cri: &Cri, _req: ExecSyncRequest) -> CriResult<ExecSyncResponse> {
    Err(CriError::Unimplemented("ExecSync"))
}

/// CheckpointContainer: not built yet.
pub async fn checkpoint_container(
    _cri: &Cri,
    _req: CheckpointContainerRequest,
) -> CriResult<CheckpointContainerResponse> {
    Err(CriError::Unimplemented("CheckpointContainer"))
}

/// GetContainerEvents: not built yet.
pub async fn get_container_events(_cri: &Cri, _req: GetEventsRequest) -> CriResult<EventStream> {
    Err(CriError::Unimplemented("GetContainerEvents"))
}

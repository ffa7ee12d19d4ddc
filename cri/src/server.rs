//! The tonic services: each method hands its request to one function in `rpc/`.

use k8s_cri::v1::image_service_server::ImageService;
use k8s_cri::v1::runtime_service_server::RuntimeService;
use k8s_cri::v1::*;
use tonic::{Request, Response, Status};

use std::future::Future;
use std::sync::Arc;

use crate::error::{CriError, CriResult};
use crate::{Cri, EventStream, rpc};

/// Runs an RPC that changes state in a task of its own, so that it runs to its end
/// even when its call is dropped (the client's deadline passed — the instrument
/// layer answers DeadlineExceeded then — or the client went away): a stop or removal
/// half done would leave a pod's network half torn down, a container started in its
/// shim but recorded CREATED. kubelet retries such a call, and it is idempotent.
/// (RunPodSandbox and CreateContainer do the same inside `crust-sandbox`, where a
/// retry also waits for the running create; PullImage and ExecSync are cancelled by
/// the drop instead: see cri/README.md, "Deadlines".)
async fn detached<Req, T, F, Fut>(cri: &Arc<Cri>, rpc: F, req: Req) -> Result<T, Status>
where
    F: FnOnce(Arc<Cri>, Req) -> Fut,
    Fut: Future<Output = CriResult<T>> + Send + 'static,
    T: Send + 'static,
{
    tokio::spawn(rpc(cri.clone(), req))
        .await
        .map_err(|e| CriError::Internal(format!("{e}")))?
        .map_err(Status::from)
}

/// The CRI server; cheap to clone, all state lives in the shared [`Cri`].
#[derive(Clone)]
pub struct CriServer(pub Arc<Cri>);

#[tonic::async_trait]
impl RuntimeService for CriServer {
    async fn run_pod_sandbox(
        &self,
        req: Request<RunPodSandboxRequest>,
    ) -> Result<Response<RunPodSandboxResponse>, Status> {
        Ok(Response::new(
            rpc::pods::run_pod_sandbox(&self.0, req.into_inner()).await?,
        ))
    }

    async fn stop_pod_sandbox(
        &self,
        req: Request<StopPodSandboxRequest>,
    ) -> Result<Response<StopPodSandboxResponse>, Status> {
        Ok(Response::new(
            detached(
                &self.0,
                |cri, req| async move { rpc::pods::stop_pod_sandbox(&cri, req).await },
                req.into_inner(),
            )
            .await?,
        ))
    }

    async fn remove_pod_sandbox(
        &self,
        req: Request<RemovePodSandboxRequest>,
    ) -> Result<Response<RemovePodSandboxResponse>, Status> {
        Ok(Response::new(
            detached(
                &self.0,
                |cri, req| async move { rpc::pods::remove_pod_sandbox(&cri, req).await },
                req.into_inner(),
            )
            .await?,
        ))
    }

    async fn pod_sandbox_status(
        &self,
        req: Request<PodSandboxStatusRequest>,
    ) -> Result<Response<PodSandboxStatusResponse>, Status> {
        Ok(Response::new(
            rpc::pods::pod_sandbox_status(&self.0, req.into_inner()).await?,
        ))
    }

    async fn list_pod_sandbox(
        &self,
        req: Request<ListPodSandboxRequest>,
    ) -> Result<Response<ListPodSandboxResponse>, Status> {
        Ok(Response::new(
            rpc::pods::list_pod_sandbox(&self.0, req.into_inner()).await?,
        ))
    }

    async fn create_container(
        &self,
        req: Request<CreateContainerRequest>,
    ) -> Result<Response<CreateContainerResponse>, Status> {
        Ok(Response::new(
            rpc::containers::create_container(&self.0, req.into_inner()).await?,
        ))
    }

    async fn start_container(
        &self,
        req: Request<StartContainerRequest>,
    ) -> Result<Response<StartContainerResponse>, Status> {
        Ok(Response::new(
            detached(
                &self.0,
                |cri, req| async move { rpc::containers::start_container(&cri, req).await },
                req.into_inner(),
            )
            .await?,
        ))
    }

    async fn stop_container(
        &self,
        req: Request<StopContainerRequest>,
    ) -> Result<Response<StopContainerResponse>, Status> {
        Ok(Response::new(
            detached(
                &self.0,
                |cri, req| async move { rpc::containers::stop_container(&cri, req).await },
                req.into_inner(),
            )
            .await?,
        ))
    }

    async fn remove_container(
        &self,
        req: Request<RemoveContainerRequest>,
    ) -> Result<Response<RemoveContainerResponse>, Status> {
        Ok(Response::new(
            detached(
                &self.0,
                |cri, req| async move { rpc::containers::remove_container(&cri, req).await },
                req.into_inner(),
            )
            .await?,
        ))
    }

    async fn list_containers(
        &self,
        req: Request<ListContainersRequest>,
    ) -> Result<Response<ListContainersResponse>, Status> {
        Ok(Response::new(
            rpc::containers::list_containers(&self.0, req.into_inner()).await?,
        ))
    }

    async fn container_status(
        &self,
        req: Request<ContainerStatusRequest>,
    ) -> Result<Response<ContainerStatusResponse>, Status> {
        Ok(Response::new(
            rpc::containers::container_status(&self.0, req.into_inner()).await?,
        ))
    }

    async fn update_container_resources(
        &self,
        req: Request<UpdateContainerResourcesRequest>,
    ) -> Result<Response<UpdateContainerResourcesResponse>, Status> {
        Ok(
            Response::new(
                detached(
                    &self.0,
                    |cri, req| async move {
                        rpc::containers::update_container_resources(&cri, req).await
                    },
                    req.into_inner(),
                )
                .await?,
            ),
        )
    }

    async fn reopen_container_log(
        &self,
        req: Request<ReopenContainerLogRequest>,
    ) -> Result<Response<ReopenContainerLogResponse>, Status> {
        Ok(Response::new(
            detached(
                &self.0,
                |cri, req| async move { rpc::containers::reopen_container_log(&cri, req).await },
                req.into_inner(),
            )
            .await?,
        ))
    }

    async fn exec_sync(
        &self,
        req: Request<ExecSyncRequest>,
    ) -> Result<Response<ExecSyncResponse>, Status> {
        Ok(Response::new(
            rpc::containers::exec_sync(&self.0, req.into_inner()).await?,
        ))
    }

    async fn exec(&self, req: Request<ExecRequest>) -> Result<Response<ExecResponse>, Status> {
        Ok(Response::new(
            rpc::streaming::exec(&self.0, req.into_inner()).await?,
        ))
    }

    async fn attach(
        &self,
        req: Request<AttachRequest>,
    ) -> Result<Response<AttachResponse>, Status> {
        Ok(Response::new(
            rpc::streaming::attach(&self.0, req.into_inner()).await?,
        ))
    }

    async fn port_forward(
        &self,
        req: Request<PortForwardRequest>,
    ) -> Result<Response<PortForwardResponse>, Status> {
        Ok(Response::new(
            rpc::streaming::port_forward(&self.0, req.into_inner()).await?,
        ))
    }

    async fn container_stats(
        &self,
        req: Request<ContainerStatsRequest>,
    ) -> Result<Response<ContainerStatsResponse>, Status> {
        Ok(Response::new(
            rpc::stats::container_stats(&self.0, req.into_inner()).await?,
        ))
    }

    async fn list_container_stats(
        &self,
        req: Request<ListContainerStatsRequest>,
    ) -> Result<Response<ListContainerStatsResponse>, Status> {
        Ok(Response::new(
            rpc::stats::list_container_stats(&self.0, req.into_inner()).await?,
        ))
    }

    async fn pod_sandbox_stats(
        &self,
        req: Request<PodSandboxStatsRequest>,
    ) -> Result<Response<PodSandboxStatsResponse>, Status> {
        Ok(Response::new(
            rpc::stats::pod_sandbox_stats(&self.0, req.into_inner()).await?,
        ))
    }

    async fn list_pod_sandbox_stats(
        &self,
        req: Request<ListPodSandboxStatsRequest>,
    ) -> Result<Response<ListPodSandboxStatsResponse>, Status> {
        Ok(Response::new(
            rpc::stats::list_pod_sandbox_stats(&self.0, req.into_inner()).await?,
        ))
    }

    async fn checkpoint_container(
        &self,
        req: Request<CheckpointContainerRequest>,
    ) -> Result<Response<CheckpointContainerResponse>, Status> {
        Ok(Response::new(
            rpc::containers::checkpoint_container(&self.0, req.into_inner()).await?,
        ))
    }

    type GetContainerEventsStream = EventStream;

    async fn get_container_events(
        &self,
        req: Request<GetEventsRequest>,
    ) -> Result<Response<EventStream>, Status> {
        Ok(Response::new(
            rpc::containers::get_container_events(self.0.clone(), req.into_inner()).await?,
        ))
    }

    async fn list_metric_descriptors(
        &self,
        req: Request<ListMetricDescriptorsRequest>,
    ) -> Result<Response<ListMetricDescriptorsResponse>, Status> {
        Ok(Response::new(
            rpc::metrics::list_metric_descriptors(&self.0, req.into_inner()).await?,
        ))
    }

    async fn list_pod_sandbox_metrics(
        &self,
        req: Request<ListPodSandboxMetricsRequest>,
    ) -> Result<Response<ListPodSandboxMetricsResponse>, Status> {
        Ok(Response::new(
            rpc::metrics::list_pod_sandbox_metrics(&self.0, req.into_inner()).await?,
        ))
    }

    async fn version(
        &self,
        req: Request<VersionRequest>,
    ) -> Result<Response<VersionResponse>, Status> {
        Ok(Response::new(
            rpc::runtime::version(&self.0, req.into_inner()).await?,
        ))
    }

    async fn status(
        &self,
        req: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        Ok(Response::new(
            rpc::runtime::status(&self.0, req.into_inner()).await?,
        ))
    }

    async fn runtime_config(
        &self,
        req: Request<RuntimeConfigRequest>,
    ) -> Result<Response<RuntimeConfigResponse>, Status> {
        Ok(Response::new(
            rpc::runtime::runtime_config(&self.0, req.into_inner()).await?,
        ))
    }

    async fn update_runtime_config(
        &self,
        req: Request<UpdateRuntimeConfigRequest>,
    ) -> Result<Response<UpdateRuntimeConfigResponse>, Status> {
        Ok(Response::new(
            detached(
                &self.0,
                |cri, req| async move { rpc::runtime::update_runtime_config(&cri, req).await },
                req.into_inner(),
            )
            .await?,
        ))
    }
}

#[tonic::async_trait]
impl ImageService for CriServer {
    async fn list_images(
        &self,
        req: Request<ListImagesRequest>,
    ) -> Result<Response<ListImagesResponse>, Status> {
        Ok(Response::new(
            rpc::images::list_images(&self.0, req.into_inner()).await?,
        ))
    }

    async fn image_status(
        &self,
        req: Request<ImageStatusRequest>,
    ) -> Result<Response<ImageStatusResponse>, Status> {
        Ok(Response::new(
            rpc::images::image_status(&self.0, req.into_inner()).await?,
        ))
    }

    async fn pull_image(
        &self,
        req: Request<PullImageRequest>,
    ) -> Result<Response<PullImageResponse>, Status> {
        Ok(Response::new(
            rpc::images::pull_image(&self.0, req.into_inner()).await?,
        ))
    }

    async fn remove_image(
        &self,
        req: Request<RemoveImageRequest>,
    ) -> Result<Response<RemoveImageResponse>, Status> {
        Ok(Response::new(
            detached(
                &self.0,
                |cri, req| async move { rpc::images::remove_image(&cri, req).await },
                req.into_inner(),
            )
            .await?,
        ))
    }

    async fn image_fs_info(
        &self,
        req: Request<ImageFsInfoRequest>,
    ) -> Result<Response<ImageFsInfoResponse>, Status> {
        Ok(Response::new(
            rpc::images::image_fs_info(&self.0, req.into_inner()).await?,
        ))
    }
}

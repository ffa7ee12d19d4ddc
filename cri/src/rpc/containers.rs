//! Container RPCs: CRI messages to and from `crust_sandbox::container::Containers`.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crust_sandbox::container::checkpoint_restore::CheckpointArchive;
use crust_sandbox::container::{
    ContainerEventKind, ContainerFilter, ContainerRecord, ContainerState, ImageInfo, RunAs,
};
use k8s_cri::v1 as cri;
use k8s_cri::v1::{
    CheckpointContainerRequest, CheckpointContainerResponse, ContainerStatusRequest,
    ContainerStatusResponse, CreateContainerRequest, CreateContainerResponse, ExecSyncRequest,
    ExecSyncResponse, GetEventsRequest, ListContainersRequest, ListContainersResponse,
    RemoveContainerRequest, RemoveContainerResponse, ReopenContainerLogRequest,
    ReopenContainerLogResponse, StartContainerRequest, StartContainerResponse,
    StopContainerRequest, StopContainerResponse, UpdateContainerResourcesRequest,
    UpdateContainerResourcesResponse,
};
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;

use crate::Cri;
use crate::EventStream;
use crate::error::{CriError, CriResult};
use crate::validate;

fn require_id<'a>(id: &'a str, rpc: &str) -> CriResult<&'a str> {
    if id.is_empty() {
        return Err(CriError::InvalidArgument(format!(
            "{rpc} needs a container id"
        )));
    }
    Ok(id)
}

fn to_cri_state(s: ContainerState) -> cri::ContainerState {
    match s {
        ContainerState::Created => cri::ContainerState::ContainerCreated,
        ContainerState::Running => cri::ContainerState::ContainerRunning,
        ContainerState::Exited => cri::ContainerState::ContainerExited,
        ContainerState::Unknown => cri::ContainerState::ContainerUnknown,
    }
}

fn from_cri_state(s: i32) -> Option<ContainerState> {
    match cri::ContainerState::try_from(s).ok()? {
        cri::ContainerState::ContainerCreated => Some(ContainerState::Created),
        cri::ContainerState::ContainerRunning => Some(ContainerState::Running),
        cri::ContainerState::ContainerExited => Some(ContainerState::Exited),
        cri::ContainerState::ContainerUnknown => Some(ContainerState::Unknown),
    }
}

fn image_spec(r: &ContainerRecord) -> cri::ImageSpec {
    cri::ImageSpec {
        image: r.image.clone(),
        annotations: r
            .config
            .image
            .as_ref()
            .map(|i| i.annotations.clone())
            .unwrap_or_default(),
        ..Default::default()
    }
}

/// CreateContainer: the image must already be pulled (kubelet pulls first).
pub async fn create_container(
    cri: &Cri,
    req: CreateContainerRequest,
) -> CriResult<CreateContainerResponse> {
    validate::container::create_container(&req)?;
    let mut config = req.config.unwrap_or_default();
    let pod = cri.pods.get(&req.pod_sandbox_id)?;
    // As containerd, the pod's privileged flag as kubelet restates it in the request.
    let pod_privileged = match &req.sandbox_config {
        Some(c) => c
            .linux
            .as_ref()
            .and_then(|l| l.security_context.as_ref())
            .is_some_and(|s| s.privileged),
        None => pod.spec.privileged,
    };
    validate::container::in_pod(&config, pod_privileged, &pod.spec.log_directory)?;
    if let Some(m) = config.mounts.iter().find(|m| m.recursive_read_only) {
        let handler = cri.config.sandbox.handler(&pod.runtime_handler);
        if !handler.is_some_and(|(_, h)| crust_sandbox::features::recursive_read_only(h)) {
            return Err(CriError::InvalidArgument(format!(
                "mount {:?}: recursive read-only mounts are not supported by runtime handler {:?} \
                 (its OCI runtime or the kernel lacks them)",
                m.container_path, pod.runtime_handler
            )));
        }
    }
    let mut image_name = config
        .image
        .as_ref()
        .map(|i| i.image.trim().to_string())
        .unwrap_or_default();
    // An image that is a checkpoint archive: a container of the image it
    // was checkpointed from, restored from it when started (as CRI-O).
    let restore = CheckpointArchive::open(&image_name)?;
    if let Some(a) = &restore {
        image_name = a.base_image().to_string();
        if config.command.is_empty() && config.args.is_empty() {
            config.command = a.args().to_vec();
        }
    }
    let image = cri.images.status(&image_name)?.ok_or_else(|| {
        CriError::NotFound(format!("image {image_name:?} not found: pull it first"))
    })?;
    // The image's USER, ENV, WORKDIR and StopSignal matter: an unreadable
    // config is an error, never a container silently run as root.
    let config_bytes = cri.images.config_json(&image.id)?;
    let image_config = serde_json::from_slice::<oci_spec::image::ImageConfiguration>(&config_bytes)
        .map_err(|e| {
            CriError::Internal(format!("image {} has an unreadable config: {e}", image.id))
        })?
        .config()
        .clone();
    let id = cri
        .containers
        .create(
            &req.pod_sandbox_id,
            config,
            ImageInfo {
                name: image_name,
                id: image.id,
                config: image_config,
            },
        )
        .await?;
    if let Some(a) = restore
        && let Err(e) = cri.containers.prepare_restore(&id, a).await
    {
        let _ = cri.containers.remove(&id).await;
        return Err(e.into());
    }
    Ok(CreateContainerResponse { container_id: id })
}

pub async fn start_container(
    cri: &Cri,
    req: StartContainerRequest,
) -> CriResult<StartContainerResponse> {
    cri.containers
        .start(require_id(&req.container_id, "StartContainer")?)
        .await?;
    Ok(StartContainerResponse {})
}

/// StopContainer: stop signal, `timeout` seconds, SIGKILL. Idempotent.
pub async fn stop_container(
    cri: &Cri,
    req: StopContainerRequest,
) -> CriResult<StopContainerResponse> {
    let timeout = Duration::from_secs(req.timeout.max(0) as u64);
    cri.containers
        .stop(require_id(&req.container_id, "StopContainer")?, timeout)
        .await?;
    Ok(StopContainerResponse {})
}

/// RemoveContainer: any state; idempotent.
pub async fn remove_container(
    cri: &Cri,
    req: RemoveContainerRequest,
) -> CriResult<RemoveContainerResponse> {
    cri.containers
        .remove(require_id(&req.container_id, "RemoveContainer")?)
        .await?;
    Ok(RemoveContainerResponse {})
}

pub async fn list_containers(
    cri: &Cri,
    req: ListContainersRequest,
) -> CriResult<ListContainersResponse> {
    let f = req.filter.unwrap_or_default();
    let filter = ContainerFilter {
        id: f.id,
        pod_id: f.pod_sandbox_id,
        state: match f.state {
            Some(s) => match from_cri_state(s.state) {
                Some(s) => Some(s),
                None => return Ok(ListContainersResponse::default()),
            },
            None => None,
        },
        labels: f.label_selector,
    };
    let containers = cri
        .containers
        .list(&filter)?
        .into_iter()
        .map(|r| cri::Container {
            id: r.id.clone(),
            pod_sandbox_id: r.pod_id.clone(),
            metadata: r.config.metadata.clone(),
            image: Some(image_spec(&r)),
            image_ref: r.image_ref.clone(),
            image_id: r.image_ref.clone(),
            state: to_cri_state(r.state) as i32,
            created_at: r.created_at_ns,
            labels: r.config.labels.clone(),
            annotations: r.config.annotations.clone(),
        })
        .collect();
    Ok(ListContainersResponse { containers })
}

pub async fn container_status(
    cri: &Cri,
    req: ContainerStatusRequest,
) -> CriResult<ContainerStatusResponse> {
    let r = cri
        .containers
        .get(require_id(&req.container_id, "ContainerStatus")?)?;
    let mut info = HashMap::new();
    if req.verbose {
        let spec = cri.containers.oci_spec(&r.id).ok();
        let details = serde_json::json!({
            "pid": r.pid,
            "sandboxID": r.pod_id,
            "bundle": r.bundle,
            "runtimeBinary": r.runtime_binary,
            "cgroupsPath": r.cgroups_path,
            "stopSignal": r.stop_signal,
            "runtimeSpec": spec,
            "config": r.config,
        });
        info.insert("info".to_string(), details.to_string());
    }
    Ok(ContainerStatusResponse {
        status: Some(status_of(&r, cri.containers.run_as(&r))),
        info,
    })
}

/// The CRI status of a container, running as `user`.
pub(crate) fn status_of(r: &ContainerRecord, user: Option<RunAs>) -> cri::ContainerStatus {
    let user = user.map(|u| cri::ContainerUser {
        linux: Some(cri::LinuxContainerUser {
            uid: i64::from(u.uid),
            gid: i64::from(u.gid),
            supplemental_groups: u.additional_gids.into_iter().map(i64::from).collect(),
        }),
    });
    cri::ContainerStatus {
        id: r.id.clone(),
        metadata: r.config.metadata.clone(),
        state: to_cri_state(r.state) as i32,
        created_at: r.created_at_ns,
        started_at: r.started_at_ns,
        finished_at: r.finished_at_ns,
        exit_code: r.exit_code,
        image: Some(image_spec(r)),
        image_ref: r.image_ref.clone(),
        image_id: r.image_ref.clone(),
        reason: r.reason.clone(),
        message: r.message.clone(),
        labels: r.config.labels.clone(),
        annotations: r.config.annotations.clone(),
        mounts: r.config.mounts.clone(),
        log_path: r
            .log_path
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
        resources: r
            .config
            .linux
            .as_ref()
            .and_then(|l| l.resources.clone())
            .map(|linux| cri::ContainerResources {
                linux: Some(linux),
                windows: None,
            }),
        user,
    }
}

pub async fn update_container_resources(
    cri: &Cri,
    req: UpdateContainerResourcesRequest,
) -> CriResult<UpdateContainerResourcesResponse> {
    let id = require_id(&req.container_id, "UpdateContainerResources")?;
    validate::resources::update_container_resources(&req)?;
    let linux = req.linux.unwrap_or_default();
    cri.containers.update_resources(id, &linux).await?;
    Ok(UpdateContainerResourcesResponse {})
}

pub async fn reopen_container_log(
    cri: &Cri,
    req: ReopenContainerLogRequest,
) -> CriResult<ReopenContainerLogResponse> {
    cri.containers
        .reopen_log(require_id(&req.container_id, "ReopenContainerLog")?)
        .await?;
    Ok(ReopenContainerLogResponse {})
}

/// ExecSync: output capped at 16 MiB per stream; a timeout kills the command
/// and answers DeadlineExceeded.
pub async fn exec_sync(cri: &Cri, req: ExecSyncRequest) -> CriResult<ExecSyncResponse> {
    let id = require_id(&req.container_id, "ExecSync")?;
    validate::streaming::exec_sync(&req)?;
    let timeout = Duration::from_secs(req.timeout.max(0) as u64);
    let out = cri.containers.exec_sync(id, req.cmd, timeout).await?;
    Ok(ExecSyncResponse {
        stdout: out.stdout,
        stderr: out.stderr,
        exit_code: out.exit_code,
    })
}

/// CheckpointContainer: the running container is dumped with CRIU (left
/// running) and written as a checkpoint archive at `location`; its CRI status
/// goes in as `status.dump`. FailedPrecondition when it does not run or CRIU
/// does not work here (with CRIU's own error), InvalidArgument for a bad
/// location, DeadlineExceeded past `timeout` seconds.
pub async fn checkpoint_container(
    cri: &Cri,
    req: CheckpointContainerRequest,
) -> CriResult<CheckpointContainerResponse> {
    validate::container::checkpoint(&req)?;
    let r = cri.containers.get(&req.container_id)?;
    let status = serde_json::to_vec_pretty(&status_of(&r, cri.containers.run_as(&r)))
        .map_err(|e| CriError::Internal(format!("container status: {e}")))?;
    let timeout = Duration::from_secs(req.timeout.max(0) as u64);
    cri.containers
        .checkpoint(&r.id, Path::new(&req.location), timeout, status)
        .await?;
    Ok(CheckpointContainerResponse {})
}

/// GetContainerEvents: every container event from now on, each with the
/// container's pod status and the statuses of the pod's containers, as
/// kubelet's evented PLEG reads them. A subscriber that falls more than the
/// backlog behind misses events (and kubelet relists).
pub async fn get_container_events(cri: Arc<Cri>, _req: GetEventsRequest) -> CriResult<EventStream> {
    let events = BroadcastStream::new(cri.containers.subscribe());
    let stream = events.filter_map(move |e| {
        let e = match e {
            Ok(e) => e,
            Err(BroadcastStreamRecvError::Lagged(n)) => {
                tracing::warn!(missed = n, "GetContainerEvents subscriber fell behind");
                return None;
            }
        };
        let kind = match e.kind {
            ContainerEventKind::Created => cri::ContainerEventType::ContainerCreatedEvent,
            ContainerEventKind::Started => cri::ContainerEventType::ContainerStartedEvent,
            ContainerEventKind::Stopped => cri::ContainerEventType::ContainerStoppedEvent,
            ContainerEventKind::Deleted => cri::ContainerEventType::ContainerDeletedEvent,
        };
        let pod_sandbox_status = cri
            .pods
            .get(&e.pod_id)
            .ok()
            .map(|p| super::pods::pod_status(&p));
        let containers_statuses = cri
            .containers
            .list(&ContainerFilter {
                pod_id: e.pod_id.clone(),
                ..Default::default()
            })
            .unwrap_or_default()
            .iter()
            .map(|r| status_of(r, cri.containers.run_as(r)))
            .collect();
        Some(Ok(cri::ContainerEventResponse {
            container_id: e.id,
            container_event_type: kind as i32,
            created_at: e.at_ns,
            pod_sandbox_status,
            containers_statuses,
        }))
    });
    Ok(Box::pin(stream))
}

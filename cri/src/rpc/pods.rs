//! Pod sandbox RPCs: CRI messages to and from `crust_sandbox::pod`.

use std::collections::{BTreeMap, HashMap};

use crust_sandbox::PodRecord;
use crust_sandbox::pod::{
    DnsConfig, NamespaceMode, NamespaceOptions, PodFilter, PodMetadata, PodResources, PodSpec,
    PodState, PortMapping, Protocol,
};
use k8s_cri::v1 as cri;
use k8s_cri::v1::{
    ListPodSandboxRequest, ListPodSandboxResponse, PodSandboxStatusRequest,
    PodSandboxStatusResponse, RemovePodSandboxRequest, RemovePodSandboxResponse,
    RunPodSandboxRequest, RunPodSandboxResponse, StopPodSandboxRequest, StopPodSandboxResponse,
};

use crate::Cri;
use crate::error::{CriError, CriResult};

pub async fn run_pod_sandbox(
    cri: &Cri,
    req: RunPodSandboxRequest,
) -> CriResult<RunPodSandboxResponse> {
    crate::validate::pod::run_pod_sandbox(&req)?;
    let config = req
        .config
        .ok_or_else(|| CriError::InvalidArgument("RunPodSandbox needs a config".into()))?;
    let spec = pod_spec(config, req.runtime_handler)?;
    let pod_sandbox_id = cri.pods.run(spec).await?;
    Ok(RunPodSandboxResponse { pod_sandbox_id })
}

pub async fn stop_pod_sandbox(
    cri: &Cri,
    req: StopPodSandboxRequest,
) -> CriResult<StopPodSandboxResponse> {
    // Every container of the pod is killed first (kubelet has already stopped
    // them gracefully when it could).
    if let Ok(pod) = cri.pods.get(&req.pod_sandbox_id) {
        for id in cri.containers.of_pod(&pod.id) {
            cri.containers.stop(&id, std::time::Duration::ZERO).await?;
        }
    }
    cri.pods.stop(&req.pod_sandbox_id).await?;
    Ok(StopPodSandboxResponse {})
}

pub async fn remove_pod_sandbox(
    cri: &Cri,
    req: RemovePodSandboxRequest,
) -> CriResult<RemovePodSandboxResponse> {
    let pod = cri.pods.get(&req.pod_sandbox_id).ok();
    if let Some(pod) = &pod {
        // Stopped first (a no-op for the pod kubelet stopped already): a
        // stopped pod takes no new container, so none made meanwhile is
        // missed by the removal below.
        stop_pod_sandbox(
            cri,
            StopPodSandboxRequest {
                pod_sandbox_id: pod.id.clone(),
            },
        )
        .await?;
        // Their rootfs, cgroups and bundles are gone when this returns.
        cri.containers.remove_all_of_pod(&pod.id).await?;
    }
    // The pod drops its connection to the shim as it removes it.
    cri.pods.remove(&req.pod_sandbox_id).await?;
    Ok(RemovePodSandboxResponse {})
}

pub async fn pod_sandbox_status(
    cri: &Cri,
    req: PodSandboxStatusRequest,
) -> CriResult<PodSandboxStatusResponse> {
    let rec = cri.pods.status(&req.pod_sandbox_id)?;
    let mut info = HashMap::new();
    if req.verbose {
        info.insert("info".to_string(), sandbox_info(cri, &rec).to_string());
    }
    Ok(PodSandboxStatusResponse {
        status: Some(pod_status(&rec)),
        info,
        containers_statuses: Vec::new(),
        timestamp: 0,
    })
}

/// The verbose `info["info"]`: the keys of containerd's (its `SandboxInfo`) that
/// apply to a pod without a pause container, read from the record alone — no CNI
/// plugin runs, no process is asked (kubelet, `crictl inspectp` and monitors poll it).
/// What stands in for the pause container: the pinned namespaces, the infra process
/// when the pod has its own PID namespace (`pid`, else 0), and the pod's shim; so
/// containerd's `image`, `snapshotKey`, `snapshotter` and `runtimeSpec` (the pause
/// container's) have no counterpart and are left out.
fn sandbox_info(cri: &Cri, rec: &PodRecord) -> serde_json::Value {
    use crust_sandbox::RuntimeKind;
    let config = cri.pods.config();
    let handler = config.handler(&rec.runtime_handler).map(|(_, h)| h);
    // The binary serving the pod, as containerd names the shim (`io.containerd.runc.v2`).
    let runtime_type = handler.map(|h| match h.kind {
        RuntimeKind::Oci => config.shim_binary.clone(),
        RuntimeKind::ShimV2 => h.path.clone(),
    });
    serde_json::json!({
        "pid": rec.namespaces.infra_pid.unwrap_or(0),
        "processStatus": match rec.state {
            PodState::Ready => "running",
            PodState::NotReady => "stopped",
        },
        // The pin is kept until RemovePodSandbox; a host-network pod has none.
        "netNamespaceClosed": rec.namespaces.net.as_ref().is_some_and(|p| !p.exists()),
        "runtimeHandler": rec.runtime_handler,
        "runtimeType": runtime_type,
        "runtimeOptions": handler.map(|h| serde_json::json!({"binaryName": h.oci_runtime()})),
        "config": rec.spec,
        "cniResult": cri.pods.cni_result(rec),
        "shimPid": rec.shim_pid,
        "namespaces": rec.namespaces,
        "cgroup": rec.cgroup,
        "podDir": rec.dir,
        "network": rec.network,
    })
}

pub async fn list_pod_sandbox(
    cri: &Cri,
    req: ListPodSandboxRequest,
) -> CriResult<ListPodSandboxResponse> {
    let filter = req.filter.map(|f| PodFilter {
        id: f.id,
        state: f.state.map(|s| state_from_cri(s.state)),
        label_selector: f.label_selector.into_iter().collect(),
    });
    let items = cri
        .pods
        .list(&filter.unwrap_or_default())
        .iter()
        .map(|r| cri::PodSandbox {
            id: r.id.clone(),
            metadata: Some(metadata_to_cri(&r.spec.metadata)),
            state: state_to_cri(r.state) as i32,
            created_at: r.created_at_ns,
            labels: to_hash(&r.spec.labels),
            annotations: to_hash(&r.spec.annotations),
            runtime_handler: r.runtime_handler.clone(),
        })
        .collect();
    Ok(ListPodSandboxResponse { items })
}

fn pod_spec(c: cri::PodSandboxConfig, runtime_handler: String) -> CriResult<PodSpec> {
    let m = c
        .metadata
        .ok_or_else(|| CriError::InvalidArgument("pod sandbox config needs metadata".into()))?;
    let linux = c.linux.unwrap_or_default();
    let sc = linux.security_context.unwrap_or_default();
    let ns = sc.namespace_options.unwrap_or_default();
    let port_mappings = c
        .port_mappings
        .into_iter()
        .map(|p| PortMapping {
            protocol: match p.protocol() {
                cri::Protocol::Tcp => Protocol::Tcp,
                cri::Protocol::Udp => Protocol::Udp,
                cri::Protocol::Sctp => Protocol::Sctp,
            },
            container_port: p.container_port,
            host_port: p.host_port,
            host_ip: p.host_ip,
        })
        .collect();
    Ok(PodSpec {
        metadata: PodMetadata {
            name: m.name,
            uid: m.uid,
            namespace: m.namespace,
            attempt: m.attempt,
        },
        hostname: c.hostname,
        log_directory: c.log_directory,
        dns: c.dns_config.map(|d| DnsConfig {
            servers: d.servers,
            searches: d.searches,
            options: d.options,
        }),
        port_mappings,
        labels: c.labels.into_iter().collect(),
        annotations: c.annotations.into_iter().collect(),
        cgroup_parent: linux.cgroup_parent,
        sysctls: linux.sysctls.into_iter().collect(),
        namespaces: NamespaceOptions {
            network: mode_from_cri(ns.network()),
            pid: mode_from_cri(ns.pid()),
            ipc: mode_from_cri(ns.ipc()),
            userns: ns
                .userns_options
                .as_ref()
                .filter(|u| u.mode == cri::NamespaceMode::Pod as i32)
                .map(|u| crust_sandbox::userns::UserNamespace::from_cri(&u.uids, &u.gids)),
            target_id: ns.target_id,
        },
        overhead: linux.overhead.map(resources),
        resources: linux.resources.map(resources),
        privileged: sc.privileged,
        runtime_handler,
    })
}

fn resources(r: cri::LinuxContainerResources) -> PodResources {
    PodResources {
        cpu_period: r.cpu_period,
        cpu_quota: r.cpu_quota,
        cpu_shares: r.cpu_shares,
        memory_limit_in_bytes: r.memory_limit_in_bytes,
        cpuset_cpus: r.cpuset_cpus,
        cpuset_mems: r.cpuset_mems,
    }
}

pub(crate) fn pod_status(r: &PodRecord) -> cri::PodSandboxStatus {
    let ns = &r.spec.namespaces;
    cri::PodSandboxStatus {
        id: r.id.clone(),
        metadata: Some(metadata_to_cri(&r.spec.metadata)),
        state: state_to_cri(r.state) as i32,
        created_at: r.created_at_ns,
        network: Some(cri::PodSandboxNetworkStatus {
            ip: r.ip().to_string(),
            additional_ips: r
                .ips
                .iter()
                .skip(1)
                .map(|ip| cri::PodIp { ip: ip.clone() })
                .collect(),
        }),
        linux: Some(cri::LinuxPodSandboxStatus {
            namespaces: Some(cri::Namespace {
                options: Some(cri::NamespaceOption {
                    network: mode_to_cri(ns.network) as i32,
                    pid: mode_to_cri(ns.pid) as i32,
                    ipc: mode_to_cri(ns.ipc) as i32,
                    target_id: ns.target_id.clone(),
                    userns_options: Some(userns_to_cri(ns.userns.as_ref())),
                }),
            }),
        }),
        labels: to_hash(&r.spec.labels),
        annotations: to_hash(&r.spec.annotations),
        runtime_handler: r.runtime_handler.clone(),
    }
}

fn metadata_to_cri(m: &PodMetadata) -> cri::PodSandboxMetadata {
    cri::PodSandboxMetadata {
        name: m.name.clone(),
        uid: m.uid.clone(),
        namespace: m.namespace.clone(),
        attempt: m.attempt,
    }
}

fn to_hash(m: &BTreeMap<String, String>) -> HashMap<String, String> {
    m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

fn mode_from_cri(m: cri::NamespaceMode) -> NamespaceMode {
    match m {
        cri::NamespaceMode::Pod => NamespaceMode::Pod,
        cri::NamespaceMode::Container => NamespaceMode::Container,
        cri::NamespaceMode::Node => NamespaceMode::Node,
        cri::NamespaceMode::Target => NamespaceMode::Target,
    }
}

fn mode_to_cri(m: NamespaceMode) -> cri::NamespaceMode {
    match m {
        NamespaceMode::Pod => cri::NamespaceMode::Pod,
        NamespaceMode::Container => cri::NamespaceMode::Container,
        NamespaceMode::Node => cri::NamespaceMode::Node,
        NamespaceMode::Target => cri::NamespaceMode::Target,
    }
}

fn state_from_cri(s: i32) -> PodState {
    match cri::PodSandboxState::try_from(s) {
        Ok(cri::PodSandboxState::SandboxReady) => PodState::Ready,
        _ => PodState::NotReady,
    }
}

fn state_to_cri(s: PodState) -> cri::PodSandboxState {
    match s {
        PodState::Ready => cri::PodSandboxState::SandboxReady,
        PodState::NotReady => cri::PodSandboxState::SandboxNotready,
    }
}

/// The pod's user namespace as PodSandboxStatus reports it: POD with its maps, else NODE.
fn userns_to_cri(u: Option<&crust_sandbox::userns::UserNamespace>) -> cri::UserNamespace {
    let back = |v: &[crust_sandbox::userns::IdMapping]| {
        v.iter()
            .map(|m| cri::IdMapping {
                host_id: m.host_id,
                container_id: m.container_id,
                length: m.length,
            })
            .collect()
    };
    match u {
        Some(u) => cri::UserNamespace {
            mode: cri::NamespaceMode::Pod as i32,
            uids: back(&u.uids),
            gids: back(&u.gids),
        },
        None => cri::UserNamespace {
            mode: cri::NamespaceMode::Node as i32,
            ..Default::default()
        },
    }
}

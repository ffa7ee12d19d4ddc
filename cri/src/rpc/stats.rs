//! Stats RPCs: container and pod usage read from their cgroups and writable layers.

use std::collections::HashMap;

use crust_sandbox::PodRecord;
use crust_sandbox::container::stats::CgroupUsage;
use crust_sandbox::container::{ContainerFilter, ContainerUsage};
use crust_sandbox::netstats::{self, DEFAULT_INTERFACE, InterfaceStats};
use crust_sandbox::pod::{PodFilter, PodState};
use k8s_cri::v1 as cri;
use k8s_cri::v1::{
    ContainerStatsRequest, ContainerStatsResponse, ListContainerStatsRequest,
    ListContainerStatsResponse, ListPodSandboxStatsRequest, ListPodSandboxStatsResponse,
    PodSandboxStatsRequest, PodSandboxStatsResponse,
};

use crate::Cri;
use crate::error::{CriError, CriResult};

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or_default()
}

fn value(v: Option<u64>) -> Option<cri::UInt64Value> {
    v.map(|value| cri::UInt64Value { value })
}

fn cpu(u: &CgroupUsage) -> cri::CpuUsage {
    cri::CpuUsage {
        timestamp: u.timestamp_ns,
        usage_core_nano_seconds: value(u.cpu_usage_ns),
        usage_nano_cores: value(u.cpu_nano_cores),
    }
}

fn memory(u: &CgroupUsage) -> cri::MemoryUsage {
    cri::MemoryUsage {
        timestamp: u.timestamp_ns,
        working_set_bytes: value(u.memory_working_set_bytes),
        available_bytes: value(u.memory_available_bytes),
        usage_bytes: value(u.memory_usage_bytes),
        rss_bytes: value(u.memory_rss_bytes),
        page_faults: value(u.page_faults),
        major_page_faults: value(u.major_page_faults),
    }
}

fn container_stats_of(cri: &Cri, u: ContainerUsage) -> cri::ContainerStats {
    let r = u.record;
    let now = u
        .cgroup
        .as_ref()
        .map(|c| c.timestamp_ns)
        .unwrap_or_default();
    cri::ContainerStats {
        attributes: Some(cri::ContainerAttributes {
            id: r.id.clone(),
            metadata: r.config.metadata.clone(),
            labels: r.config.labels.clone(),
            annotations: r.config.annotations.clone(),
        }),
        cpu: u.cgroup.as_ref().map(cpu),
        memory: u.cgroup.as_ref().map(memory),
        writable_layer: u.writable.map(|(bytes, inodes)| cri::FilesystemUsage {
            timestamp: now,
            fs_id: Some(cri::FilesystemIdentifier {
                mountpoint: cri.images.snapshotter().root().display().to_string(),
            }),
            used_bytes: Some(cri::UInt64Value { value: bytes }),
            inodes_used: Some(cri::UInt64Value { value: inodes }),
        }),
        swap: None,
    }
}

pub async fn container_stats(
    cri: &Cri,
    req: ContainerStatsRequest,
) -> CriResult<ContainerStatsResponse> {
    if req.container_id.is_empty() {
        return Err(CriError::InvalidArgument(
            "ContainerStats needs a container id".into(),
        ));
    }
    // An unknown id is NotFound here, not an empty answer.
    let id = cri.containers.get(&req.container_id)?.id;
    let usage = cri
        .containers
        .stats(&ContainerFilter {
            id,
            ..Default::default()
        })
        .await?
        .into_iter()
        .next()
        .ok_or_else(|| CriError::NotFound(format!("container {:?} not found", req.container_id)))?;
    Ok(ContainerStatsResponse {
        stats: Some(container_stats_of(cri, usage)),
    })
}

pub async fn list_container_stats(
    cri: &Cri,
    req: ListContainerStatsRequest,
) -> CriResult<ListContainerStatsResponse> {
    let f = req.filter.unwrap_or_default();
    let stats = cri
        .containers
        .stats(&ContainerFilter {
            id: f.id,
            pod_id: f.pod_sandbox_id,
            state: None,
            labels: f.label_selector,
        })
        .await?
        .into_iter()
        .map(|u| container_stats_of(cri, u))
        .collect();
    Ok(ListContainerStatsResponse { stats })
}

/// The network counters of each pod's namespace (None for a host-network pod,
/// or when its namespace cannot be read: the stats go on without them).
pub(crate) async fn pod_networks(pods: &[PodRecord]) -> Vec<Option<Vec<InterfaceStats>>> {
    let ready: Vec<_> = pods
        .iter()
        .enumerate()
        .filter(|(_, p)| p.state == PodState::Ready)
        .filter_map(|(i, p)| Some((i, p.namespaces.net.clone()?)))
        .collect();
    let read = netstats::read_namespaces(ready.iter().map(|(_, p)| p.clone()).collect()).await;
    let mut out = vec![None; pods.len()];
    for ((i, path), r) in ready.into_iter().zip(read) {
        match r {
            Ok(ifs) => out[i] = Some(ifs),
            Err(e) => tracing::debug!(netns = %path.display(), error = %e, "pod network stats"),
        }
    }
    out
}

/// CRI's NetworkUsage: the default interface (CNI's `eth0`) and the others.
fn network(timestamp: i64, ifs: Vec<InterfaceStats>) -> cri::NetworkUsage {
    let usage = |i: InterfaceStats| cri::NetworkInterfaceUsage {
        name: i.name,
        rx_bytes: value(Some(i.rx_bytes)),
        rx_errors: value(Some(i.rx_errors)),
        tx_bytes: value(Some(i.tx_bytes)),
        tx_errors: value(Some(i.tx_errors)),
    };
    let (default, others): (Vec<_>, Vec<_>) =
        ifs.into_iter().partition(|i| i.name == DEFAULT_INTERFACE);
    cri::NetworkUsage {
        timestamp,
        default_interface: default.into_iter().next().map(usage),
        interfaces: others.into_iter().map(usage).collect(),
    }
}

/// A pod's stats, with the usage of its containers and its network.
fn pod_stats_of(
    cri: &Cri,
    pod: &PodRecord,
    containers: Vec<ContainerUsage>,
    net: Option<Vec<InterfaceStats>>,
) -> cri::PodSandboxStats {
    let usage = cri.containers.pod_usage(pod);
    let containers = containers
        .into_iter()
        .map(|u| container_stats_of(cri, u))
        .collect();
    cri::PodSandboxStats {
        attributes: Some(cri::PodSandboxAttributes {
            id: pod.id.clone(),
            metadata: Some(cri::PodSandboxMetadata {
                name: pod.spec.metadata.name.clone(),
                uid: pod.spec.metadata.uid.clone(),
                namespace: pod.spec.metadata.namespace.clone(),
                attempt: pod.spec.metadata.attempt,
            }),
            labels: pod.spec.labels.clone().into_iter().collect(),
            annotations: pod.spec.annotations.clone().into_iter().collect(),
        }),
        linux: Some(cri::LinuxPodSandboxStats {
            cpu: usage.as_ref().map(cpu),
            memory: usage.as_ref().map(memory),
            network: net.map(|ifs| {
                let now = usage
                    .as_ref()
                    .map(|u| u.timestamp_ns)
                    .unwrap_or_else(now_ns);
                network(now, ifs)
            }),
            process: usage.as_ref().map(|u| cri::ProcessUsage {
                timestamp: u.timestamp_ns,
                process_count: value(u.processes),
            }),
            containers,
        }),
        windows: None,
    }
}

pub async fn pod_sandbox_stats(
    cri: &Cri,
    req: PodSandboxStatsRequest,
) -> CriResult<PodSandboxStatsResponse> {
    if req.pod_sandbox_id.is_empty() {
        return Err(CriError::InvalidArgument(
            "PodSandboxStats needs a pod sandbox id".into(),
        ));
    }
    let pod = cri.pods.get(&req.pod_sandbox_id)?;
    let containers = cri
        .containers
        .stats(&ContainerFilter {
            pod_id: pod.id.clone(),
            ..Default::default()
        })
        .await?;
    let net = pod_networks(std::slice::from_ref(&pod))
        .await
        .pop()
        .flatten();
    Ok(PodSandboxStatsResponse {
        stats: Some(pod_stats_of(cri, &pod, containers, net)),
    })
}

pub async fn list_pod_sandbox_stats(
    cri: &Cri,
    req: ListPodSandboxStatsRequest,
) -> CriResult<ListPodSandboxStatsResponse> {
    let f = req.filter.unwrap_or_default();
    let pods = cri.pods.list(&PodFilter {
        id: f.id,
        state: None,
        label_selector: f.label_selector.into_iter().collect(),
    });
    if pods.is_empty() {
        return Ok(ListPodSandboxStatsResponse { stats: Vec::new() });
    }
    // Every container's usage in one pass, then handed to its pod.
    let mut by_pod: HashMap<String, Vec<ContainerUsage>> = HashMap::new();
    let filter = match pods.as_slice() {
        [one] => ContainerFilter {
            pod_id: one.id.clone(),
            ..Default::default()
        },
        _ => ContainerFilter::default(),
    };
    for u in cri.containers.stats(&filter).await? {
        by_pod.entry(u.record.pod_id.clone()).or_default().push(u);
    }
    let nets = pod_networks(&pods).await;
    let stats = pods
        .iter()
        .zip(nets)
        .map(|(p, net)| pod_stats_of(cri, p, by_pod.remove(&p.id).unwrap_or_default(), net))
        .collect();
    Ok(ListPodSandboxStatsResponse { stats })
}

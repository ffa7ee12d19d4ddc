//! ListMetricDescriptors and ListPodSandboxMetrics: the cAdvisor metrics kubelet
//! serves on `/metrics/cadvisor` when `PodAndContainerStatsFromCRI` is on, taken
//! from the same cgroup files, writable-layer walks and network namespaces as
//! the stats RPCs.
//!
//! Names, help texts and label keys follow cAdvisor (and CRI-O): every metric has
//! `id`, `name`, `image` — kubelet adds `namespace`, `pod` and `container` itself
//! — and some one more (`cpu`, `interface`, `failure_type` + `scope`). Container
//! metrics carry the container's id, its kubelet-style name
//! (`k8s_<container>_<pod>_<namespace>_<uid>_<attempt>`) and its image; pod
//! metrics (the network, which cAdvisor reported on the pause container) the
//! pod's id, `POD` and no image. The pod cgroup's own CPU and memory are not
//! repeated at pod level: they are the sum of its containers', and kubelet
//! labels pod-level metrics `container="POD"`, which dashboards would add twice.
//!
//! CRI metric values are unsigned integers, so seconds are whole seconds, as in
//! CRI-O. Values are read when asked, so every timestamp is 0 ("gathered live").

use std::collections::HashMap;

use crust_sandbox::PodRecord;
use crust_sandbox::container::stats::CgroupUsage;
use crust_sandbox::container::{ContainerFilter, ContainerUsage};
use crust_sandbox::netstats::InterfaceStats;
use crust_sandbox::pod::PodFilter;
use k8s_cri::v1 as cri;
use k8s_cri::v1::{
    ListMetricDescriptorsRequest, ListMetricDescriptorsResponse, ListPodSandboxMetricsRequest,
    ListPodSandboxMetricsResponse, MetricType,
};

use super::stats::pod_networks;
use crate::Cri;
use crate::error::CriResult;

/// Labels of every metric, in this order.
const BASE_LABELS: [&str; 3] = ["id", "name", "image"];

/// One metric: name, help, the labels after the base ones, its type.
struct Descriptor(
    &'static str,
    &'static str,
    &'static [&'static str],
    MetricType,
);

use MetricType::{Counter, Gauge};

const NET: &[&str] = &["interface"];

/// Every metric crust reports; ListPodSandboxMetrics names no other.
const DESCRIPTORS: &[Descriptor] = &[
    Descriptor(
        "container_cpu_usage_seconds_total",
        "Cumulative cpu time consumed in seconds.",
        &["cpu"],
        Counter,
    ),
    Descriptor(
        "container_cpu_user_seconds_total",
        "Cumulative user cpu time consumed in seconds.",
        &[],
        Counter,
    ),
    Descriptor(
        "container_cpu_system_seconds_total",
        "Cumulative system cpu time consumed in seconds.",
        &[],
        Counter,
    ),
    Descriptor(
        "container_memory_usage_bytes",
        "Current memory usage in bytes, including all memory regardless of when it was accessed",
        &[],
        Gauge,
    ),
    Descriptor(
        "container_memory_working_set_bytes",
        "Current working set in bytes.",
        &[],
        Gauge,
    ),
    Descriptor("container_memory_rss", "Size of RSS in bytes.", &[], Gauge),
    Descriptor(
        "container_memory_cache",
        "Number of bytes of page cache memory.",
        &[],
        Gauge,
    ),
    Descriptor(
        "container_memory_max_usage_bytes",
        "Maximum memory usage recorded in bytes",
        &[],
        Gauge,
    ),
    Descriptor(
        "container_memory_failcnt",
        "Number of memory usage hits limits",
        &[],
        Counter,
    ),
    Descriptor(
        "container_memory_failures_total",
        "Cumulative count of memory allocation failures.",
        &["failure_type", "scope"],
        Counter,
    ),
    Descriptor(
        "container_oom_events_total",
        "Count of out of memory events observed for the container",
        &[],
        Counter,
    ),
    Descriptor(
        "container_processes",
        "Number of processes running inside the container.",
        &[],
        Gauge,
    ),
    Descriptor(
        "container_fs_usage_bytes",
        "Number of bytes that are consumed by the container on this filesystem.",
        &[],
        Gauge,
    ),
    Descriptor(
        "container_fs_inodes_usage",
        "Number of inodes the container uses on this filesystem.",
        &[],
        Gauge,
    ),
    Descriptor(
        "container_spec_memory_limit_bytes",
        "Memory limit for the container.",
        &[],
        Gauge,
    ),
    Descriptor(
        "container_spec_cpu_shares",
        "CPU share of the container.",
        &[],
        Gauge,
    ),
    Descriptor(
        "container_spec_cpu_quota",
        "CPU quota of the container.",
        &[],
        Gauge,
    ),
    Descriptor(
        "container_spec_cpu_period",
        "CPU period of the container.",
        &[],
        Gauge,
    ),
    Descriptor(
        "container_network_receive_bytes_total",
        "Cumulative count of bytes received",
        NET,
        Counter,
    ),
    Descriptor(
        "container_network_receive_packets_total",
        "Cumulative count of packets received",
        NET,
        Counter,
    ),
    Descriptor(
        "container_network_receive_packets_dropped_total",
        "Cumulative count of packets dropped while receiving",
        NET,
        Counter,
    ),
    Descriptor(
        "container_network_receive_errors_total",
        "Cumulative count of errors encountered while receiving",
        NET,
        Counter,
    ),
    Descriptor(
        "container_network_transmit_bytes_total",
        "Cumulative count of bytes transmitted",
        NET,
        Counter,
    ),
    Descriptor(
        "container_network_transmit_packets_total",
        "Cumulative count of packets transmitted",
        NET,
        Counter,
    ),
    Descriptor(
        "container_network_transmit_packets_dropped_total",
        "Cumulative count of packets dropped while transmitting",
        NET,
        Counter,
    ),
    Descriptor(
        "container_network_transmit_errors_total",
        "Cumulative count of errors encountered while transmitting",
        NET,
        Counter,
    ),
];

pub async fn list_metric_descriptors(
    _cri: &Cri,
    _req: ListMetricDescriptorsRequest,
) -> CriResult<ListMetricDescriptorsResponse> {
    let descriptors = DESCRIPTORS
        .iter()
        .map(|d| cri::MetricDescriptor {
            name: d.0.into(),
            help: d.1.into(),
            label_keys: BASE_LABELS
                .iter()
                .chain(d.2)
                .map(|k| k.to_string())
                .collect(),
        })
        .collect();
    Ok(ListMetricDescriptorsResponse { descriptors })
}

/// The metrics of one object (a container or a pod): its base label values.
struct Sink<'a> {
    base: [&'a str; 3],
    out: Vec<cri::Metric>,
}

impl Sink<'_> {
    fn put(&mut self, name: &str, extra: &[&str], value: Option<u64>) {
        let Some(value) = value else { return };
        let Some(d) = DESCRIPTORS.iter().find(|d| d.0 == name) else {
            debug_assert!(false, "metric {name} has no descriptor");
            return;
        };
        debug_assert_eq!(d.2.len(), extra.len(), "labels of {name}");
        self.out.push(cri::Metric {
            name: d.0.into(),
            timestamp: 0,
            metric_type: d.3 as i32,
            label_values: self
                .base
                .iter()
                .chain(extra)
                .map(|v| v.to_string())
                .collect(),
            value: Some(cri::UInt64Value { value }),
        });
    }
}

fn seconds(ns: Option<u64>) -> Option<u64> {
    ns.map(|n| n / 1_000_000_000)
}

fn cgroup_metrics(s: &mut Sink, u: &CgroupUsage) {
    s.put(
        "container_cpu_usage_seconds_total",
        &["total"],
        seconds(u.cpu_usage_ns),
    );
    s.put(
        "container_cpu_user_seconds_total",
        &[],
        seconds(u.cpu_user_ns),
    );
    s.put(
        "container_cpu_system_seconds_total",
        &[],
        seconds(u.cpu_system_ns),
    );
    s.put("container_memory_usage_bytes", &[], u.memory_usage_bytes);
    s.put(
        "container_memory_working_set_bytes",
        &[],
        u.memory_working_set_bytes,
    );
    s.put("container_memory_rss", &[], u.memory_rss_bytes);
    s.put("container_memory_cache", &[], u.memory_cache_bytes);
    s.put(
        "container_memory_max_usage_bytes",
        &[],
        u.memory_max_usage_bytes,
    );
    s.put("container_memory_failcnt", &[], u.memory_failcnt);
    // The cgroup counts its whole subtree: cAdvisor's "hierarchy" scope.
    let faults = "container_memory_failures_total";
    s.put(faults, &["pgfault", "hierarchy"], u.page_faults);
    s.put(faults, &["pgmajfault", "hierarchy"], u.major_page_faults);
    s.put("container_oom_events_total", &[], u.oom_kills);
    s.put("container_processes", &[], u.processes);
}

/// What the container was given: its limits as kubelet set them (0 = unset).
fn spec_metrics(s: &mut Sink, config: &cri::ContainerConfig) {
    let Some(r) = config.linux.as_ref().and_then(|l| l.resources.as_ref()) else {
        return;
    };
    let positive = |v: i64| u64::try_from(v).ok().filter(|v| *v > 0);
    s.put(
        "container_spec_memory_limit_bytes",
        &[],
        positive(r.memory_limit_in_bytes),
    );
    s.put("container_spec_cpu_shares", &[], positive(r.cpu_shares));
    s.put("container_spec_cpu_quota", &[], positive(r.cpu_quota));
    s.put("container_spec_cpu_period", &[], positive(r.cpu_period));
}

fn network_metrics(s: &mut Sink, ifs: &[InterfaceStats]) {
    for i in ifs {
        let l = [i.name.as_str()];
        s.put(
            "container_network_receive_bytes_total",
            &l,
            Some(i.rx_bytes),
        );
        s.put(
            "container_network_receive_packets_total",
            &l,
            Some(i.rx_packets),
        );
        s.put(
            "container_network_receive_packets_dropped_total",
            &l,
            Some(i.rx_dropped),
        );
        s.put(
            "container_network_receive_errors_total",
            &l,
            Some(i.rx_errors),
        );
        s.put(
            "container_network_transmit_bytes_total",
            &l,
            Some(i.tx_bytes),
        );
        s.put(
            "container_network_transmit_packets_total",
            &l,
            Some(i.tx_packets),
        );
        s.put(
            "container_network_transmit_packets_dropped_total",
            &l,
            Some(i.tx_dropped),
        );
        s.put(
            "container_network_transmit_errors_total",
            &l,
            Some(i.tx_errors),
        );
    }
}

/// kubelet's (and dockershim's) name of a container: `k8s_<container>_<pod>_<namespace>_<uid>_<attempt>`.
fn kubelet_name(pod: &PodRecord, config: &cri::ContainerConfig) -> String {
    let m = &pod.spec.metadata;
    let (name, attempt) = config
        .metadata
        .as_ref()
        .map_or(("", 0), |c| (c.name.as_str(), c.attempt));
    format!("k8s_{name}_{}_{}_{}_{attempt}", m.name, m.namespace, m.uid)
}

fn container_metrics(pod: &PodRecord, u: &ContainerUsage) -> cri::ContainerMetrics {
    let r = &u.record;
    let name = kubelet_name(pod, &r.config);
    let mut s = Sink {
        base: [&r.id, &name, &r.image],
        out: Vec::new(),
    };
    if let Some(cg) = &u.cgroup {
        cgroup_metrics(&mut s, cg);
    }
    if let Some((bytes, inodes)) = u.writable {
        s.put("container_fs_usage_bytes", &[], Some(bytes));
        s.put("container_fs_inodes_usage", &[], Some(inodes));
    }
    spec_metrics(&mut s, &r.config);
    cri::ContainerMetrics {
        container_id: r.id.clone(),
        metrics: s.out,
    }
}

pub async fn list_pod_sandbox_metrics(
    cri: &Cri,
    _req: ListPodSandboxMetricsRequest,
) -> CriResult<ListPodSandboxMetricsResponse> {
    let pods = cri.pods.list(&PodFilter::default());
    if pods.is_empty() {
        return Ok(ListPodSandboxMetricsResponse::default());
    }
    let mut by_pod: HashMap<String, Vec<ContainerUsage>> = HashMap::new();
    for u in cri.containers.stats(&ContainerFilter::default()).await? {
        // Only running containers have usage to report.
        if u.cgroup.is_some() {
            by_pod.entry(u.record.pod_id.clone()).or_default().push(u);
        }
    }
    let nets = pod_networks(&pods).await;
    let pod_metrics = pods
        .iter()
        .zip(nets)
        .map(|(pod, net)| {
            let mut s = Sink {
                base: [&pod.id, "POD", ""],
                out: Vec::new(),
            };
            network_metrics(&mut s, net.as_deref().unwrap_or_default());
            cri::PodSandboxMetrics {
                pod_sandbox_id: pod.id.clone(),
                metrics: s.out,
                container_metrics: by_pod
                    .remove(&pod.id)
                    .unwrap_or_default()
                    .iter()
                    .map(|u| container_metrics(pod, u))
                    .collect(),
            }
        })
        .collect();
    Ok(ListPodSandboxMetricsResponse { pod_metrics })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_descriptor_is_unique_and_has_a_cadvisor_name() {
        let mut names: Vec<_> = DESCRIPTORS.iter().map(|d| d.0).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), DESCRIPTORS.len());
        assert!(names.iter().all(|n| n.starts_with("container_")));
        // kubelet appends these itself; a runtime that sent them would clash.
        for d in DESCRIPTORS {
            assert!(
                !d.2.iter()
                    .any(|l| ["namespace", "pod", "container"].contains(l))
            );
        }
    }

    #[test]
    fn cgroup_usage_becomes_labelled_metrics_in_whole_seconds() {
        let mut s = Sink {
            base: ["c1", "k8s_c_p_ns_uid_0", "img"],
            out: Vec::new(),
        };
        cgroup_metrics(
            &mut s,
            &CgroupUsage {
                cpu_usage_ns: Some(2_500_000_000),
                memory_working_set_bytes: Some(4096),
                page_faults: Some(7),
                ..Default::default()
            },
        );
        let by_name = |n: &str| s.out.iter().find(|m| m.name == n).cloned();
        let cpu = by_name("container_cpu_usage_seconds_total").expect("cpu");
        assert_eq!(cpu.value.map(|v| v.value), Some(2));
        assert_eq!(cpu.label_values, ["c1", "k8s_c_p_ns_uid_0", "img", "total"]);
        assert_eq!(cpu.metric_type, MetricType::Counter as i32);
        let ws = by_name("container_memory_working_set_bytes").expect("ws");
        assert_eq!(ws.metric_type, MetricType::Gauge as i32);
        assert_eq!(ws.label_values.len(), 3);
        let faults = by_name("container_memory_failures_total").expect("faults");
        assert_eq!(&faults.label_values[3..], ["pgfault", "hierarchy"]);
        // What the cgroup does not have is left out, not reported as 0.
        assert!(by_name("container_memory_rss").is_none());
        assert!(by_name("container_memory_failcnt").is_none());
    }

    #[test]
    fn network_metrics_per_interface() {
        let mut s = Sink {
            base: ["p", "POD", ""],
            out: Vec::new(),
        };
        network_metrics(
            &mut s,
            &[InterfaceStats {
                name: "eth0".into(),
                rx_bytes: 10,
                tx_errors: 2,
                ..Default::default()
            }],
        );
        assert_eq!(s.out.len(), 8);
        let rx = &s.out[0];
        assert_eq!(rx.name, "container_network_receive_bytes_total");
        assert_eq!(rx.label_values, ["p", "POD", "", "eth0"]);
        assert_eq!(rx.value.as_ref().map(|v| v.value), Some(10));
    }
}

//! Pod network stats (PodSandboxStats read inside the pod's network namespace)
//! and the CRI metrics kubelet serves as `/metrics/cadvisor`
//! (ListMetricDescriptors, ListPodSandboxMetrics), on a real pod whose
//! container sends traffic over its CNI bridge.

use std::collections::HashMap;
use std::time::Duration;

use crust_e2e::cri;
use crust_e2e::workload::*;

/// eth0's counters as the host sees them through the container's process.
fn host_eth0(pid: i64) -> (u64, u64, u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/net/dev")).expect("net/dev");
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with("eth0:"))
        .expect("eth0 in the pod");
    let v: Vec<u64> = line
        .split_once(':')
        .expect("colon")
        .1
        .split_whitespace()
        .map(|x| x.parse().expect("number"))
        .collect();
    (v[0], v[1], v[8], v[9])
}

fn metric<'a>(
    ms: &'a [cri::Metric],
    name: &str,
    last_label: Option<&str>,
) -> Option<&'a cri::Metric> {
    ms.iter().find(|m| {
        m.name == name
            && last_label.is_none_or(|l| m.label_values.last().map(String::as_str) == Some(l))
    })
}

fn value(m: Option<&cri::Metric>) -> u64 {
    m.and_then(|m| m.value.as_ref())
        .map(|v| v.value)
        .expect("metric")
}

#[tokio::test]
async fn pod_network_stats_and_cri_metrics_match_what_the_kernel_counts() {
    let (_registry, crustd, net, image, mut rt, pc, pod) = scene(180, "metrics").await;
    let gateway = format!("10.88.{}.1", net.n);
    let mut config = container_config("pinger", &image, &["/bin/sh", "-c", "sleep 1000"]);
    config
        .linux
        .get_or_insert_with(Default::default)
        .resources
        .get_or_insert_with(Default::default)
        .memory_limit_in_bytes = 64 << 20;
    let id = create(&mut rt, &pod, &pc, config).await.expect("create");
    start(&mut rt, &id).await;
    let pid = pid_of(&mut rt, &id).await;
    // Traffic over eth0: ten pings of 1000 bytes to the bridge.
    let out = exec(
        &mut rt,
        &id,
        &[
            "/bin/ping",
            "-c",
            "10",
            "-i",
            "0.2",
            "-s",
            "1000",
            "-W",
            "1",
            &gateway,
        ],
        20,
    )
    .await
    .expect("exec");
    assert_eq!(out.exit_code, 0, "{}", String::from_utf8_lossy(&out.stdout));

    // PodSandboxStats: eth0's counters, between two readings of the host's.
    let before = host_eth0(pid);
    let stats = rt
        .pod_sandbox_stats(cri::PodSandboxStatsRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await
        .expect("PodSandboxStats")
        .into_inner()
        .stats
        .expect("stats");
    let after = host_eth0(pid);
    let network = stats.linux.and_then(|l| l.network).expect("network usage");
    assert!(network.timestamp > 0);
    let eth0 = network.default_interface.expect("default interface");
    assert_eq!(eth0.name, "eth0");
    let rx = eth0.rx_bytes.expect("rx").value;
    let tx = eth0.tx_bytes.expect("tx").value;
    assert!(
        (before.0..=after.0).contains(&rx),
        "rx {rx} {before:?} {after:?}"
    );
    assert!(
        (before.2..=after.2).contains(&tx),
        "tx {tx} {before:?} {after:?}"
    );
    assert!(tx >= 10 * 1000, "ten pings of 1000 bytes went out: {tx}");
    assert_eq!(eth0.rx_errors.map(|v| v.value), Some(0));
    // Loopback is left out; the pod has no other interface.
    assert!(network.interfaces.is_empty(), "{:?}", network.interfaces);

    // ListMetricDescriptors: cAdvisor's names and labels.
    let descs = rt
        .list_metric_descriptors(cri::ListMetricDescriptorsRequest {})
        .await
        .expect("ListMetricDescriptors")
        .into_inner()
        .descriptors;
    let keys: HashMap<String, Vec<String>> = descs
        .iter()
        .map(|d| (d.name.clone(), d.label_keys.clone()))
        .collect();
    for name in [
        "container_cpu_usage_seconds_total",
        "container_memory_working_set_bytes",
        "container_memory_rss",
        "container_memory_cache",
        "container_fs_usage_bytes",
        "container_network_receive_bytes_total",
        "container_network_transmit_errors_total",
        "container_processes",
        "container_oom_events_total",
    ] {
        assert!(keys.contains_key(name), "{name} described");
    }
    assert_eq!(keys["container_memory_rss"], ["id", "name", "image"]);
    assert_eq!(
        keys["container_network_receive_bytes_total"],
        ["id", "name", "image", "interface"]
    );

    // ListPodSandboxMetrics: every metric described, with as many values as keys.
    let before = host_eth0(pid);
    let all = rt
        .list_pod_sandbox_metrics(cri::ListPodSandboxMetricsRequest {})
        .await
        .expect("ListPodSandboxMetrics")
        .into_inner()
        .pod_metrics;
    let after = host_eth0(pid);
    assert_eq!(all.len(), 1);
    let pm = &all[0];
    assert_eq!(pm.pod_sandbox_id, pod);
    let every = pm
        .metrics
        .iter()
        .chain(pm.container_metrics.iter().flat_map(|c| &c.metrics));
    for m in every {
        let k = keys
            .get(&m.name)
            .unwrap_or_else(|| panic!("{} not described", m.name));
        assert_eq!(k.len(), m.label_values.len(), "{m:?}");
    }
    let rx = value(metric(
        &pm.metrics,
        "container_network_receive_bytes_total",
        Some("eth0"),
    ));
    assert!((before.0..=after.0).contains(&rx));
    let tx_packets = value(metric(
        &pm.metrics,
        "container_network_transmit_packets_total",
        Some("eth0"),
    ));
    assert!((before.3..=after.3).contains(&tx_packets) && tx_packets >= 10);
    assert_eq!(&pm.metrics[0].label_values[..3], [pod.as_str(), "POD", ""]);

    assert_eq!(pm.container_metrics.len(), 1);
    let cm = &pm.container_metrics[0];
    assert_eq!(cm.container_id, id);
    let ws = metric(&cm.metrics, "container_memory_working_set_bytes", None).expect("working set");
    assert_eq!(
        ws.label_values,
        [
            id.as_str(),
            "k8s_pinger_metrics_e2e_uid-metrics_0",
            image.as_str()
        ]
    );
    assert!(value(Some(ws)) > 0);
    assert_eq!(ws.metric_type, cri::MetricType::Gauge as i32);
    let cpu = metric(
        &cm.metrics,
        "container_cpu_usage_seconds_total",
        Some("total"),
    )
    .expect("cpu");
    assert_eq!(cpu.metric_type, cri::MetricType::Counter as i32);
    // sh execs sleep: one process.
    assert_eq!(value(metric(&cm.metrics, "container_processes", None)), 1);
    assert_eq!(
        value(metric(&cm.metrics, "container_oom_events_total", None)),
        0
    );
    assert_eq!(
        value(metric(
            &cm.metrics,
            "container_spec_memory_limit_bytes",
            None
        )),
        64 << 20
    );

    // crictl reads them too.
    let out = std::process::Command::new("/work/shared/bin/crictl")
        .args([
            "--runtime-endpoint",
            &format!("unix://{}", crustd.socket.display()),
            "metricsp",
        ])
        .output()
        .expect("crictl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("container_memory_working_set_bytes"),
        "{text}"
    );

    // A stopped pod answers without its network: its namespace is gone or idle.
    rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: pod.clone(),
    })
    .await
    .expect("StopPodSandbox");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let stats = rt
        .pod_sandbox_stats(cri::PodSandboxStatsRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await
        .expect("PodSandboxStats of a stopped pod")
        .into_inner()
        .stats
        .expect("stats");
    assert!(stats.linux.and_then(|l| l.network).is_none());
    let all = rt
        .list_pod_sandbox_metrics(cri::ListPodSandboxMetricsRequest {})
        .await
        .expect("ListPodSandboxMetrics")
        .into_inner()
        .pod_metrics;
    assert!(all[0].metrics.is_empty() && all[0].container_metrics.is_empty());
    remove_pod(&mut rt, &pod).await;
}

//! ContainerStats, ListContainerStats, PodSandboxStats, ListPodSandboxStats on
//! running containers: CPU, memory and writable-layer usage as kubelet reads them.

use std::time::{Duration, Instant};

use crust_e2e::cri;
use crust_e2e::workload::*;
use tonic::Code;

#[tokio::test]
async fn container_and_pod_stats_report_cpu_memory_and_writable_layer() {
    let (_registry, _crustd, _net, image, mut rt, pc, pod) = scene(221, "stats").await;
    // Writes 5 MiB into its writable layer, burns a little CPU, then sleeps.
    let id = create(
        &mut rt,
        &pod,
        &pc,
        container_config(
            "worker",
            &image,
            &[
                "/bin/sh",
                "-c",
                "dd if=/dev/urandom of=/data bs=1M count=5 2>/dev/null; touch /ready; sleep 1000",
            ],
        ),
    )
    .await
    .expect("create");
    start(&mut rt, &id).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while exec(&mut rt, &id, &["/bin/ls", "/ready"], 5)
        .await
        .expect("exec")
        .exit_code
        != 0
    {
        assert!(Instant::now() < deadline, "container did not get ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let get = |rt: &mut Rt| {
        let mut rt = rt.clone();
        let id = id.clone();
        async move {
            rt.container_stats(cri::ContainerStatsRequest { container_id: id })
                .await
                .expect("ContainerStats")
                .into_inner()
                .stats
                .expect("stats")
        }
    };
    let first = get(&mut rt).await;
    assert_eq!(
        first.attributes.as_ref().map(|a| a.id.as_str()),
        Some(id.as_str())
    );
    let cpu = first.cpu.as_ref().expect("cpu");
    assert!(
        cpu.usage_core_nano_seconds
            .as_ref()
            .expect("cpu time")
            .value
            > 0
    );
    let mem = first.memory.as_ref().expect("memory");
    assert!(mem.working_set_bytes.as_ref().expect("working set").value > 0);
    let layer = first.writable_layer.as_ref().expect("writable layer");
    assert!(
        layer.used_bytes.as_ref().expect("bytes").value >= 5 << 20,
        "{layer:?}"
    );
    assert!(layer.inodes_used.as_ref().expect("inodes").value >= 2);
    // A second sample gives the CPU rate.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let second = get(&mut rt).await;
    assert!(second.cpu.as_ref().expect("cpu").usage_nano_cores.is_some());

    let listed = rt
        .list_container_stats(cri::ListContainerStatsRequest {
            filter: Some(cri::ContainerStatsFilter {
                pod_sandbox_id: pod.clone(),
                ..Default::default()
            }),
        })
        .await
        .expect("ListContainerStats")
        .into_inner()
        .stats;
    assert_eq!(listed.len(), 1);

    let pod_stats = rt
        .pod_sandbox_stats(cri::PodSandboxStatsRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await
        .expect("PodSandboxStats")
        .into_inner()
        .stats
        .expect("stats");
    let linux = pod_stats.linux.expect("linux");
    assert_eq!(linux.containers.len(), 1);
    assert!(
        linux
            .memory
            .and_then(|m| m.working_set_bytes)
            .is_some_and(|w| w.value > 0)
    );
    // The shell execs its last command: `sleep` is the pod's one process.
    let processes = linux.process.and_then(|p| p.process_count);
    assert_eq!(processes.map(|c| c.value), Some(1));
    let all = rt
        .list_pod_sandbox_stats(cri::ListPodSandboxStatsRequest::default())
        .await
        .expect("ListPodSandboxStats")
        .into_inner()
        .stats;
    assert_eq!(all.len(), 1);

    let err = rt
        .container_stats(cri::ContainerStatsRequest {
            container_id: "f".repeat(64),
        })
        .await
        .expect_err("unknown container");
    assert_eq!(err.code(), Code::NotFound);

    remove_pod(&mut rt, &pod).await;
}

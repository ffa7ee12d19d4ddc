//! The query scenarios: list, verbose status, stats, pod metrics.

use super::*;

impl Ctx {
    /// List and status latency with `pods` pods (one container each) present.
    pub(super) async fn list(&self) -> Result<(), BenchError> {
        let (pods, containers) = self.populate(self.s.pods).await?;
        self.rec.clear();
        for i in 0..self.s.count {
            let (found, d) = self.cri.list_pods(None).await?;
            if found.len() < pods.len() {
                return Err(BenchError::Invalid(format!(
                    "ListPodSandbox returned {} pods, {} exist",
                    found.len(),
                    pods.len()
                )));
            }
            self.rec.record("ListPodSandbox", d);
            let (_, d) = self.cri.list_containers(None).await?;
            self.rec.record("ListContainers", d);
            let d = self.cri.pod_status(&pods[i % pods.len()], false).await?;
            self.rec.record("PodSandboxStatus", d);
            let d = self
                .cri
                .container_status(&containers[i % containers.len()])
                .await?;
            self.rec.record("ContainerStatus", d);
        }
        self.rec.figure("pods", "pods", pods.len() as f64);
        self.teardown_all(&pods).await?;
        self.keep_only(&[
            "ListPodSandbox",
            "ListContainers",
            "PodSandboxStatus",
            "ContainerStatus",
        ]);
        Ok(())
    }

    /// Verbose PodSandboxStatus (what `crictl inspectp` and monitors poll) of
    /// `pods` pods in turn; one untimed call per pod first.
    pub(super) async fn status_verbose(&self) -> Result<(), BenchError> {
        let mut pods = Vec::new();
        for i in 0..self.s.pods.max(1) {
            pods.push(self.start_pod(i).await?.id);
        }
        for id in &pods {
            self.cri.pod_status(id, true).await?;
        }
        self.rec.clear();
        for i in 0..self.s.count {
            let d = self.cri.pod_status(&pods[i % pods.len()], true).await?;
            self.rec.record("PodSandboxStatus verbose", d);
        }
        self.rec.figure("pods", "pods", pods.len() as f64);
        self.teardown_all(&pods).await?;
        self.keep_only(&["PodSandboxStatus verbose"]);
        Ok(())
    }

    /// ListContainerStats (and ContainerStats) with `pods` containers running.
    pub(super) async fn stats(&self) -> Result<(), BenchError> {
        // Ask once before making the pods: a runtime without stats is
        // unsupported in a second, not after starting a hundred pods.
        self.cri.list_container_stats().await?;
        let (pods, containers) = self.populate(self.s.pods).await?;
        self.rec.clear();
        for i in 0..self.s.count {
            let (n, d) = self.cri.list_container_stats().await?;
            if n < containers.len() {
                return Err(BenchError::Invalid(format!(
                    "ListContainerStats returned {n} entries, {} containers run",
                    containers.len()
                )));
            }
            self.rec.record("ListContainerStats", d);
            let d = self
                .cri
                .container_stats(&containers[i % containers.len()])
                .await?;
            self.rec.record("ContainerStats", d);
        }
        self.rec
            .figure("containers", "containers", containers.len() as f64);
        self.teardown_all(&pods).await?;
        self.keep_only(&["ListContainerStats", "ContainerStats"]);
        Ok(())
    }

    /// ListPodSandboxStats and ListPodSandboxMetrics with `pods` pods of one
    /// running container each, then the daemon's RSS over two rounds of 1,000
    /// more ListPodSandboxMetrics calls. A runtime without the metrics RPCs still
    /// gets its ListPodSandboxStats measured.
    pub(super) async fn pod_metrics(&self) -> Result<(), BenchError> {
        self.cri.list_pod_sandbox_stats().await?;
        let metrics = match self.cri.list_pod_sandbox_metrics().await {
            Ok(_) => true,
            Err(BenchError::Unsupported { .. }) => false,
            Err(e) => return Err(e),
        };
        let (pods, _) = self.populate(self.s.pods).await?;
        self.rec.clear();
        for _ in 0..self.s.count {
            let (n, d) = self.cri.list_pod_sandbox_stats().await?;
            if n < pods.len() {
                return Err(BenchError::Invalid(format!(
                    "ListPodSandboxStats returned {n} pods, {} run",
                    pods.len()
                )));
            }
            self.rec.record("ListPodSandboxStats", d);
            if metrics {
                let (n, m, d) = self.cri.list_pod_sandbox_metrics().await?;
                if n < pods.len() || m == 0 {
                    return Err(BenchError::Invalid(format!(
                        "ListPodSandboxMetrics returned {n} pods and {m} metrics, {} pods run",
                        pods.len()
                    )));
                }
                self.rec.record("ListPodSandboxMetrics", d);
            }
        }
        self.rec.figure("pods", "pods", pods.len() as f64);
        // Two rounds of calls: the first may still warm up allocator arenas
        // and caches; a leak grows the second as much as the first.
        if metrics && let Some(before) = self.daemon_rss_kib() {
            let mut rss = vec![before as f64];
            for _ in 0..2 {
                for _ in 0..RSS_CALLS {
                    self.cri.list_pod_sandbox_metrics().await?;
                }
                rss.extend(self.daemon_rss_kib().map(|r| r as f64));
            }
            if let [r0, r1, r2] = rss[..] {
                self.rec
                    .figure("daemon_rss_before_metrics_calls", "KiB", r0);
                self.rec.figure("daemon_rss_after_1000_metrics", "KiB", r1);
                self.rec.figure("daemon_rss_after_2000_metrics", "KiB", r2);
                self.rec
                    .figure("daemon_rss_growth_second_1000", "KiB", r2 - r1);
            }
        }
        self.teardown_all(&pods).await?;
        remove_cgroup_parents(&self.s.run_id, self.s.pods);
        self.keep_only(&["ListPodSandboxStats", "ListPodSandboxMetrics"]);
        Ok(())
    }
}

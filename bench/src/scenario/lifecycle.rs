//! The lifecycle scenarios: pods, containers, a pod with a container, density.

use super::*;

impl Ctx {
    /// Runs every pod (`parallel` at a time), then stops and removes every pod.
    pub(super) async fn pods(&self) -> Result<(), BenchError> {
        // One untimed pod first: the runtime's first pod pays for caches,
        // CNI plugin page-ins and (containerd) the pause image unpack.
        let warm = self.start_pod(usize::MAX / 2).await?;
        self.teardown_pod(&warm.id).await?;
        self.rec.clear();

        let ids = Mutex::new(Vec::new());
        let begin = Instant::now();
        self.each(self.s.count, self.s.parallel, |i| {
            let ids = &ids;
            async move {
                let pod = self.start_pod(i).await?;
                ids.lock().unwrap_or_else(|e| e.into_inner()).push(pod.id);
                Ok(())
            }
        })
        .await?;
        let run_wall = begin.elapsed();
        let ids = ids.into_inner().unwrap_or_else(|e| e.into_inner());
        let down_wall = self.teardown_all(&ids).await?;
        self.rec.figure("run_wall", "s", run_wall.as_secs_f64());
        self.rec
            .figure("teardown_wall", "s", down_wall.as_secs_f64());
        Ok(())
    }

    /// In one pod: create+start a container, then stop+remove it, `count` times.
    pub(super) async fn containers(&self) -> Result<(), BenchError> {
        self.ensure_image().await?;
        let pod = self.start_pod(0).await?;
        for i in 0..=self.s.count {
            let name = format!("sleep-{i}");
            let (id, _, _) = self.start_container(&pod, &name).await?;
            let stop = self.cri.stop_container(&id, 10).await?;
            let remove = self.cri.remove_container(&id).await?;
            forget(&self.tracker.containers, &id);
            if i == 0 {
                // The first container warms the runtime up: not counted.
                self.rec.clear();
                continue;
            }
            self.rec.record("StopContainer", stop);
            self.rec.record("RemoveContainer", remove);
            self.rec
                .record("StopContainer+RemoveContainer", stop + remove);
        }
        self.teardown_pod(&pod.id).await?;
        self.keep_only(&[
            "CreateContainer",
            "StartContainer",
            "CreateContainer+StartContainer",
            "StopContainer",
            "RemoveContainer",
            "StopContainer+RemoveContainer",
        ]);
        Ok(())
    }

    /// What kubelet does for a new pod: ImageStatus (PullImage if absent),
    /// RunPodSandbox, CreateContainer, StartContainer. `total` is their sum.
    pub(super) async fn pod_container(&self) -> Result<(), BenchError> {
        let image = self.image()?.to_string();
        let ids = Mutex::new(Vec::new());
        let one = |i: usize| {
            let ids = &ids;
            let image = &image;
            async move {
                let begin = Instant::now();
                let (present, d) = self.cri.image_status(image).await?;
                self.rec.record("ImageStatus", d);
                if present.is_none() {
                    add(&self.tracker.images, image);
                    let (_, d) = self.cri.pull_image(image).await?;
                    self.rec.record("PullImage", d);
                }
                let pod = self.start_pod(i).await?;
                ids.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(pod.id.clone());
                self.start_container(&pod, "app").await?;
                self.rec.record("total", begin.elapsed());
                Ok(())
            }
        };
        // Warm-up pod (pulls the image if needed), not counted.
        one(usize::MAX / 2).await?;
        self.rec.clear();
        self.each(self.s.count, self.s.parallel, one).await?;
        let ids = ids.into_inner().unwrap_or_else(|e| e.into_inner());
        self.teardown_all(&ids).await?;
        // Teardown is measured by `pod`; keep this table about starting.
        self.keep_only(&[
            "ImageStatus",
            "PullImage",
            "RunPodSandbox",
            "CreateContainer",
            "StartContainer",
            "total",
        ]);
        Ok(())
    }

    /// `count` pods with one sleep container, `parallel` at a time: wall
    /// time, then the daemon's and the shims' memory with all of them up.
    pub(super) async fn density(&self) -> Result<(), BenchError> {
        self.ensure_image().await?;
        let shim_name = self.s.shim_name.clone().unwrap_or_default();
        let before: HashSet<u32> = self
            .procfs
            .processes()
            .into_iter()
            .filter(|p| p.name == shim_name)
            .map(|p| p.pid)
            .collect();
        let daemon_before = self.s.daemon_pid.and_then(|pid| self.procfs.memory(pid));

        let begin = Instant::now();
        let (pods, _) = self.populate(self.s.count).await?;
        let wall = begin.elapsed();
        self.rec.figure("start_wall", "s", wall.as_secs_f64());
        self.rec.figure(
            "pods_per_s",
            "pods/s",
            pods.len() as f64 / wall.as_secs_f64().max(1e-9),
        );

        // Let shims and daemon settle (lazy allocations, GC) before reading.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let mib = |kib: u64| kib as f64 / 1024.0;
        if let Some(m) = self.s.daemon_pid.and_then(|pid| self.procfs.memory(pid)) {
            self.rec.figure("daemon_rss", "MiB", mib(m.rss_kib));
            if let Some(b) = daemon_before {
                self.rec
                    .figure("daemon_rss_growth", "MiB", mib(m.rss_kib) - mib(b.rss_kib));
            }
        }
        if !shim_name.is_empty() {
            let shims = self.procfs.find_shims(&ShimQuery {
                name: &shim_name,
                daemon_pid: self.s.daemon_pid,
                marker: self.s.shim_match.as_deref(),
                exclude: &before,
            });
            let mems: Vec<_> = shims
                .iter()
                .filter_map(|p| self.procfs.memory(p.pid))
                .collect();
            let rss: u64 = mems.iter().map(|m| m.rss_kib).sum();
            let pss: u64 = mems.iter().map(|m| m.pss_kib).sum();
            let n = pods.len().max(1) as f64;
            self.rec.figure("shims", "processes", mems.len() as f64);
            self.rec.figure("shim_rss_total", "MiB", mib(rss));
            self.rec.figure("shim_rss_per_pod", "MiB", mib(rss) / n);
            self.rec.figure("shim_pss_per_pod", "MiB", mib(pss) / n);
            if let Some(max) = mems.iter().map(|m| m.rss_kib).max() {
                self.rec.figure("shim_rss_max", "MiB", mib(max));
            }
            // Everything the runtime costs with the pods up: the daemon, the
            // shims and what runs under them (containers, pause processes),
            // in PSS so libraries shared between them count once.
            let mut roots: Vec<u32> = shims.iter().map(|p| p.pid).collect();
            roots.extend(self.s.daemon_pid);
            let all = with_descendants(&self.procfs.processes(), &roots);
            let total: u64 = all
                .iter()
                .filter_map(|pid| self.procfs.memory(*pid))
                .map(|m| m.pss_kib)
                .sum();
            self.rec.figure("total_pss", "MiB", mib(total));
            self.rec.figure("total_pss_per_pod", "MiB", mib(total) / n);
        }
        let down = self.teardown_all(&pods).await?;
        self.rec.figure("teardown_wall", "s", down.as_secs_f64());
        Ok(())
    }
}

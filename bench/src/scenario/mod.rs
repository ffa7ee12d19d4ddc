//! The scenarios: what each one asks the runtime, what it times, and how it
//! puts the runtime back as it found it.
//!
//! Every pod, container and image a scenario creates is tracked as soon as
//! the runtime names it, and [`Ctx::cleanup`] removes what is still tracked
//! (plus any pod carrying this run's label, in case a call timed out after the
//! runtime made the pod) whether the scenario succeeded or not.

use std::collections::HashSet;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use k8s_cri::v1 as cri;

use crate::cri::{
    BenchError, Cri, ECHO_PORT, RUN_LABEL, echo_container, pod_config, sleep_container,
};
use crate::procs::{ProcFs, ShimQuery, with_descendants};
use crate::report::{Figure, Operation};
use crate::stats::Summary;

mod lifecycle;
mod queries;
mod streams;

/// The scenarios that talk to a CRI endpoint.
pub const CRI_SCENARIOS: &[&str] = &[
    "version",
    "status",
    "pull-small",
    "pull-large",
    "pod",
    "container",
    "pod-container",
    "density",
    "list",
    "status-verbose",
    "stats",
    "pod-metrics",
    "exec",
    "port-forward",
    "cleanup",
];

/// The cgroup parent `pod-metrics` gives pod `i`, as kubelet gives each pod one.
fn pod_cgroup_parent(run_id: &str, i: usize) -> String {
    format!("/crust/bench-{run_id}-{i}")
}

/// Removes the (empty) cgroup parents of `pod-metrics` from every v1 hierarchy
/// and a v2 mount: the runtimes remove what they made below them, kubelet
/// its own parents, and here the bench stands in for kubelet.
fn remove_cgroup_parents(run_id: &str, pods: usize) {
    let Ok(mounts) = std::fs::read_dir("/sys/fs/cgroup") else {
        return;
    };
    let mounts: Vec<PathBuf> = mounts.flatten().map(|e| e.path()).collect();
    for i in 0..pods {
        let rel = pod_cgroup_parent(run_id, i);
        for m in mounts.iter().chain([&PathBuf::from("/sys/fs/cgroup")]) {
            let _ = std::fs::remove_dir(m.join(rel.trim_start_matches('/')));
        }
    }
}

/// ListPodSandboxMetrics calls over which `pod-metrics` watches the daemon's RSS.
const RSS_CALLS: usize = 1000;

/// Scenarios that measure the machine itself, with no runtime.
pub const FLOOR_SCENARIOS: &[&str] = &["floor-unshare", "floor-runc"];

/// Settings of one scenario run.
#[derive(Debug, Clone)]
pub struct Settings {
    pub scenario: String,
    pub count: usize,
    pub parallel: usize,
    pub image: Option<String>,
    /// Pods present during `list` and `stats`.
    pub pods: usize,
    pub daemon_pid: Option<u32>,
    pub shim_name: Option<String>,
    pub shim_match: Option<String>,
    /// Pod log directories live here (removed at the end).
    pub work_dir: PathBuf,
    pub run_id: String,
    /// Bytes echoed through each port-forward.
    pub bytes: usize,
}

/// Samples and figures gathered while a scenario runs.
#[derive(Default)]
pub struct Recorder {
    ops: Mutex<Vec<(String, Vec<Duration>)>>,
    figures: Mutex<Vec<Figure>>,
}

impl Recorder {
    pub fn record(&self, name: &str, d: Duration) {
        let mut ops = self.ops.lock().unwrap_or_else(|e| e.into_inner());
        match ops.iter_mut().find(|(n, _)| n == name) {
            Some((_, v)) => v.push(d),
            None => ops.push((name.to_string(), vec![d])),
        }
    }

    /// Forgets the samples so far (warm-up calls).
    pub fn clear(&self) {
        self.ops.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// Keeps the operations named, in their order, and forgets the others.
    pub fn keep_only(&self, names: &[&str]) {
        self.ops
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(n, _)| names.contains(&n.as_str()));
    }

    pub fn figure(&self, name: &str, unit: &str, value: f64) {
        self.figures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Figure {
                name: name.to_string(),
                unit: unit.to_string(),
                value,
            });
    }

    pub fn operations(&self) -> Vec<Operation> {
        let ops = self.ops.lock().unwrap_or_else(|e| e.into_inner());
        ops.iter()
            .filter_map(|(name, v)| {
                Some(Operation {
                    name: name.clone(),
                    summary: Summary::of(v)?,
                    samples_ms: v.iter().map(|d| d.as_secs_f64() * 1e3).collect(),
                })
            })
            .collect()
    }

    pub fn figures(&self) -> Vec<Figure> {
        self.figures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// What the scenario made and has not removed yet.
#[derive(Default)]
struct Tracker {
    pods: Mutex<Vec<String>>,
    containers: Mutex<Vec<String>>,
    images: Mutex<Vec<String>>,
}

fn add(list: &Mutex<Vec<String>>, id: &str) {
    list.lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(id.to_string());
}

fn forget(list: &Mutex<Vec<String>>, id: &str) {
    list.lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|x| x != id);
}

fn take(list: &Mutex<Vec<String>>) -> Vec<String> {
    std::mem::take(&mut *list.lock().unwrap_or_else(|e| e.into_inner()))
}

/// A started pod: its id and the config it was made with.
struct Pod {
    id: String,
    config: cri::PodSandboxConfig,
}

pub struct Ctx {
    cri: Cri,
    s: Settings,
    pub rec: Recorder,
    tracker: Tracker,
    failed: AtomicBool,
    procfs: ProcFs,
}

impl Ctx {
    pub fn new(cri: Cri, s: Settings) -> Ctx {
        Ctx {
            cri,
            s,
            rec: Recorder::default(),
            tracker: Tracker::default(),
            failed: AtomicBool::new(false),
            procfs: ProcFs::default(),
        }
    }

    fn image(&self) -> Result<&str, BenchError> {
        self.s
            .image
            .as_deref()
            .ok_or_else(|| BenchError::Invalid(format!("{} needs --image", self.s.scenario)))
    }

    fn log_root(&self) -> PathBuf {
        self.s.work_dir.join("logs")
    }

    /// Runs `f(0..n)`, at most `parallel` at once. After the first failure no
    /// new call starts, the running ones finish (so what they create is
    /// tracked and cleaned up), and that first error is returned.
    async fn each<F, Fut>(&self, n: usize, parallel: usize, f: F) -> Result<(), BenchError>
    where
        F: Fn(usize) -> Fut,
        Fut: Future<Output = Result<(), BenchError>>,
    {
        let results: Vec<Result<(), BenchError>> = futures::stream::iter(0..n)
            .map(|i| {
                let fut = f(i);
                async move {
                    if self.failed.load(Ordering::SeqCst) {
                        return Ok(());
                    }
                    let r = fut.await;
                    if r.is_err() {
                        self.failed.store(true, Ordering::SeqCst);
                    }
                    r
                }
            })
            .buffer_unordered(parallel.max(1))
            .collect()
            .await;
        results.into_iter().collect()
    }

    /// Runs the scenario, then cleans up, also when it failed.
    pub async fn run(&self) -> Result<(), BenchError> {
        let res = self.dispatch().await;
        let cleanup = self.cleanup().await;
        res?;
        cleanup
    }

    async fn dispatch(&self) -> Result<(), BenchError> {
        let n = self.s.count;
        match self.s.scenario.as_str() {
            "version" => {
                for _ in 0..n {
                    let (_, d) = self.cri.version().await?;
                    self.rec.record("Version", d);
                }
                Ok(())
            }
            "status" => {
                for _ in 0..n {
                    let (_, d) = self.cri.status().await?;
                    self.rec.record("Status", d);
                }
                Ok(())
            }
            "pull-small" | "pull-large" => self.pull().await,
            "pod" => self.pods().await,
            "container" => self.containers().await,
            "pod-container" => self.pod_container().await,
            "density" => self.density().await,
            "list" => self.list().await,
            "status-verbose" => self.status_verbose().await,
            "stats" => self.stats().await,
            "pod-metrics" => self.pod_metrics().await,
            "exec" => self.exec().await,
            "port-forward" => self.port_forward().await,
            "cleanup" => self.remove_everything().await,
            other => Err(BenchError::Invalid(format!("unknown scenario {other:?}"))),
        }
    }

    // ----- images -----

    /// Each pull is cold: the image is removed before it (untimed when it
    /// was there before the run) and after it (timed as RemoveImage).
    async fn pull(&self) -> Result<(), BenchError> {
        let image = self.image()?;
        if self.cri.image_status(image).await?.0.is_some() {
            self.cri.remove_image(image).await?;
        }
        let before = self.daemon_rss_kib();
        let mut peak: Option<u64> = None;
        for _ in 0..self.s.count {
            add(&self.tracker.images, image);
            let (res, p) = self.peak_daemon_rss(self.cri.pull_image(image)).await;
            peak = peak.max(p);
            let (_, d) = res?;
            self.rec.record("PullImage", d);
            let d = self.cri.remove_image(image).await?;
            forget(&self.tracker.images, image);
            self.rec.record("RemoveImage", d);
        }
        // The daemon does the pulling (containerd unpacks in-process), so its
        // peak RSS is the memory a pull costs the node.
        let mib = |kib: u64| kib as f64 / 1024.0;
        if let Some(p) = peak {
            self.rec.figure("daemon_peak_rss", "MiB", mib(p));
            if let Some(b) = before {
                self.rec
                    .figure("daemon_peak_rss_growth", "MiB", mib(p.saturating_sub(b)));
            }
        }
        Ok(())
    }

    fn daemon_rss_kib(&self) -> Option<u64> {
        self.s
            .daemon_pid
            .and_then(|pid| self.procfs.memory(pid))
            .map(|m| m.rss_kib)
    }

    /// Runs `fut`, sampling the daemon's RSS every 20 ms; returns the highest
    /// sample (`None` without `--daemon-pid`).
    async fn peak_daemon_rss<T>(&self, fut: impl Future<Output = T>) -> (T, Option<u64>) {
        let mut peak = self.daemon_rss_kib();
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        tokio::pin!(fut);
        loop {
            tokio::select! {
                out = &mut fut => return (out, peak.max(self.daemon_rss_kib())),
                _ = tick.tick() => peak = peak.max(self.daemon_rss_kib()),
            }
        }
    }

    /// Pulls the image if the runtime lacks it; a pull made here is undone at cleanup.
    async fn ensure_image(&self) -> Result<(), BenchError> {
        let image = self.image()?;
        if self.cri.image_status(image).await?.0.is_none() {
            add(&self.tracker.images, image);
            self.cri.pull_image(image).await?;
        }
        Ok(())
    }

    // ----- pods and containers -----

    async fn start_pod(&self, i: usize) -> Result<Pod, BenchError> {
        let mut config = pod_config(&self.s.run_id, i, &self.log_root());
        if self.s.scenario == "pod-metrics"
            && let Some(l) = config.linux.as_mut()
        {
            // containerd has no pod stats without a pod cgroup parent (kubelet always gives one).
            l.cgroup_parent = pod_cgroup_parent(&self.s.run_id, i);
        }
        std::fs::create_dir_all(&config.log_directory).map_err(|source| BenchError::Io {
            what: format!("creating {}", config.log_directory),
            source,
        })?;
        let (id, d) = self.cri.run_pod(&config).await?;
        add(&self.tracker.pods, &id);
        self.rec.record("RunPodSandbox", d);
        Ok(Pod { id, config })
    }

    async fn teardown_pod(&self, id: &str) -> Result<(), BenchError> {
        let stop = self.cri.stop_pod(id).await?;
        let remove = self.cri.remove_pod(id).await?;
        forget(&self.tracker.pods, id);
        self.rec.record("StopPodSandbox", stop);
        self.rec.record("RemovePodSandbox", remove);
        self.rec
            .record("StopPodSandbox+RemovePodSandbox", stop + remove);
        Ok(())
    }

    /// Creates and starts one sleep container; returns its id and the two latencies.
    async fn start_container(
        &self,
        pod: &Pod,
        name: &str,
    ) -> Result<(String, Duration, Duration), BenchError> {
        let config = sleep_container(&self.s.run_id, name, self.image()?);
        let (id, create) = self
            .cri
            .create_container(&pod.id, &config, &pod.config)
            .await?;
        add(&self.tracker.containers, &id);
        let start = self.cri.start_container(&id).await?;
        self.rec.record("CreateContainer", create);
        self.rec.record("StartContainer", start);
        self.rec
            .record("CreateContainer+StartContainer", create + start);
        Ok((id, create, start))
    }

    /// A pod with one running sleep container; returns (pod id, container id).
    async fn pod_with_container(&self, i: usize) -> Result<(String, String), BenchError> {
        let begin = Instant::now();
        let pod = self.start_pod(i).await?;
        let (cid, _, _) = self.start_container(&pod, "sleep").await?;
        self.rec.record("pod+container", begin.elapsed());
        Ok((pod.id, cid))
    }

    /// Stops and removes pods `ids`, `parallel` at a time; returns the wall time.
    async fn teardown_all(&self, ids: &[String]) -> Result<Duration, BenchError> {
        let begin = Instant::now();
        self.failed.store(false, Ordering::SeqCst);
        self.each(ids.len(), self.s.parallel, |i| self.teardown_pod(&ids[i]))
            .await?;
        Ok(begin.elapsed())
    }

    /// Sets up `n` pods with a running container each; returns (pods, containers).
    async fn populate(&self, n: usize) -> Result<(Vec<String>, Vec<String>), BenchError> {
        self.ensure_image().await?;
        let made = Mutex::new((Vec::new(), Vec::new()));
        self.each(n, self.s.parallel, |i| {
            let made = &made;
            async move {
                let (p, c) = self.pod_with_container(i).await?;
                let mut m = made.lock().unwrap_or_else(|e| e.into_inner());
                m.0.push(p);
                m.1.push(c);
                Ok(())
            }
        })
        .await?;
        Ok(made.into_inner().unwrap_or_else(|e| e.into_inner()))
    }
}

impl Ctx {
    fn keep_only(&self, names: &[&str]) {
        self.rec.keep_only(names);
    }

    /// Removes every pod and container of the endpoint (for a runtime that
    /// `hack/bench` started and owns, before stopping it).
    /// Keeps going past a failure (one stuck pod must not keep the others
    /// alive) and returns the first error at the end.
    async fn remove_everything(&self) -> Result<(), BenchError> {
        let mut first = None;
        let (pods, _) = self.cri.list_pods(None).await?;
        for id in &pods {
            // RemovePodSandbox stops a pod that is still running, so a
            // failed stop is no reason not to try the remove.
            if let Err(e) = self.cri.stop_pod(id).await {
                first.get_or_insert(e);
            }
            if let Err(e) = self.cri.remove_pod(id).await {
                first.get_or_insert(e);
            }
        }
        let (containers, _) = self.cri.list_containers(None).await?;
        for id in &containers {
            let _ = self.cri.stop_container(id, 0).await;
            if let Err(e) = self.cri.remove_container(id).await {
                first.get_or_insert(e);
            }
        }
        self.rec.figure("pods_removed", "pods", pods.len() as f64);
        self.rec
            .figure("containers_removed", "containers", containers.len() as f64);
        first.map_or(Ok(()), Err)
    }

    /// Removes what the scenario left: tracked containers, pods (and any pod
    /// with this run's label), images; then the work dir. Returns the first
    /// error, after trying everything.
    async fn cleanup(&self) -> Result<(), BenchError> {
        let mut first: Option<BenchError> = None;
        let mut note = |r: Result<Duration, BenchError>| {
            if let Err(e) = r
                && first.is_none()
            {
                first = Some(e);
            }
        };
        for id in take(&self.tracker.containers) {
            let _ = self.cri.stop_container(&id, 0).await;
            note(self.cri.remove_container(&id).await);
        }
        let mut pods = take(&self.tracker.pods);
        if let Ok((labelled, _)) = self.cri.list_pods(Some((RUN_LABEL, &self.s.run_id))).await {
            for id in labelled {
                if !pods.contains(&id) {
                    pods.push(id);
                }
            }
        }
        for id in pods {
            note(self.cri.stop_pod(&id).await);
            note(self.cri.remove_pod(&id).await);
        }
        for image in take(&self.tracker.images) {
            note(self.cri.remove_image(&image).await);
        }
        let logs = self.log_root();
        if logs.exists()
            && let Err(source) = std::fs::remove_dir_all(&logs)
            && first.is_none()
        {
            first = Some(BenchError::Io {
                what: format!("removing {}", logs.display()),
                source,
            });
        }
        match first {
            None => Ok(()),
            Some(e) => Err(BenchError::Invalid(format!("cleanup: {e}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorder_keeps_order_and_summarises() {
        let r = Recorder::default();
        r.record("b", Duration::from_millis(2));
        r.record("a", Duration::from_millis(1));
        r.record("b", Duration::from_millis(4));
        let ops = r.operations();
        assert_eq!(ops[0].name, "b");
        assert_eq!(ops[0].summary.samples, 2);
        assert_eq!(ops[0].summary.median_ms, 3.0);
        assert_eq!(ops[1].name, "a");
        r.figure("wall", "s", 1.5);
        assert_eq!(r.figures()[0].value, 1.5);
    }

    #[test]
    fn tracker_lists() {
        let t = Tracker::default();
        add(&t.pods, "p1");
        add(&t.pods, "p2");
        forget(&t.pods, "p1");
        assert_eq!(take(&t.pods), vec!["p2".to_string()]);
        assert!(take(&t.pods).is_empty());
    }
}

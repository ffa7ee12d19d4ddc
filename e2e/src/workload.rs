//! A workload for tests: a crustd that pulls from a fixture registry, a pod on
//! a test network, containers of the fixture images, and the CRI calls around
//! them, each failing the test with a clear message.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::net::TestNet;
use crate::registry::Registry;
use crate::{Crustd, Options, cri};

pub type Rt = cri::runtime_service_client::RuntimeServiceClient<tonic::transport::Channel>;

/// A crustd that may pull from `registry` over plain HTTP, with a pod network.
pub async fn setup(n: u8) -> (Registry, Crustd, TestNet) {
    setup_with(n, Options::default()).await
}

/// [`setup`] with more of crustd's options (the registry is added to theirs).
pub async fn setup_with(n: u8, opts: Options) -> (Registry, Crustd, TestNet) {
    let registry = Registry::start(None).expect("registry");
    let insecure = format!("insecure_registries = [\"{}\"]", registry.addr);
    let crustd = Crustd::start_with(Options {
        images_config: format!("{insecure}\n{}", opts.images_config),
        ..opts
    })
    .await
    .expect("crustd starts");
    let net = TestNet::new(&crustd, n);
    (registry, crustd, net)
}

pub async fn pull(crustd: &Crustd, image: &str) -> String {
    try_pull(crustd, image).await.expect("PullImage")
}

/// PullImage of `image`: its image ref, or the status it failed with.
pub async fn try_pull(crustd: &Crustd, image: &str) -> Result<String, tonic::Status> {
    crustd
        .images()
        .await
        .expect("image client")
        .pull_image(cri::PullImageRequest {
            image: Some(cri::ImageSpec {
                image: image.into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner().image_ref)
}

pub fn pod_config(name: &str, net: &TestNet, log_dir: &std::path::Path) -> cri::PodSandboxConfig {
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: "e2e".into(),
            attempt: 0,
        }),
        hostname: name.into(),
        log_directory: log_dir.display().to_string(),
        linux: Some(cri::LinuxPodSandboxConfig {
            cgroup_parent: net.cgroup_parent.clone(),
            // What kubelet sends unless a pod shares its process namespace.
            security_context: Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(cri::NamespaceOption {
                    pid: cri::NamespaceMode::Container as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The pod config's namespace options, made if absent (to set a mode on).
pub fn namespaces(config: &mut cri::PodSandboxConfig) -> &mut cri::NamespaceOption {
    config
        .linux
        .get_or_insert_with(Default::default)
        .security_context
        .get_or_insert_with(Default::default)
        .namespace_options
        .get_or_insert_with(Default::default)
}

pub async fn run_pod(rt: &mut Rt, config: &cri::PodSandboxConfig) -> String {
    rt.run_pod_sandbox(cri::RunPodSandboxRequest {
        config: Some(config.clone()),
        runtime_handler: String::new(),
    })
    .await
    .expect("RunPodSandbox")
    .into_inner()
    .pod_sandbox_id
}

pub fn container_config(name: &str, image: &str, command: &[&str]) -> cri::ContainerConfig {
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(cri::ImageSpec {
            image: image.into(),
            ..Default::default()
        }),
        command: command.iter().map(|s| s.to_string()).collect(),
        log_path: format!("{name}/0.log"),
        labels: HashMap::from([("container".to_string(), name.to_string())]),
        annotations: HashMap::from([("kept".to_string(), "as given".to_string())]),
        ..Default::default()
    }
}

pub async fn create(
    rt: &mut Rt,
    pod: &str,
    pod_config: &cri::PodSandboxConfig,
    config: cri::ContainerConfig,
) -> Result<String, tonic::Status> {
    rt.create_container(cri::CreateContainerRequest {
        pod_sandbox_id: pod.into(),
        config: Some(config),
        sandbox_config: Some(pod_config.clone()),
    })
    .await
    .map(|r| r.into_inner().container_id)
}

/// RemovePodSandbox, which must succeed.
pub async fn remove_pod(rt: &mut Rt, pod: &str) {
    rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: pod.to_string(),
    })
    .await
    .expect("RemovePodSandbox");
}

/// Polls `f` every 50 ms until it holds; fails the test naming `what` after `within`.
pub async fn wait_for(what: &str, within: Duration, mut f: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + within;
    while !f() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Creates `sleeper`, a container that sleeps 1000 s (PID 1 without a SIGTERM handler).
pub async fn create_sleeper(
    rt: &mut Rt,
    pod: &str,
    pod_config: &cri::PodSandboxConfig,
    image: &str,
) -> String {
    create(
        rt,
        pod,
        pod_config,
        container_config("sleeper", image, &["/bin/sleep", "1000"]),
    )
    .await
    .expect("create")
}

/// Creates `ticker`, a container that logs `tick N` every 100 ms.
pub async fn create_ticker(
    rt: &mut Rt,
    pod: &str,
    pod_config: &cri::PodSandboxConfig,
    image: &str,
) -> String {
    create(
        rt,
        pod,
        pod_config,
        container_config(
            "ticker",
            image,
            &[
                "/bin/sh",
                "-c",
                "i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.1; done",
            ],
        ),
    )
    .await
    .expect("create")
}

/// UpdateContainerResources with a memory limit and CPU shares.
pub async fn update_memory_and_shares(rt: &mut Rt, id: &str, memory: i64, shares: i64) {
    rt.update_container_resources(cri::UpdateContainerResourcesRequest {
        container_id: id.into(),
        linux: Some(cri::LinuxContainerResources {
            memory_limit_in_bytes: memory,
            cpu_shares: shares,
            ..Default::default()
        }),
        ..Default::default()
    })
    .await
    .expect("UpdateContainerResources");
}

pub async fn start(rt: &mut Rt, id: &str) {
    rt.start_container(cri::StartContainerRequest {
        container_id: id.into(),
    })
    .await
    .expect("StartContainer");
}

pub async fn status(rt: &mut Rt, id: &str) -> cri::ContainerStatus {
    rt.container_status(cri::ContainerStatusRequest {
        container_id: id.into(),
        verbose: false,
    })
    .await
    .expect("ContainerStatus")
    .into_inner()
    .status
    .expect("status")
}

pub async fn wait_exited(rt: &mut Rt, id: &str, within: Duration) -> cri::ContainerStatus {
    wait_state(rt, id, &[cri::ContainerState::ContainerExited], within).await
}

/// Waits until the container is in one of `states`; its status then.
pub async fn wait_state(
    rt: &mut Rt,
    id: &str,
    states: &[cri::ContainerState],
    within: Duration,
) -> cri::ContainerStatus {
    let deadline = Instant::now() + within;
    loop {
        let s = status(rt, id).await;
        if states.iter().any(|st| s.state == *st as i32) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "container {id} still {:?}, not one of {states:?}",
            s.state
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn exec(
    rt: &mut Rt,
    id: &str,
    cmd: &[&str],
    timeout: i64,
) -> Result<cri::ExecSyncResponse, tonic::Status> {
    rt.exec_sync(cri::ExecSyncRequest {
        container_id: id.into(),
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        timeout,
    })
    .await
    .map(|r| r.into_inner())
}

/// The lines of a CRI log file: (stream, tag, text).
pub fn log_lines(path: &std::path::Path) -> Vec<(String, String, String)> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(|l| {
            let mut parts = l.splitn(4, ' ');
            let time = parts.next().expect("time");
            assert!(
                time.len() > 20 && time.contains('T'),
                "not an RFC 3339 time: {l:?}"
            );
            let stream = parts.next().expect("stream").to_string();
            let tag = parts.next().expect("tag").to_string();
            let text = parts.next().unwrap_or_default().to_string();
            (stream, tag, text)
        })
        .collect()
}

/// Whether `pid` is a live process (a zombie is not).
pub fn alive(pid: i64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit(')').next().map(|r| r.trim().to_string()))
        .is_some_and(|r| !r.starts_with('Z'))
}

/// The JSON of ContainerStatus's verbose `info`.
pub async fn verbose_info(rt: &mut Rt, id: &str) -> serde_json::Value {
    let r = rt
        .container_status(cri::ContainerStatusRequest {
            container_id: id.into(),
            verbose: true,
        })
        .await
        .expect("ContainerStatus")
        .into_inner();
    serde_json::from_str(r.info.get("info").expect("verbose info")).expect("json")
}

pub async fn pid_of(rt: &mut Rt, id: &str) -> i64 {
    verbose_info(rt, id).await["pid"].as_i64().expect("pid")
}

/// No cgroup of the test's pods or their containers is left in any hierarchy
/// (the controllers, name=systemd, the hybrid v2 mount).
pub fn assert_no_cgroups_left(net: &TestNet) {
    let left: Vec<std::path::PathBuf> = net
        .cgroup_dirs()
        .into_iter()
        .flat_map(|d| std::fs::read_dir(d).into_iter().flatten().flatten())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
        .collect();
    assert_eq!(
        left,
        Vec::<std::path::PathBuf>::new(),
        "cgroups left behind"
    );
}

/// What most container tests start from: `setup(n)`, the busybox fixture
/// pulled, a CRI client and one READY pod named `name`. Bind the parts in this
/// order (they drop in reverse: pod and client first, registry last).
pub async fn scene(n: u8, name: &str) -> Scene {
    scene_with(n, name, Options::default()).await
}

/// A fixture registry, a crustd, its test network, the busybox image pulled, a
/// runtime client, a pod's config and the running pod's id.
pub type Scene = (
    Registry,
    Crustd,
    TestNet,
    String,
    Rt,
    cri::PodSandboxConfig,
    String,
);

/// [`scene`] with more of crustd's options.
pub async fn scene_with(n: u8, name: &str, opts: Options) -> Scene {
    let (registry, crustd, net) = setup_with(n, opts).await;
    let image = registry.image("crust/busybox:latest");
    pull(&crustd, &image).await;
    let mut rt = crustd.runtime().await.expect("client");
    let pc = pod_config(name, &net, &crustd.dir().join("logs"));
    let pod = run_pod(&mut rt, &pc).await;
    (registry, crustd, net, image, rt, pc, pod)
}

/// The value of the sample named exactly `name` whose label set is exactly
/// `labels` (in any order) in a Prometheus text exposition; None when there
/// is no such sample. `crust_containers{state="running"}` is neither
/// `crust_containers_total{state="running"}` nor
/// `crust_containers{state="running",pod="x"}`.
pub fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut want: Labels = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    want.sort();
    text.lines()
        .filter_map(parse_sample)
        .find(|(n, l, _)| n == name && *l == want)
        .map(|(_, _, v)| v)
}

/// A sample's labels, sorted.
type Labels = Vec<(String, String)>;

/// One sample line: name, labels and value; None for comments, blank and
/// malformed lines.
fn parse_sample(line: &str) -> Option<(String, Labels, f64)> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line.find(['{', ' ', '\t'])?;
    let name = &line[..name_end];
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(inner) = rest.strip_prefix('{') {
        let mut chars = inner.char_indices().peekable();
        let close = loop {
            // Skip separators, then a key up to '=' or the closing brace.
            while chars.peek().is_some_and(|(_, c)| *c == ',' || *c == ' ') {
                chars.next();
            }
            let (start, c) = *chars.peek()?;
            if c == '}' {
                break start;
            }
            let eq = inner[start..].find('=')? + start;
            let key = inner[start..eq].trim().to_string();
            while chars.peek().is_some_and(|(i, _)| *i <= eq) {
                chars.next();
            }
            if chars.next()?.1 != '"' {
                return None;
            }
            let mut value = String::new();
            loop {
                match chars.next()?.1 {
                    '"' => break,
                    '\\' => match chars.next()?.1 {
                        'n' => value.push('\n'),
                        c => value.push(c),
                    },
                    c => value.push(c),
                }
            }
            labels.push((key, value));
        };
        rest = &inner[close + 1..];
    }
    labels.sort();
    let value = rest.split_whitespace().next()?.parse().ok()?;
    Some((name.to_string(), labels, value))
}

/// The samples `(name, labels, value)` that must all hold at once.
pub type Expected<'a> = [(&'a str, &'a [(&'a str, &'a str)], f64)];

/// Waits (up to 5 s) until every expected sample is in crustd's `/metrics`
/// with its value: a gauge is set just after the record it counts changes.
/// Panics naming what differs, with the metrics text.
pub async fn wait_metrics(crustd: &Crustd, expected: &Expected<'_>) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = crustd.metrics().await.expect("GET /metrics");
        let wrong: Vec<String> = expected
            .iter()
            .filter_map(|(name, labels, want)| {
                let got = sample(&text, name, labels);
                (got != Some(*want)).then(|| format!("{name}{labels:?} = {got:?}, want {want}"))
            })
            .collect();
        if wrong.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "metrics differ: {wrong:#?}\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A counter's or histogram count's value now; 0 before its first sample.
pub async fn counter(crustd: &Crustd, name: &str, labels: &[(&str, &str)]) -> f64 {
    let text = crustd.metrics().await.expect("GET /metrics");
    sample(&text, name, labels).unwrap_or(0.0)
}

/// The `crust_containers{state}` gauges for created, running, exited, unknown.
pub async fn wait_container_gauges(crustd: &Crustd, [c, r, e, u]: [u32; 4]) {
    wait_metrics(
        crustd,
        &[
            ("crust_containers", &[("state", "created")], c.into()),
            ("crust_containers", &[("state", "running")], r.into()),
            ("crust_containers", &[("state", "exited")], e.into()),
            ("crust_containers", &[("state", "unknown")], u.into()),
        ],
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::sample;

    #[test]
    fn samples_are_found_by_exact_name_and_label_set() {
        let text = "# HELP crust_containers Containers by state\n\
            # TYPE crust_containers gauge\n\
            crust_containers_total{state=\"running\"} 9\n\
            crust_containers{state=\"running\",pod=\"p\"} 8\n\
            crust_containers{state=\"created\"} 0\n\
            crust_containers{state=\"running\"} 1\n\
            op_count{b=\"x,}\\\"y\",a=\"1\"} 3 1700000000\n\
            up 1\n\
            h_bucket{le=\"+Inf\"} 4\n";
        let running = [("state", "running")];
        assert_eq!(sample(text, "crust_containers", &running), Some(1.0));
        assert_eq!(
            sample(text, "crust_containers", &[("state", "created")]),
            Some(0.0)
        );
        assert_eq!(
            sample(
                text,
                "crust_containers",
                &[("pod", "p"), ("state", "running")]
            ),
            Some(8.0)
        );
        assert_eq!(
            sample(text, "crust_containers", &[("state", "exited")]),
            None
        );
        assert_eq!(sample(text, "crust_container", &running), None);
        assert_eq!(
            sample(text, "op_count", &[("a", "1"), ("b", "x,}\"y")]),
            Some(3.0)
        );
        assert_eq!(sample(text, "up", &[]), Some(1.0));
        assert_eq!(sample(text, "h_bucket", &[("le", "+Inf")]), Some(4.0));
        assert_eq!(sample(text, "HELP", &[]), None);
    }
}

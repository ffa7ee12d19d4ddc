//! Pod sandboxes against a real crustd with the real CNI bridge, host-local and portmap plugins.
//!
//! Every test has its own bridge (`crust-pN`), /24 inside 10.88.0.0/16, host-local data dir in the
//! test's temp dir and cgroup parent (`/crust-e2e-N`), so tests run in parallel without meeting.
//! Guards delete the bridge and any cgroup left under the test's parent (killing what is in it)
//! even when an assertion fails; the harness unmounts what is left under the temp dir.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crust_e2e::net::{TestNet, mounts_under};
use crust_e2e::workload::namespaces;
use crust_e2e::{Crustd, cri, free_port, metric_value};
use tonic::Code;

fn pod_config(name: &str, net: &TestNet) -> cri::PodSandboxConfig {
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: "e2e".into(),
            attempt: 0,
        }),
        hostname: name.into(),
        labels: HashMap::from([("app".to_string(), name.to_string())]),
        annotations: HashMap::from([("note".to_string(), "kept as given".to_string())]),
        linux: Some(cri::LinuxPodSandboxConfig {
            cgroup_parent: net.cgroup_parent.clone(),
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

type Rt = cri::runtime_service_client::RuntimeServiceClient<tonic::transport::Channel>;

async fn run(rt: &mut Rt, config: cri::PodSandboxConfig) -> Result<String, tonic::Status> {
    rt.run_pod_sandbox(cri::RunPodSandboxRequest {
        config: Some(config),
        runtime_handler: String::new(),
    })
    .await
    .map(|r| r.into_inner().pod_sandbox_id)
}

async fn status(rt: &mut Rt, id: &str) -> cri::PodSandboxStatusResponse {
    rt.pod_sandbox_status(cri::PodSandboxStatusRequest {
        pod_sandbox_id: id.into(),
        verbose: true,
    })
    .await
    .expect("PodSandboxStatus")
    .into_inner()
}

fn ip_of(s: &cri::PodSandboxStatusResponse) -> String {
    s.status
        .as_ref()
        .and_then(|s| s.network.as_ref())
        .map(|n| n.ip.clone())
        .unwrap_or_default()
}

async fn stop(rt: &mut Rt, id: &str) {
    rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: id.into(),
    })
    .await
    .expect("StopPodSandbox");
}

async fn remove(rt: &mut Rt, id: &str) {
    rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: id.into(),
    })
    .await
    .expect("RemovePodSandbox");
}

async fn list(rt: &mut Rt, filter: Option<cri::PodSandboxFilter>) -> Vec<cri::PodSandbox> {
    rt.list_pod_sandbox(cri::ListPodSandboxRequest { filter })
        .await
        .expect("ListPodSandbox")
        .into_inner()
        .items
}

/// Runs a command inside the pod's namespaces (by their pinned files) and returns stdout.
fn in_ns(ns_args: &[String], cmd: &[&str]) -> String {
    let out = Command::new("nsenter")
        .args(ns_args)
        .args(cmd)
        .output()
        .expect("nsenter");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn pod_dir(crustd: &Crustd, id: &str) -> PathBuf {
    crustd.state_dir.join("pods").join(id)
}

/// Processes whose working directory is below `dir` (a pod's shim runs in its pod dir).
fn processes_under(dir: &Path) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.filter_map(Result::ok)
                .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
                .filter(|pid| {
                    std::fs::read_link(format!("/proc/{pid}/cwd"))
                        .map(|cwd| cwd.starts_with(dir))
                        .unwrap_or(false)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// What the issue asks for after Remove: no mount, netns file, cgroup, lease or process.
fn assert_gone(crustd: &Crustd, net: &TestNet, id: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !processes_under(&crustd.state_dir).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        processes_under(&crustd.state_dir),
        Vec::<i32>::new(),
        "process left (shim?)"
    );
    assert!(!pod_dir(crustd, id).exists(), "pod dir left");
    assert_eq!(mounts_under(&crustd.state_dir), Vec::<String>::new());
    assert_eq!(net.leases(), Vec::<String>::new(), "IPAM lease left");
    let leaf: Vec<PathBuf> = net
        .cgroup_dirs()
        .into_iter()
        .map(|d| d.join(format!("crust-{id}")))
        .filter(|d| d.exists())
        .collect();
    assert_eq!(leaf, Vec::<PathBuf>::new(), "pod cgroup left");
    assert!(
        !crustd
            .root_dir
            .join("cni")
            .join(format!("{id}.json"))
            .exists()
    );
}

#[tokio::test]
async fn pod_gets_ip_hostname_dns_and_is_cleaned_up() {
    let crustd = Crustd::start().await.expect("crustd starts");
    let net = TestNet::new(&crustd, 11);
    let mut rt = crustd.runtime().await.expect("client");

    let mut config = pod_config("web", &net);
    config.hostname = "web-host".into();
    config.dns_config = Some(cri::DnsConfig {
        servers: vec!["10.96.0.10".into()],
        searches: vec!["e2e.svc.cluster.local".into()],
        options: vec!["ndots:5".into()],
    });
    config.linux.as_mut().unwrap().sysctls =
        HashMap::from([("net.ipv4.ip_unprivileged_port_start".into(), "80".into())]);
    let id = run(&mut rt, config).await.expect("RunPodSandbox");
    assert_eq!(id.len(), 64);

    let s = status(&mut rt, &id[..12]).await;
    let st = s.status.as_ref().unwrap();
    assert_eq!(st.id, id);
    assert_eq!(st.state, cri::PodSandboxState::SandboxReady as i32);
    assert_eq!(st.metadata.as_ref().unwrap().name, "web");
    assert_eq!(st.labels["app"], "web");
    assert_eq!(st.annotations["note"], "kept as given");
    assert_eq!(st.runtime_handler, "runc");
    assert!(st.created_at > 0);
    let ip = ip_of(&s);
    assert!(ip.starts_with("10.88.11."), "pod IP {ip:?}");
    let info: serde_json::Value = serde_json::from_str(&s.info["info"]).expect("info JSON");
    let result_ip = info["cniResult"]["ips"][0]["address"]
        .as_str()
        .unwrap_or("");
    assert!(
        result_ip.starts_with(&format!("{ip}/")),
        "the ADD result kept: {info}"
    );
    assert_eq!(info["processStatus"], "running");
    assert_eq!(info["netNamespaceClosed"], false);

    let dir = pod_dir(&crustd, &id);
    let ns = |kind: &str| format!("--{kind}={}", dir.join("ns").join(kind).display());
    let addrs = in_ns(&[ns("net")], &["ip", "-4", "-o", "addr"]);
    assert!(addrs.contains(&format!("{ip}/24")), "{addrs}");
    assert!(addrs.contains("127.0.0.1/8"), "lo is up: {addrs}");
    assert_eq!(in_ns(&[ns("uts")], &["hostname"]).trim(), "web-host");
    assert_eq!(
        in_ns(
            &[ns("net")],
            &["cat", "/proc/sys/net/ipv4/ip_unprivileged_port_start"]
        )
        .trim(),
        "80"
    );
    assert_ne!(
        std::fs::metadata(dir.join("ns/net")).unwrap().ino(),
        std::fs::metadata("/proc/self/ns/net").unwrap().ino()
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("resolv.conf")).unwrap(),
        "search e2e.svc.cluster.local\nnameserver 10.96.0.10\noptions ndots:5\n"
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("hostname")).unwrap(),
        "web-host\n"
    );
    assert!(
        std::fs::read_to_string(dir.join("hosts"))
            .unwrap()
            .contains(&format!("{ip}\tweb-host"))
    );
    assert!(mounts_under(&dir).iter().any(|m| m.ends_with("/shm")));
    // The pod's shim runs, detached, in the pod dir, and answers at the address it left.
    let shim_pid: i32 = std::fs::read_to_string(dir.join("shim.pid"))
        .expect("shim.pid")
        .trim()
        .parse()
        .unwrap();
    assert_eq!(processes_under(&dir), vec![shim_pid]);
    assert!(dir.join("address").exists());
    assert_eq!(net.leases(), vec![ip.clone()]);
    assert!(!net.cgroup_dirs().is_empty(), "pod cgroup made");
    for d in net.cgroup_dirs() {
        assert!(d.join(format!("crust-{id}")).is_dir());
    }

    // List: filters are ANDed.
    let ready = cri::PodSandboxStateValue {
        state: cri::PodSandboxState::SandboxReady as i32,
    };
    let f = |id: &str, state: Option<cri::PodSandboxStateValue>, app: &str| cri::PodSandboxFilter {
        id: id.into(),
        state,
        label_selector: HashMap::from([("app".to_string(), app.to_string())]),
    };
    assert_eq!(
        list(&mut rt, Some(f(&id[..8], Some(ready), "web")))
            .await
            .len(),
        1
    );
    assert!(
        list(&mut rt, Some(f(&id[..8], Some(ready), "db")))
            .await
            .is_empty()
    );

    let m = crustd.metrics().await.expect("metrics");
    assert_eq!(
        metric_value(&m, "crust_pods{state=\"ready\"}"),
        Some(1.0),
        "{m}"
    );
    assert!(
        metric_value(
            &m,
            "crust_cni_operation_duration_seconds_count{operation=\"add\"}"
        )
        .unwrap_or(0.0)
            >= 1.0
    );

    // Stop: NOTREADY, IP released; twice is fine.
    stop(&mut rt, &id).await;
    stop(&mut rt, &id).await;
    let s = status(&mut rt, &id).await;
    assert_eq!(
        s.status.unwrap().state,
        cri::PodSandboxState::SandboxNotready as i32
    );
    assert_eq!(net.leases(), Vec::<String>::new());

    remove(&mut rt, &id).await;
    assert_gone(&crustd, &net, &id);
    remove(&mut rt, &id).await;
    stop(&mut rt, "0123456789abcdef").await;
    let err = rt
        .pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: id.clone(),
            verbose: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert!(list(&mut rt, None).await.is_empty());
}

#[tokio::test]
async fn host_network_pod_skips_cni_and_uses_host_namespaces() {
    let crustd = Crustd::start().await.expect("crustd starts");
    let net = TestNet::new(&crustd, 12);
    let mut rt = crustd.runtime().await.expect("client");
    let mut config = pod_config("hostnet", &net);
    let sc = config
        .linux
        .as_mut()
        .unwrap()
        .security_context
        .as_mut()
        .unwrap();
    sc.namespace_options.as_mut().unwrap().network = cri::NamespaceMode::Node as i32;
    let id = run(&mut rt, config).await.expect("RunPodSandbox");
    let s = status(&mut rt, &id).await;
    assert_eq!(ip_of(&s), "");
    let opts = s
        .status
        .unwrap()
        .linux
        .unwrap()
        .namespaces
        .unwrap()
        .options
        .unwrap();
    assert_eq!(opts.network, cri::NamespaceMode::Node as i32);
    let dir = pod_dir(&crustd, &id);
    assert!(!dir.join("ns/net").exists(), "no netns of its own");
    assert!(!dir.join("ns/uts").exists(), "host UTS with host network");
    assert!(dir.join("ns/ipc").exists());
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert_eq!(std::fs::read_to_string(dir.join("hostname")).unwrap(), host);
    assert!(net.leases().is_empty(), "CNI was not called");
    // Net sysctls are refused for a host-network pod.
    let mut bad = pod_config("hostnet-sysctl", &net);
    namespaces(&mut bad).network = cri::NamespaceMode::Node as i32;
    bad.linux.as_mut().unwrap().sysctls =
        HashMap::from([("net.ipv4.ip_forward".into(), "1".into())]);
    let err = run(&mut rt, bad).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    stop(&mut rt, &id).await;
    remove(&mut rt, &id).await;
    assert_gone(&crustd, &net, &id);

    // hostIPC: the host's IPC namespace and /dev/shm, and no IPC sysctls.
    let mut config = pod_config("hostipc", &net);
    let opts = namespaces(&mut config);
    opts.ipc = cri::NamespaceMode::Node as i32;
    let mut bad = config.clone();
    bad.metadata.as_mut().unwrap().name = "hostipc-sysctl".into();
    bad.linux.as_mut().unwrap().sysctls =
        HashMap::from([("kernel.shm_rmid_forced".into(), "1".into())]);
    let err = run(&mut rt, bad).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    let id = run(&mut rt, config).await.expect("hostIPC pod");
    let dir = pod_dir(&crustd, &id);
    assert!(!dir.join("ns/ipc").exists());
    assert!(dir.join("ns/net").exists());
    assert!(
        !mounts_under(&dir).iter().any(|m| m.ends_with("/shm")),
        "no shm of its own"
    );
    remove(&mut rt, &id).await;
    assert_gone(&crustd, &net, &id);
}

/// A listener in the pod's netns: `busybox nc -l` answering one connection.
struct PodListener(Child);

impl Drop for PodListener {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn port_mapping_reaches_a_listener_in_the_pod() {
    let crustd = Crustd::start().await.expect("crustd starts");
    let net = TestNet::new(&crustd, 13);
    let mut rt = crustd.runtime().await.expect("client");
    let host_port = free_port();
    let mut config = pod_config("ports", &net);
    config.port_mappings = vec![cri::PortMapping {
        protocol: cri::Protocol::Tcp as i32,
        container_port: 8080,
        host_port: host_port as i32,
        host_ip: "127.0.0.1".into(),
    }];
    let id = run(&mut rt, config).await.expect("RunPodSandbox");
    let netns = pod_dir(&crustd, &id).join("ns/net");
    let _listener = PodListener(
        Command::new("nsenter")
            .arg(format!("--net={}", netns.display()))
            .args([
                "busybox",
                "sh",
                "-c",
                "echo hello-from-pod | busybox nc -l -p 8080",
            ])
            .stdout(Stdio::null())
            .spawn()
            .expect("listener"),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let got = loop {
        let attempt = TcpStream::connect(("127.0.0.1", host_port)).and_then(|mut s| {
            s.set_read_timeout(Some(Duration::from_secs(2)))?;
            let mut buf = String::new();
            s.read_to_string(&mut buf)?;
            Ok(buf)
        });
        match attempt {
            Ok(b) if !b.is_empty() => break b,
            _ if Instant::now() > deadline => {
                panic!("no answer through 127.0.0.1:{host_port}: {attempt:?}")
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    assert_eq!(got.trim(), "hello-from-pod");
    remove(&mut rt, &id).await;
    assert_gone(&crustd, &net, &id);
    // The mapping went with the pod.
    let mut s = TcpStream::connect(("127.0.0.1", host_port));
    if let Ok(s) = s.as_mut() {
        let _ = s.write_all(b"x");
    }
}

#[tokio::test]
async fn stop_releases_the_ip_and_cni_failure_rolls_back() {
    let crustd = Crustd::start().await.expect("crustd starts");
    let net = TestNet::new(&crustd, 14);
    net.write_config(&crustd, Some("10.88.14.50"));
    let mut rt = crustd.runtime().await.expect("client");

    let a = run(&mut rt, pod_config("a", &net)).await.expect("pod a");
    assert_eq!(ip_of(&status(&mut rt, &a).await), "10.88.14.50");

    // The only address is taken: b fails in CNI ADD and leaves nothing behind.
    let err = run(&mut rt, pod_config("b", &net)).await.unwrap_err();
    assert_eq!(err.code(), Code::Internal, "{err:?}");
    assert_eq!(list(&mut rt, None).await.len(), 1);
    let pods: Vec<_> = std::fs::read_dir(crustd.state_dir.join("pods"))
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.file_name())
        .collect();
    assert_eq!(pods, vec![std::ffi::OsString::from(&a)], "b's pod dir left");
    let cgroups: Vec<_> = net
        .cgroup_dirs()
        .iter()
        .flat_map(|d| std::fs::read_dir(d).unwrap().filter_map(Result::ok))
        .filter(|e| e.file_type().unwrap().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != &format!("crust-{a}"))
        .collect();
    assert!(cgroups.is_empty(), "b's cgroup left: {cgroups:?}");

    // Stopping a releases the address: b (a retry) now gets it.
    stop(&mut rt, &a).await;
    let b = run(&mut rt, pod_config("b", &net)).await.expect("pod b");
    assert_eq!(ip_of(&status(&mut rt, &b).await), "10.88.14.50");

    for id in [&a, &b] {
        remove(&mut rt, id).await;
        assert!(!pod_dir(&crustd, id).exists());
    }
    assert_eq!(net.leases(), Vec::<String>::new());
    assert_eq!(mounts_under(&crustd.state_dir), Vec::<String>::new());
}

#[tokio::test]
async fn broken_cni_config_rolls_back_fully() {
    let crustd = Crustd::start().await.expect("crustd starts");
    let net = TestNet::new(&crustd, 15);
    crustd
        .write_cni_config(
            "10-test.conflist",
            &format!(
                r#"{{"cniVersion":"1.0.0","name":"broken","plugins":[
                  {{"type":"bridge","bridge":"{}","ipam":{{"type":"host-local","ranges":[[{{"subnet":"10.88.15.0/24"}}]],"dataDir":"{}"}}}},
                  {{"type":"no-such-plugin"}}]}}"#,
                net.bridge,
                net.ipam_dir.display()
            ),
        )
        .unwrap();
    let mut rt = crustd.runtime().await.expect("client");
    let err = run(&mut rt, pod_config("broken", &net)).await.unwrap_err();
    assert!(err.message().contains("no-such-plugin"), "{err:?}");
    assert!(list(&mut rt, None).await.is_empty());
    assert_eq!(
        std::fs::read_dir(crustd.state_dir.join("pods"))
            .unwrap()
            .count(),
        0,
        "pod dir left"
    );
    assert_eq!(mounts_under(&crustd.state_dir), Vec::<String>::new());
    assert!(
        net.cgroup_dirs().is_empty(),
        "cgroup left: {:?}",
        net.cgroup_dirs()
    );
    // bridge ADD had run: its lease must be gone.
    let leases: Vec<String> = std::fs::read_dir(net.ipam_dir.join("broken"))
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("10.88."))
                .collect()
        })
        .unwrap_or_default();
    assert!(leases.is_empty(), "lease left: {leases:?}");
    let cache: Vec<_> = std::fs::read_dir(crustd.root_dir.join("cni"))
        .map(|d| d.filter_map(Result::ok).collect())
        .unwrap_or_default();
    assert!(cache.is_empty(), "CNI cache left");
    let m = crustd.metrics().await.expect("metrics");
    assert!(
        metric_value(&m, "crust_cni_operation_errors_total{operation=\"add\"}").unwrap_or(0.0)
            >= 1.0,
        "{m}"
    );

    // No config at all: a clear error, nothing left.
    std::fs::remove_file(crustd.cni_conf_dir.join("10-test.conflist")).unwrap();
    let err = run(&mut rt, pod_config("noconf", &net)).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(net.cgroup_dirs().is_empty());
}

#[tokio::test]
async fn duplicate_names_and_unknown_handler_are_refused() {
    let crustd = Crustd::start().await.expect("crustd starts");
    let net = TestNet::new(&crustd, 16);
    let mut rt = crustd.runtime().await.expect("client");
    let a = run(&mut rt, pod_config("dup", &net)).await.expect("first");
    let err = run(&mut rt, pod_config("dup", &net)).await.unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    assert!(err.message().contains(&a), "names the holder: {err:?}");
    // Another attempt is another name.
    let mut again = pod_config("dup", &net);
    again.metadata.as_mut().unwrap().attempt = 1;
    let b = run(&mut rt, again).await.expect("attempt 1");

    let err = rt
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(pod_config("kata", &net)),
            runtime_handler: "kata".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("kata"), "{err:?}");

    // Once removed, the name is free again.
    remove(&mut rt, &a).await;
    let c = run(&mut rt, pod_config("dup", &net))
        .await
        .expect("name free again");
    for id in [&b, &c] {
        remove(&mut rt, id).await;
    }
    assert!(list(&mut rt, None).await.is_empty());
    assert_eq!(net.leases(), Vec::<String>::new());
}

#[tokio::test]
async fn restart_keeps_pods_and_ips() {
    let mut crustd = Crustd::start().await.expect("crustd starts");
    let net = TestNet::new(&crustd, 17);
    let mut rt = crustd.runtime().await.expect("client");
    let a = run(&mut rt, pod_config("a", &net)).await.expect("pod a");
    let b = run(&mut rt, pod_config("b", &net)).await.expect("pod b");
    stop(&mut rt, &b).await;
    let ip_a = ip_of(&status(&mut rt, &a).await);
    let shim_a = std::fs::read_to_string(pod_dir(&crustd, &a).join("shim.pid")).unwrap();

    crustd.crash().await.expect("crash");
    // The shim outlives crustd.
    assert!(
        Path::new(&format!("/proc/{}", shim_a.trim())).exists(),
        "shim died with crustd"
    );
    crustd.restart().await.expect("restart");
    // ... and finds crust's events endpoint again.
    let events = crustd.state_dir.join("events.sock");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !events.exists() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(events.exists(), "events endpoint not back after restart");
    let mut rt = crustd.runtime().await.expect("client");
    let pods = list(&mut rt, None).await;
    assert_eq!(pods.len(), 2);
    let state = |id: &str| pods.iter().find(|p| p.id == id).map(|p| p.state);
    assert_eq!(state(&a), Some(cri::PodSandboxState::SandboxReady as i32));
    assert_eq!(
        state(&b),
        Some(cri::PodSandboxState::SandboxNotready as i32)
    );
    assert_eq!(ip_of(&status(&mut rt, &a).await), ip_a);
    let err = run(&mut rt, pod_config("a", &net)).await.unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);

    // Stop and Remove after the restart still clean everything up (DEL from the cache).
    stop(&mut rt, &a).await;
    assert_eq!(net.leases(), Vec::<String>::new());
    remove(&mut rt, &a).await;
    remove(&mut rt, &b).await;
    assert_gone(&crustd, &net, &a);
    assert_gone(&crustd, &net, &b);
}

#[tokio::test]
async fn pod_pid_namespace_cgroup_limits_and_shm() {
    let crustd = Crustd::start().await.expect("crustd starts");
    let net = TestNet::new(&crustd, 18);
    let mut rt = crustd.runtime().await.expect("client");
    let mut config = pod_config("limits", &net);
    namespaces(&mut config).pid = cri::NamespaceMode::Pod as i32;
    let linux = config.linux.as_mut().unwrap();
    linux.resources = Some(cri::LinuxContainerResources {
        memory_limit_in_bytes: 64 << 20,
        cpu_shares: 512,
        ..Default::default()
    });
    linux.overhead = Some(cri::LinuxContainerResources {
        memory_limit_in_bytes: 16 << 20,
        ..Default::default()
    });
    let id = run(&mut rt, config).await.expect("RunPodSandbox");
    let s = status(&mut rt, &id).await;
    let info: serde_json::Value = serde_json::from_str(&s.info["info"]).expect("info JSON");
    let infra = info["namespaces"]["infra_pid"].as_i64().expect("infra pid") as i32;

    // The infra process is PID 1 of the pod's PID namespace, inside the pod's cgroup.
    let proc_status = std::fs::read_to_string(format!("/proc/{infra}/status")).unwrap();
    let nspid = proc_status
        .lines()
        .find(|l| l.starts_with("NSpid:"))
        .unwrap();
    assert!(nspid.trim_end().ends_with("\t1"), "{nspid}");
    let cgroup = std::fs::read_to_string(format!("/proc/{infra}/cgroup")).unwrap();
    assert!(cgroup.contains(&format!("crust-{id}")), "{cgroup}");
    assert!(pod_dir(&crustd, &id).join("ns/pid").exists());

    // Pod limits: resources plus overhead (cgroup v1 memory controller on this node).
    let mem = Path::new("/sys/fs/cgroup/memory")
        .join(net.cgroup_parent.trim_start_matches('/'))
        .join(format!("crust-{id}"));
    if mem.exists() {
        let limit: u64 = std::fs::read_to_string(mem.join("memory.limit_in_bytes"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert_eq!(limit, 80 << 20);
    }

    // /dev/shm is a 64 MiB tmpfs of the pod's own.
    let shm = pod_dir(&crustd, &id).join("shm");
    let line = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .find(|l| l.split(' ').nth(4) == Some(&*shm.to_string_lossy()))
        .map(str::to_string)
        .expect("shm mounted");
    assert!(
        line.contains("tmpfs") && line.contains("size=65536k"),
        "{line}"
    );

    // Without its PID 1 the pod cannot take new containers: it turns NOTREADY, as a containerd
    // pod whose pause container died.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(infra),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let st = status(&mut rt, &id).await.status.unwrap().state;
        if st == cri::PodSandboxState::SandboxNotready as i32 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "pod still READY without its infra"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    remove(&mut rt, &id).await;
    assert_gone(&crustd, &net, &id);
    assert!(
        !Path::new(&format!("/proc/{infra}")).exists(),
        "infra process left"
    );
}

#[tokio::test]
async fn a_shim_that_fails_to_start_rolls_back_the_network_too() {
    let crustd = Crustd::start_with(crust_e2e::Options {
        sandbox_config: "shim_binary = \"/bin/false\"".into(),
        ..Default::default()
    })
    .await
    .expect("crustd starts");
    let net = TestNet::new(&crustd, 19);
    let mut rt = crustd.runtime().await.expect("client");
    let err = run(&mut rt, pod_config("noshim", &net)).await.unwrap_err();
    assert!(err.message().contains("shim"), "{err:?}");
    assert!(list(&mut rt, None).await.is_empty());
    assert_eq!(net.leases(), Vec::<String>::new(), "lease left");
    assert_eq!(
        std::fs::read_dir(crustd.state_dir.join("pods"))
            .map(|d| d.count())
            .unwrap_or(0),
        0,
        "pod dir left"
    );
    assert_eq!(mounts_under(&crustd.state_dir), Vec::<String>::new());
    assert!(net.cgroup_dirs().is_empty(), "cgroup left");
}

#[tokio::test]
async fn a_kubelet_retry_after_a_timed_out_run_gets_the_pod_the_first_call_made() {
    // A pass-through plugin that takes its time, chained after the real bridge.
    let plugins = tempfile::tempdir().unwrap();
    let slow = plugins.path().join("slowpass");
    std::fs::write(
        &slow,
        "#!/bin/sh\n\
         conf=$(cat)\n\
         [ \"$CNI_COMMAND\" = ADD ] || exit 0\n\
         sleep 1\n\
         printf '%s' \"$conf\" | python3 -c 'import json,sys; print(json.dumps(json.load(sys.stdin)[\"prevResult\"]))'\n",
    )
    .unwrap();
    std::fs::set_permissions(&slow, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let crustd = Crustd::start_with(crust_e2e::Options {
        sandbox_config: format!(
            "cni_bin_dirs = [{:?}, \"/usr/lib/cni\"]",
            plugins.path().display().to_string()
        ),
        ..Default::default()
    })
    .await
    .expect("crustd starts");
    let net = TestNet::new(&crustd, 20);
    crustd
        .write_cni_config(
            "10-test.conflist",
            &format!(
                r#"{{"cniVersion":"1.0.0","name":"{name}","plugins":[
                  {{"type":"bridge","bridge":"{bridge}","isGateway":true,"ipMasq":false,
                    "ipam":{{"type":"host-local","ranges":[[{{"subnet":"10.88.20.0/24"}}]],"dataDir":"{dir}"}}}},
                  {{"type":"slowpass"}}]}}"#,
                name = net.network_name(),
                bridge = net.bridge,
                dir = net.ipam_dir.display()
            ),
        )
        .unwrap();
    let mut rt = crustd.runtime().await.expect("client");

    // kubelet's call gives up before the pod is ready.
    let mut req = tonic::Request::new(cri::RunPodSandboxRequest {
        config: Some(pod_config("slow", &net)),
        runtime_handler: String::new(),
    });
    req.set_timeout(Duration::from_millis(300));
    let err = rt.run_pod_sandbox(req).await.unwrap_err();
    assert!(
        matches!(err.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{err:?}"
    );
    // Its retry (same request) is handed the pod the first call went on to make, whether that
    // is still being made or already done.
    let id = run(&mut rt, pod_config("slow", &net))
        .await
        .expect("retry succeeds");
    let pods = list(&mut rt, None).await;
    assert_eq!(pods.len(), 1);
    assert_eq!(pods[0].id, id);
    assert!(ip_of(&status(&mut rt, &id).await).starts_with("10.88.20."));
    // A second retry now finds the name taken, as any duplicate does.
    let err = run(&mut rt, pod_config("slow", &net)).await.unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    remove(&mut rt, &id).await;
    assert_gone(&crustd, &net, &id);
}

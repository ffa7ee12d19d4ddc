//! The foundation: Version, Status, RuntimeConfig, config handling, the socket,
//! metrics, signals and the state store, against a real crustd.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use crust_e2e::{Crustd, Options, binary, cri, metric_value};
use nix::sys::signal::Signal;

const BRIDGE_CONFIG: &str = r#"{
  "cniVersion": "1.0.0",
  "name": "crust-e2e-status",
  "plugins": [
    { "type": "bridge", "bridge": "crust-st0", "isGateway": true, "ipMasq": false,
      "ipam": { "type": "host-local", "ranges": [[{ "subnet": "10.89.250.0/24" }]] } },
    { "type": "portmap", "capabilities": { "portMappings": true } }
  ]
}"#;

fn condition<'a>(status: &'a cri::StatusResponse, kind: &str) -> &'a cri::RuntimeCondition {
    status
        .status
        .as_ref()
        .expect("status")
        .conditions
        .iter()
        .find(|c| c.r#type == kind)
        .unwrap_or_else(|| panic!("no {kind} condition in {status:?}"))
}

#[tokio::test]
async fn version_names_crust_and_cri_v1() {
    let crustd = Crustd::start().await.expect("crustd starts");
    let v = crustd
        .runtime()
        .await
        .expect("client")
        .version(cri::VersionRequest {
            version: "v1".into(),
        })
        .await
        .expect("Version")
        .into_inner();
    assert_eq!(v.runtime_name, "crust");
    assert_eq!(v.runtime_version, env!("CARGO_PKG_VERSION"));
    assert_eq!(v.runtime_api_version, "v1");
    assert_eq!(v.version, "0.1.0");
}

#[tokio::test]
async fn status_follows_cni_config() {
    let crustd = Crustd::start().await.expect("crustd starts");
    let mut rt = crustd.runtime().await.expect("client");

    let s = rt
        .status(cri::StatusRequest { verbose: false })
        .await
        .expect("Status")
        .into_inner();
    let runtime = condition(&s, "RuntimeReady");
    assert!(runtime.status, "RuntimeReady false: {runtime:?}");
    let net = condition(&s, "NetworkReady");
    assert!(!net.status, "NetworkReady true without a CNI config");
    assert_eq!(net.reason, "NetworkPluginNotReady");
    assert!(!net.message.is_empty());
    assert!(s.info.is_empty(), "info without verbose: {:?}", s.info);
    assert!(s.runtime_handlers.iter().any(|h| h.name == "runc"));

    // A config appearing later is picked up without a restart.
    crustd
        .write_cni_config("10-crust.conflist", BRIDGE_CONFIG)
        .expect("write CNI config");
    let s = rt
        .status(cri::StatusRequest { verbose: true })
        .await
        .expect("Status")
        .into_inner();
    let net = condition(&s, "NetworkReady");
    assert!(net.status, "NetworkReady false with a CNI config: {net:?}");
    let cni: serde_json::Value =
        serde_json::from_str(s.info.get("cniConfig").expect("cniConfig info")).expect("json");
    assert_eq!(cni["network"], "crust-e2e-status");

    // A broken config alone is not a network.
    std::fs::remove_file(crustd.cni_conf_dir.join("10-crust.conflist")).expect("rm");
    crustd
        .write_cni_config("10-broken.conflist", "{ not json")
        .expect("write");
    let s = rt
        .status(cri::StatusRequest { verbose: false })
        .await
        .expect("Status")
        .into_inner();
    assert!(!condition(&s, "NetworkReady").status);
}

#[tokio::test]
async fn status_reports_runtime_not_ready_without_runc() {
    let crustd = Crustd::start_with(Options {
        sandbox_config:
            r#"runtime_handlers = { runc = { kind = "oci", path = "/nonexistent/runc" } }"#.into(),
        ..Default::default()
    })
    .await
    .expect("crustd starts");
    let s = crustd
        .runtime()
        .await
        .expect("client")
        .status(cri::StatusRequest { verbose: false })
        .await
        .expect("Status")
        .into_inner();
    let runtime = condition(&s, "RuntimeReady");
    assert!(!runtime.status);
    assert!(runtime.message.contains("/nonexistent/runc"), "{runtime:?}");
}

#[tokio::test]
async fn verbose_status_carries_the_effective_config() {
    let crustd = Crustd::start().await.expect("crustd starts");
    let s = crustd
        .runtime()
        .await
        .expect("client")
        .status(cri::StatusRequest { verbose: true })
        .await
        .expect("Status")
        .into_inner();
    let config: serde_json::Value =
        serde_json::from_str(s.info.get("config").expect("config info")).expect("config is JSON");
    assert_eq!(config["socket"], crustd.socket.display().to_string());
    assert_eq!(config["root_dir"], crustd.root_dir.display().to_string());
    assert_eq!(
        config["metrics"]["address"],
        crustd.metrics_addr.to_string()
    );
    assert_eq!(config["cgroup_driver"], "cgroupfs");
    for v in s.info.values() {
        serde_json::from_str::<serde_json::Value>(v).expect("every info value is JSON");
    }
}

#[tokio::test]
async fn runtime_config_reports_the_cgroup_driver() {
    let crustd = Crustd::start().await.expect("crustd starts");
    let r = crustd
        .runtime()
        .await
        .expect("client")
        .runtime_config(cri::RuntimeConfigRequest {})
        .await
        .expect("RuntimeConfig")
        .into_inner();
    assert_eq!(
        r.linux.expect("linux").cgroup_driver,
        cri::CgroupDriver::Cgroupfs as i32
    );
    drop(crustd);

    let crustd = Crustd::start_with(Options {
        extra_config: "cgroup_driver = \"systemd\"".into(),
        ..Default::default()
    })
    .await
    .expect("crustd starts");
    let r = crustd
        .runtime()
        .await
        .expect("client")
        .runtime_config(cri::RuntimeConfigRequest {})
        .await
        .expect("RuntimeConfig")
        .into_inner();
    assert_eq!(
        r.linux.expect("linux").cgroup_driver,
        cri::CgroupDriver::Systemd as i32
    );
}

#[tokio::test]
async fn checkpoint_of_an_unknown_container_is_not_found_naming_it() {
    let crustd = Crustd::start().await.expect("crustd starts");
    let err = crustd
        .runtime()
        .await
        .expect("client")
        .checkpoint_container(cri::CheckpointContainerRequest {
            container_id: "abc".into(),
            location: "/tmp/x.tar".into(),
            timeout: 0,
        })
        .await
        .expect_err("no such container");
    assert_eq!(err.code(), tonic::Code::NotFound);
    assert!(err.message().contains("abc"), "{err:?}");
}

#[tokio::test]
async fn bad_config_files_are_refused_with_file_line_and_key() {
    crust_e2e::require_root();
    let dir = tempfile::tempdir().expect("tempdir");
    let cases = [
        (
            "unknown.toml",
            "socket = \"/tmp/x.sock\"\nno_such_key = 1\n",
            ":2:",
            "no_such_key",
        ),
        (
            "badvalue.toml",
            "[metrics]\nenabled = true\naddress = 12\n",
            ":3:",
            "address",
        ),
        ("badtoml.toml", "socket = \"/tmp/x.sock\n", ":1", ""),
        (
            "baddriver.toml",
            "cgroup_driver = \"cgroupv3\"\n",
            ":1:",
            "cgroup_driver",
        ),
    ];
    for (name, text, line, key) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, text).expect("write");
        let out = std::process::Command::new(binary("crustd"))
            .arg("--config")
            .arg(&path)
            .output()
            .expect("run crustd");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{name} accepted");
        assert!(
            stderr.contains(&format!("{}{line}", path.display())),
            "{name}: {stderr}"
        );
        assert!(stderr.contains(key), "{name}: {stderr}");
    }
    // Nothing was created for the refused files.
    assert!(!std::path::Path::new("/tmp/x.sock").exists());
}

#[tokio::test]
async fn config_default_prints_a_loadable_config() {
    crust_e2e::require_root();
    let out = std::process::Command::new(binary("crustd"))
        .args(["config", "default"])
        .output()
        .expect("run crustd");
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).expect("utf-8");
    assert!(
        text.contains("socket = \"/run/crust/crust.sock\""),
        "{text}"
    );
    assert!(text.contains("root_dir = \"/var/lib/crust\""));
    assert!(text.contains("address = \"127.0.0.1:9801\""));
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("default.toml");
    std::fs::write(&path, &text).expect("write");
    let check = std::process::Command::new(binary("crustd"))
        .arg("--config")
        .arg(&path)
        .args(["config", "check"])
        .output()
        .expect("run crustd");
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
}

#[tokio::test]
async fn socket_is_0660_and_a_second_crustd_is_refused() {
    let crustd = Crustd::start().await.expect("crustd starts");
    let meta = std::fs::metadata(&crustd.socket).expect("socket exists");
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&meta), 0);

    // Another crustd with its own root but the same socket.
    let other = tempfile::tempdir().expect("tempdir");
    let config = other.path().join("crust.toml");
    std::fs::write(
        &config,
        format!(
            "socket = {:?}\nroot_dir = {:?}\nstate_dir = {:?}\n[metrics]\nenabled = false\n",
            crustd.socket,
            other.path().join("root"),
            other.path().join("state")
        ),
    )
    .expect("write");
    let mut second = std::process::Command::new(binary("crustd"))
        .arg("--config")
        .arg(&config)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = second.try_wait().expect("wait") {
            break s;
        }
        if std::time::Instant::now() > deadline {
            let _ = second.kill();
            let _ = second.wait();
            panic!("second crustd on the same socket kept running");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut second.stderr.take().expect("stderr"), &mut stderr)
        .expect("read");
    assert!(!status.success());
    assert!(stderr.contains("held by a running crustd"), "{stderr}");

    // The first one still serves.
    crustd
        .runtime()
        .await
        .expect("client")
        .version(cri::VersionRequest::default())
        .await
        .expect("first crustd still answers");
}

#[tokio::test]
async fn sigterm_exits_zero_and_removes_the_socket_and_a_stale_socket_is_replaced() {
    let mut crustd = Crustd::start().await.expect("crustd starts");
    crustd.signal(Signal::SIGTERM).expect("SIGTERM");
    let status = crustd
        .wait_exit(Duration::from_secs(15))
        .await
        .expect("exits");
    assert!(status.success(), "exit status {status}");
    assert!(!crustd.socket.exists(), "socket left behind");

    crustd.restart().await.expect("restarts");
    crustd.crash().await.expect("SIGKILL");
    assert!(crustd.socket.exists(), "a crash leaves the socket file");
    crustd
        .restart()
        .await
        .expect("restarts over the stale socket");
}

#[tokio::test]
async fn metrics_count_the_calls_just_made() {
    let crustd = Crustd::start().await.expect("crustd starts");
    let before = crustd.metrics().await.expect("GET /metrics");
    let ok_version = r#"crust_cri_requests_total{code="OK",method="Version"}"#;
    let v0 = metric_value(&before, ok_version).unwrap_or(0.0);

    let mut rt = crustd.runtime().await.expect("client");
    for _ in 0..3 {
        rt.version(cri::VersionRequest::default())
            .await
            .expect("Version");
    }
    rt.checkpoint_container(cri::CheckpointContainerRequest::default())
        .await
        .expect_err("no container id");

    let after = crustd.metrics().await.expect("GET /metrics");
    assert_eq!(metric_value(&after, ok_version), Some(v0 + 3.0), "{after}");
    assert_eq!(
        metric_value(
            &after,
            r#"crust_cri_requests_total{code="InvalidArgument",method="CheckpointContainer"}"#
        ),
        Some(1.0)
    );
    let count = metric_value(
        &after,
        r#"crust_cri_request_duration_seconds_count{method="Version"}"#,
    )
    .expect("duration histogram");
    assert!(count >= v0 + 3.0);
    for name in [
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_start_time_seconds",
    ] {
        let v = metric_value(&after, name).unwrap_or_else(|| panic!("{name} missing"));
        assert!(v > 0.0, "{name} = {v}");
    }
    // A young process may not have used a whole tick of CPU yet.
    assert!(metric_value(&after, "process_cpu_seconds_total").is_some());
}

/// Writes to the state store are atomic: a crustd killed with SIGKILL in the
/// middle of a burst of writes reopens a store holding the last acknowledged
/// write or a later one, never a torn or older value.
#[tokio::test]
async fn sigkill_during_state_writes_reopens_a_consistent_store() {
    let mut crustd = Crustd::start().await.expect("crustd starts");
    let cidr = |i: u32| format!("10.{}.{}.0/24", i / 256, i % 256);
    let acked = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));

    let writer = {
        let rt = crustd.runtime().await.expect("client");
        let acked = acked.clone();
        tokio::spawn(async move {
            let mut rt = rt;
            for i in 1..100_000u32 {
                let req = cri::UpdateRuntimeConfigRequest {
                    runtime_config: Some(cri::RuntimeConfig {
                        network_config: Some(cri::NetworkConfig { pod_cidr: cidr(i) }),
                    }),
                };
                if rt.update_runtime_config(req).await.is_err() {
                    return;
                }
                acked.store(i, std::sync::atomic::Ordering::SeqCst);
            }
        })
    };
    // Let a good number of writes land, then kill mid-burst.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while acked.load(std::sync::atomic::Ordering::SeqCst) < 50 {
        assert!(std::time::Instant::now() < deadline, "writes too slow");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    crustd.crash().await.expect("SIGKILL");
    let last_acked = acked.load(std::sync::atomic::Ordering::SeqCst);
    writer.await.expect("writer task");

    crustd.restart().await.expect("restarts on the same store");
    let s = crustd
        .runtime()
        .await
        .expect("client")
        .status(cri::StatusRequest { verbose: true })
        .await
        .expect("Status")
        .into_inner();
    let rc: serde_json::Value =
        serde_json::from_str(s.info.get("runtimeConfig").expect("runtimeConfig")).expect("json");
    let stored = rc["podCIDR"].as_str().expect("podCIDR").to_string();
    let index = (last_acked..last_acked + 2)
        .find(|i| cidr(*i) == stored)
        .unwrap_or_else(|| panic!("stored {stored:?}, last acknowledged {}", cidr(last_acked)));
    assert!(index >= last_acked);
}

//! PodSandboxStatus, verbose as `crictl inspectp` and monitors poll it: the answer
//! carries containerd's keys and the CNI result of RunPodSandbox, and no CNI plugin
//! runs to make it (the plugins here are wrappers that log every invocation).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Instant;

use crust_e2e::net::TestNet;
use crust_e2e::workload::*;
use crust_e2e::{Crustd, Options, cri};

/// `<dir>/log<plugin>`: logs `<plugin> <CNI_COMMAND>` to `log`, then runs the real plugin.
fn logging_plugin(dir: &Path, plugin: &str, log: &Path) {
    let path = dir.join(format!("log{plugin}"));
    let real = ["/usr/lib/cni", "/opt/cni/bin"]
        .iter()
        .map(|d| Path::new(d).join(plugin))
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("CNI plugin {plugin} not installed (hack/install-deps)"));
    std::fs::write(
        &path,
        format!(
            "#!/bin/sh\necho \"{plugin} $CNI_COMMAND\" >> {log}\nexec {real} \"$@\"\n",
            log = log.display(),
            real = real.display()
        ),
    )
    .expect("write plugin");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

fn invocations(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// `crictl inspectp <id>`, parsed.
fn inspectp(crustd: &Crustd, id: &str) -> serde_json::Value {
    let out = std::process::Command::new("/work/shared/bin/crictl")
        .args([
            "--runtime-endpoint",
            &format!("unix://{}", crustd.socket.display()),
            "inspectp",
            id,
        ])
        .output()
        .expect("crictl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("inspectp prints JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verbose_status_has_the_cni_result_and_runs_no_plugin() {
    let bin = tempfile::tempdir().expect("temp dir");
    let log = bin.path().join("invocations.log");
    logging_plugin(bin.path(), "bridge", &log);
    logging_plugin(bin.path(), "portmap", &log);
    let crustd = Crustd::start_with(Options {
        sandbox_config: format!(
            "cni_bin_dirs = [{:?}, \"/usr/lib/cni\", \"/opt/cni/bin\"]",
            bin.path()
        ),
        ..Default::default()
    })
    .await
    .expect("crustd");
    let net = TestNet::new(&crustd, 232);
    let conf = format!(
        r#"{{
  "cniVersion": "1.0.0",
  "name": "{name}",
  "plugins": [
    {{ "type": "logbridge", "bridge": "{bridge}", "isGateway": true,
      "ipam": {{ "type": "host-local", "ranges": [[{{ "subnet": "{subnet}" }}]], "dataDir": "{dir}" }} }},
    {{ "type": "logportmap", "capabilities": {{ "portMappings": true }} }}
  ]
}}"#,
        name = net.network_name(),
        bridge = net.bridge,
        subnet = net.subnet(),
        dir = net.ipam_dir.display(),
    );
    crustd
        .write_cni_config("10-test.conflist", &conf)
        .expect("CNI config");
    let mut rt = crustd.runtime().await.expect("client");
    let pc = pod_config("inspected", &net, &crustd.dir().join("logs"));
    let pod = run_pod(&mut rt, &pc).await;
    assert_eq!(invocations(&log), ["bridge ADD", "portmap ADD"]);

    let v = inspectp(&crustd, &pod);
    let ip = v["status"]["network"]["ip"].as_str().expect("pod IP");
    assert!(ip.starts_with("10.88.232."), "{v}");
    let info = &v["info"];
    assert_eq!(
        info["cniResult"]["ips"][0]["address"].as_str(),
        Some(format!("{ip}/24").as_str()),
        "{v}"
    );
    assert_eq!(info["processStatus"], "running", "{v}");
    assert_eq!(info["netNamespaceClosed"], false, "{v}");
    assert_eq!(info["runtimeHandler"], "runc", "{v}");
    assert!(
        info["runtimeType"]
            .as_str()
            .unwrap_or("")
            .ends_with("crust-shim"),
        "{v}"
    );
    assert_eq!(info["runtimeOptions"]["binaryName"], "runc", "{v}");
    // No infra process with the container PID mode kubelet asks for by default.
    assert_eq!(info["pid"], 0, "{v}");
    assert!(info["shimPid"].as_u64().unwrap_or(0) > 0, "{v}");
    assert_eq!(info["config"]["metadata"]["name"], "inspected", "{v}");

    // Polled like a monitor does: still no plugin runs.
    let request = cri::PodSandboxStatusRequest {
        pod_sandbox_id: pod.clone(),
        verbose: true,
    };
    let t = Instant::now();
    for _ in 0..50 {
        let s = rt
            .pod_sandbox_status(request.clone())
            .await
            .expect("status")
            .into_inner();
        assert!(s.info["info"].contains("cniResult"));
    }
    eprintln!("verbose PodSandboxStatus: {:?} per call", t.elapsed() / 50);
    inspectp(&crustd, &pod);
    assert_eq!(
        invocations(&log),
        ["bridge ADD", "portmap ADD"],
        "a plugin ran for a status"
    );

    // Stopped: the network is gone, and so is its result.
    rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: pod.clone(),
    })
    .await
    .expect("stop");
    assert_eq!(
        invocations(&log),
        ["bridge ADD", "portmap ADD", "portmap DEL", "bridge DEL"]
    );
    let v = inspectp(&crustd, &pod);
    assert_eq!(v["info"]["processStatus"], "stopped", "{v}");
    assert!(v["info"]["cniResult"].is_null(), "{v}");
    remove_pod(&mut rt, &pod).await;
}

//! RunPodSandbox / StopPodSandbox / RemovePodSandbox latency against a real crustd, printed, never
//! asserted (numbers of a shared debug build are for comparing changes, not for the record;
//! `hack/bench` is). Run with `cargo test -p crust-e2e --test pods_latency -- --ignored --nocapture`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crust_e2e::{Crustd, cri};

fn median_p90(mut v: Vec<Duration>) -> (f64, f64) {
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    (ms(v[v.len() / 2]), ms(v[(v.len() * 9) / 10]))
}

#[tokio::test]
#[ignore = "prints latencies; run on demand"]
async fn pod_latency() {
    let crustd = Crustd::start().await.expect("crustd starts");
    let ipam = crustd.dir().join("ipam");
    crustd
        .write_cni_config(
            "10-lat.conflist",
            &format!(
                r#"{{"cniVersion":"1.0.0","name":"crust-lat","plugins":[
                  {{"type":"bridge","bridge":"crust-lat0","isGateway":true,"ipMasq":false,
                    "ipam":{{"type":"host-local","ranges":[[{{"subnet":"10.88.99.0/24"}}]],"dataDir":"{}"}}}},
                  {{"type":"portmap","capabilities":{{"portMappings":true}}}}]}}"#,
                ipam.display()
            ),
        )
        .unwrap();
    let mut rt = crustd.runtime().await.expect("client");
    let n: usize = std::env::var("CRUST_LAT_PODS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let (mut run, mut stop, mut remove) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..=n {
        let config = cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: format!("lat-{i}"),
                uid: format!("uid-lat-{i}"),
                namespace: "lat".into(),
                attempt: 0,
            }),
            hostname: format!("lat-{i}"),
            labels: HashMap::new(),
            linux: Some(cri::LinuxPodSandboxConfig {
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
        };
        let t = Instant::now();
        let id = rt
            .run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(config),
                runtime_handler: String::new(),
            })
            .await
            .expect("RunPodSandbox")
            .into_inner()
            .pod_sandbox_id;
        let t_run = t.elapsed();
        let t = Instant::now();
        rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: id.clone(),
        })
        .await
        .expect("StopPodSandbox");
        let t_stop = t.elapsed();
        let t = Instant::now();
        rt.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: id })
            .await
            .expect("RemovePodSandbox");
        // The first pod is a warm-up.
        if i > 0 {
            run.push(t_run);
            stop.push(t_stop);
            remove.push(t.elapsed());
        }
    }
    for (name, v) in [
        ("RunPodSandbox", run),
        ("StopPodSandbox", stop),
        ("RemovePodSandbox", remove),
    ] {
        let (m, p) = median_p90(v);
        println!("{name}: median {m:.1} ms, p90 {p:.1} ms over {n} pods");
    }
    if std::env::var_os("CRUST_LAT_STEPS").is_some() {
        for l in crustd.log().lines().filter(|l| l.contains(" ms=")).take(40) {
            println!("{l}");
        }
    }
    let _ = std::process::Command::new("ip")
        .args(["link", "del", "crust-lat0"])
        .status();
}

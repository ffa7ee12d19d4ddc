//! Client deadlines (`grpc-timeout`): a call still running when its deadline passes
//! is answered DeadlineExceeded and what it was doing is cancelled — a pull leaves
//! nothing behind, an exec'd process is killed. The calls go over a bare HTTP/2
//! connection (`bare_clients`), so what the client sees is crustd's answer, not a
//! client-side timer's.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crust_e2e::registry::{Registry, throttling_proxy};
use crust_e2e::workload::*;
use crust_e2e::{Crustd, bare_clients, cri, metric_value};
use tonic::Code;

fn count(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |d| d.count())
}

fn pull_request(image: &str) -> cri::PullImageRequest {
    cri::PullImageRequest {
        image: Some(cri::ImageSpec {
            image: image.into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_past_its_deadline_is_deadline_exceeded_and_leaves_nothing() {
    let reg = Registry::start(None).expect("registry");
    // crust/busybox's 1 MB layer at 128 KB/s: about 8 s, far past a 1 s deadline.
    let rate = Arc::new(AtomicU64::new(128 * 1024));
    let proxy = throttling_proxy(reg.addr.clone(), rate.clone())
        .await
        .expect("proxy");
    let crustd = Crustd::start().await.expect("crustd");
    let images = crustd.root_dir.join("images");
    let image = format!("{proxy}/crust/busybox:latest");
    let (_, mut ic) = bare_clients(&crustd.socket).await.expect("clients");

    let mut req = tonic::Request::new(pull_request(&image));
    req.set_timeout(Duration::from_secs(1));
    let t = Instant::now();
    let err = ic.pull_image(req).await.expect_err("pulled within 1 s?");
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err}");
    assert!(err.message().contains("PullImage"), "{err}");
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());

    // The pull was dropped mid-layer: its threads finish, then nothing is left.
    wait_for(
        "no ingest file, no snapshot",
        Duration::from_secs(10),
        || count(&images.join("content/ingest")) == 0 && count(&images.join("snapshots")) == 0,
    )
    .await;
    assert_eq!(
        count(&images.join("content/blobs/sha256")),
        0,
        "no blob kept"
    );
    let m = crustd.metrics().await.expect("metrics");
    assert_eq!(
        metric_value(
            &m,
            r#"crust_cri_requests_total{code="DeadlineExceeded",method="PullImage"}"#
        ),
        Some(1.0),
        "{m}"
    );
    assert_eq!(metric_value(&m, "crust_image_pulls_in_progress"), Some(0.0));

    // crictl (grpc-go) with --pull-timeout: its own deadline ends the call (it resets
    // the stream as its deadline passes), and crustd drops the pull all the same.
    let out = std::process::Command::new("/work/shared/bin/crictl")
        .args([
            "--runtime-endpoint",
            &format!("unix://{}", crustd.socket.display()),
            "--image-endpoint",
            &format!("unix://{}", crustd.socket.display()),
            "pull",
            "--pull-timeout",
            "1s",
            &image,
        ])
        .output()
        .expect("crictl");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("DeadlineExceeded"), "{stderr}");
    wait_for(
        "no ingest file, no snapshot",
        Duration::from_secs(10),
        || count(&images.join("content/ingest")) == 0 && count(&images.join("snapshots")) == 0,
    )
    .await;
    assert_eq!(
        count(&images.join("content/blobs/sha256")),
        0,
        "no blob kept"
    );
    // Counted too: Canceled when crictl's reset came before crustd's own deadline.
    let m = crustd.metrics().await.expect("metrics");
    let pulls = |code: &str| {
        metric_value(
            &m,
            &format!(r#"crust_cri_requests_total{{code="{code}",method="PullImage"}}"#),
        )
        .unwrap_or(0.0)
    };
    assert_eq!(pulls("DeadlineExceeded") + pulls("Canceled"), 2.0, "{m}");

    // The same pull, at full speed, works.
    rate.store(0, Ordering::Relaxed);
    let id = pull(&crustd, &image).await;
    assert!(id.starts_with("sha256:"), "{id}");
    assert_eq!(count(&images.join("content/ingest")), 0);
    assert_eq!(count(&images.join("snapshots")), 1);
}

/// Pids of processes whose command line is exactly `args`.
fn pids_running(args: &[&str]) -> Vec<u32> {
    let want: Vec<u8> = args
        .iter()
        .flat_map(|a| [a.as_bytes(), b"\0"].concat())
        .collect();
    std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
                .filter(|pid| {
                    std::fs::read(format!("/proc/{pid}/cmdline")).ok() == Some(want.clone())
                })
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_sync_past_its_deadline_kills_the_process() {
    let (registry, crustd, net) = setup(231).await;
    let image = registry.image("crust/busybox:latest");
    pull(&crustd, &image).await;
    let mut rt = crustd.runtime().await.expect("client");
    let pc = pod_config("deadline", &net, &crustd.dir().join("logs"));
    let pod = run_pod(&mut rt, &pc).await;
    let id = create_sleeper(&mut rt, &pod, &pc, &image).await;
    start(&mut rt, &id).await;
    let (mut bare, _) = bare_clients(&crustd.socket).await.expect("clients");

    // The exec's own timeout (0: none) would let it run 31 s; the client's deadline is 1 s.
    let cmd = ["/bin/sleep", "31"];
    let mut req = tonic::Request::new(cri::ExecSyncRequest {
        container_id: id.clone(),
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        timeout: 0,
    });
    req.set_timeout(Duration::from_secs(1));
    let call = tokio::spawn(async move { bare.exec_sync(req).await });
    wait_for("the exec'd sleep", Duration::from_secs(5), || {
        !pids_running(&cmd).is_empty()
    })
    .await;
    let t = Instant::now();
    let err = call.await.expect("join").expect_err("exec answered?");
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err}");
    assert!(err.message().contains("ExecSync"), "{err}");
    assert!(t.elapsed() < Duration::from_secs(3));
    wait_for("the sleep killed", Duration::from_secs(5), || {
        pids_running(&cmd).is_empty()
    })
    .await;
    // Its FIFOs are gone, and the container execs as before.
    let exec_dir = crustd.state_dir.join("containers").join(&id).join("exec");
    wait_for("no exec FIFO left", Duration::from_secs(5), || {
        count(&exec_dir) == 0
    })
    .await;
    let out = exec(&mut rt, &id, &["/bin/echo", "still here"], 5)
        .await
        .expect("ExecSync");
    assert_eq!(out.stdout, b"still here\n");

    // crictl (grpc-go, as kubelet): for ExecSync its client deadline is its --timeout
    // plus the exec's own timeout, and none at all without one — `crictl --timeout 1s
    // exec --sync` of a 32 s sleep waits the 32 s. So here the exec's own timeout (1 s)
    // passes first, within a client deadline of 2 s: crictl must get a proper
    // DeadlineExceeded (trailers-only, its headers ending the stream).
    let out = std::process::Command::new("/work/shared/bin/crictl")
        .args([
            "--runtime-endpoint",
            &format!("unix://{}", crustd.socket.display()),
            "--timeout",
            "1s",
            "exec",
            "--sync",
            "--timeout",
            "1",
            &id,
            "/bin/sleep",
            "32",
        ])
        .output()
        .expect("crictl");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("DeadlineExceeded") || stderr.contains("deadline exceeded"),
        "{stderr}"
    );
    wait_for("crictl's sleep killed", Duration::from_secs(5), || {
        pids_running(&["/bin/sleep", "32"]).is_empty()
    })
    .await;
    remove_pod(&mut rt, &pod).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_events_stream_ends_at_its_deadline() {
    let crustd = Crustd::start().await.expect("crustd");
    let (mut rt, _) = bare_clients(&crustd.socket).await.expect("clients");
    let mut req = tonic::Request::new(cri::GetEventsRequest {});
    req.set_timeout(Duration::from_secs(1));
    let t = Instant::now();
    let mut stream = rt
        .get_container_events(req)
        .await
        .expect("the stream opens")
        .into_inner();
    let err = tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .expect("the stream ended")
        .expect_err("no event: the stream ends with its deadline");
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err}");
    assert!(
        t.elapsed() >= Duration::from_millis(900),
        "{:?}",
        t.elapsed()
    );
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_calls_past_their_deadline_finish_their_work() {
    let (_registry, crustd, net) = setup(233).await;
    let mut rt = crustd.runtime().await.expect("client");
    let (mut bare, _) = bare_clients(&crustd.socket).await.expect("clients");
    let pc = pod_config("late", &net, &crustd.dir().join("logs"));

    // A pod takes longer than 1 ms: the call is answered DeadlineExceeded, the create
    // runs on and is handed to kubelet's identical retry.
    let mut req = tonic::Request::new(cri::RunPodSandboxRequest {
        config: Some(pc.clone()),
        runtime_handler: String::new(),
    });
    req.set_timeout(Duration::from_millis(1));
    let err = bare.run_pod_sandbox(req).await.expect_err("a pod in 1 ms?");
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err}");
    let pod = run_pod(&mut rt, &pc).await;
    let pods = rt
        .list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
        .await
        .expect("list")
        .into_inner()
        .items;
    assert_eq!(pods.len(), 1, "one pod for the two calls: {pods:?}");
    assert_eq!(pods[0].id, pod);

    // A stop past its deadline still stops the pod (its network goes).
    let mut req = tonic::Request::new(cri::StopPodSandboxRequest {
        pod_sandbox_id: pod.clone(),
    });
    // (2 ms: enough for the request to arrive whole, and less than CNI DEL takes.)
    req.set_timeout(Duration::from_millis(2));
    if let Err(err) = bare.stop_pod_sandbox(req).await {
        assert_eq!(err.code(), Code::DeadlineExceeded, "{err}");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = rt
            .pod_sandbox_status(cri::PodSandboxStatusRequest {
                pod_sandbox_id: pod.clone(),
                verbose: false,
            })
            .await
            .expect("status")
            .into_inner()
            .status
            .expect("status");
        if s.state == cri::PodSandboxState::SandboxNotready as i32 {
            break;
        }
        assert!(Instant::now() < deadline, "the stop did not finish");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(net.leases().is_empty(), "IP released: {:?}", net.leases());
    remove_pod(&mut rt, &pod).await;
}

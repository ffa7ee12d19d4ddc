//! crustd or a shim SIGKILLed at a chosen moment: each test here pins down something
//! `hack/chaos` found by killing them at random moments.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crust_e2e::chaos::cgroup_procs;
use crust_e2e::net::TestNet;
use crust_e2e::registry::Registry;
use crust_e2e::workload::*;
use crust_e2e::{Crustd, Options, cri};
use nix::sys::signal::Signal;

/// A runc that, for `run`, starts the container with the real runc, then touches
/// `marker` and takes `hold` seconds more to answer: the container runs while the
/// shim's Create (and crustd's StartContainer) is still waiting for the runtime.
fn slow_runc(dir: &Path, marker: &Path, hold: u32) -> PathBuf {
    let runc = ["/usr/sbin/runc", "/usr/bin/runc", "/usr/local/sbin/runc"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("runc is installed (hack/install-deps)");
    let path = dir.join("slow-runc");
    std::fs::write(
        &path,
        format!(
            "#!/bin/sh\n{runc} \"$@\"\nrc=$?\n\
             for a in \"$@\"; do [ \"$a\" = run ] && touch {marker} && sleep {hold}; done\n\
             exit $rc\n",
            marker = marker.display()
        ),
    )
    .expect("write slow-runc");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    path
}

/// A crustd whose pods may run under `slow` (the slow runc), busybox pulled, a pod of
/// that handler with a sleeper created in it, and a StartContainer of it under way
/// (its task): once `marker` exists runc has started the container and the shim waits
/// for it a while longer.
struct CutStart {
    _registry: Registry,
    _tools: tempfile::TempDir,
    crustd: Crustd,
    net: TestNet,
    pod: String,
    id: String,
    start: Option<tokio::task::JoinHandle<Result<(), tonic::Status>>>,
}

impl CutStart {
    async fn begin(n: u8, hold: u32) -> CutStart {
        let registry = Registry::start(None).expect("registry");
        let tools = tempfile::tempdir().expect("temp dir");
        let marker = tools.path().join("started");
        let runtime = slow_runc(tools.path(), &marker, hold);
        let crustd = Crustd::start_with(Options {
            images_config: format!("insecure_registries = [\"{}\"]", registry.addr),
            sandbox_config: format!(
                "runtime_handlers = {{ runc = {{ kind = \"oci\", path = \"runc\" }}, \
                 slow = {{ kind = \"oci\", path = \"{}\" }} }}",
                runtime.display()
            ),
            ..Default::default()
        })
        .await
        .expect("crustd starts");
        let net = TestNet::new(&crustd, n);
        let image = registry.image("crust/busybox:latest");
        pull(&crustd, &image).await;
        let mut rt = crustd.runtime().await.expect("client");
        let pc = pod_config("cut-start", &net, &crustd.dir().join("logs"));
        let pod = rt
            .run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(pc.clone()),
                runtime_handler: "slow".into(),
            })
            .await
            .expect("RunPodSandbox")
            .into_inner()
            .pod_sandbox_id;
        let id = create_sleeper(&mut rt, &pod, &pc, &image).await;
        let start_id = id.clone();
        let start = tokio::spawn(async move {
            rt.start_container(cri::StartContainerRequest {
                container_id: start_id,
            })
            .await
            .map(drop)
        });
        wait_for(
            "runc to start the container",
            Duration::from_secs(20),
            || marker.exists(),
        )
        .await;
        CutStart {
            _registry: registry,
            _tools: tools,
            crustd,
            net,
            pod,
            id,
            start: Some(start),
        }
    }

    /// The StartContainer call got no answer.
    async fn start_was_cut(&mut self) -> bool {
        let call = self.start.take().expect("one start");
        call.await.expect("join").is_err()
    }

    /// The container's processes (in its cgroup).
    fn procs(&self) -> Vec<u32> {
        cgroup_procs(
            &self.net.cgroup_parent,
            &format!("crust-{}/{}", self.pod, self.id),
        )
    }

    /// StopPodSandbox leaves nothing of the container running; then the pod goes.
    async fn stop_and_remove(&self, rt: &mut Rt) {
        rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: self.pod.clone(),
        })
        .await
        .expect("StopPodSandbox");
        assert_eq!(
            self.procs(),
            Vec::<u32>::new(),
            "StopPodSandbox stopped the container"
        );
        remove_pod(rt, &self.pod).await;
        assert_no_cgroups_left(&self.net);
    }
}

/// StartContainer cut by a crustd crash after the shim started the container and
/// answered, before crustd recorded RUNNING (crustd stopped, then killed, as the answer
/// waits in its socket). The record said CREATED after the restart, so StopPodSandbox
/// left the container running and nothing could stop it (chaos seed 3). Now the restart
/// learns the start from the shim: RUNNING, and stopped with its pod.
#[tokio::test]
async fn a_start_the_shim_finished_before_a_crash_is_found_running_and_stops() {
    let mut cut = CutStart::begin(102, 2).await;
    cut.crustd.signal(Signal::SIGSTOP).expect("SIGSTOP crustd");
    // The slow runc answers, the shim records the task and answers a crustd that
    // will never read it.
    tokio::time::sleep(Duration::from_secs(4)).await;
    cut.crustd.crash().await.expect("SIGKILL crustd");
    assert!(cut.start_was_cut().await, "the start was cut");
    assert!(!cut.procs().is_empty(), "the container runs");
    cut.crustd.restart().await.expect("crustd starts again");
    let mut rt = cut.crustd.runtime().await.expect("client");
    let st = wait_state(
        &mut rt,
        &cut.id,
        &[cri::ContainerState::ContainerRunning],
        Duration::from_secs(15),
    )
    .await;
    assert!(st.started_at > 0, "{st:?}");
    cut.stop_and_remove(&mut rt).await;
}

/// StartContainer cut by a crustd crash while runc was starting the container: the
/// shim drops the request when crustd's connection closes, and never learns of the
/// container runc started. It ran on after the restart, unknown to crustd and its shim,
/// under a record that said CREATED. Now the restart ends it and records a failed start
/// (EXITED, StartError): its process ran, so it is not started a second time into the
/// same log (chaos saw a short container's lines twice when it stayed CREATED).
#[tokio::test]
async fn a_start_runc_began_when_crustd_crashed_is_a_failed_start() {
    let mut cut = CutStart::begin(103, 4).await;
    cut.crustd.crash().await.expect("SIGKILL crustd");
    assert!(cut.start_was_cut().await, "the start was cut");
    cut.crustd.restart().await.expect("crustd starts again");
    let mut rt = cut.crustd.runtime().await.expect("client");
    assert_eq!(
        cut.procs(),
        Vec::<u32>::new(),
        "the container runc started is ended"
    );
    let st = status(&mut rt, &cut.id).await;
    assert_eq!(
        st.state,
        cri::ContainerState::ContainerExited as i32,
        "{st:?}"
    );
    assert_eq!(st.reason, "StartError", "{st:?}");
    let again = rt
        .start_container(cri::StartContainerRequest {
            container_id: cut.id.clone(),
        })
        .await
        .expect_err("a second start");
    assert_eq!(again.code(), tonic::Code::FailedPrecondition, "{again:?}");
    cut.stop_and_remove(&mut rt).await;
}

//! Runtime handlers end to end: a pod whose RuntimeClass handler names containerd's own shim
//! (`containerd-shim-runc-v2`, Debian's containerd package, installed by hack/install-deps)
//! instead of crust-shim. Its containers run under that shim; crustd copies their output
//! FIFOs into the CRI log, learns exits from it, execs in them, and removing the pod shuts
//! the shim down leaving nothing behind.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crust_e2e::net::{TestNet, mounts_under};
use crust_e2e::registry::Registry;
use crust_e2e::workload::*;
use crust_e2e::{Crustd, Options, cri};
use tonic::Code;

const CONTAINERD_SHIM: &str = "/usr/bin/containerd-shim-runc-v2";
const HANDLER: &str = "runc-v2";

/// Kills the pod's shim by pid when a test fails before the pod was removed.
struct ShimGuard {
    pid: i32,
    pod: String,
}

impl Drop for ShimGuard {
    fn drop(&mut self) {
        if is_shim_of(self.pid, &self.pod) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(self.pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

fn cmdline(pid: i32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| {
            c.split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn is_shim_of(pid: i32, pod: &str) -> bool {
    let c = cmdline(pid);
    c.first()
        .is_some_and(|b| b.ends_with("containerd-shim-runc-v2"))
        && c.iter().any(|a| a == pod)
        && alive(pid as i64)
}

/// The live containerd-shim-runc-v2 processes serving pod `pod`.
fn shims_of(pod: &str) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| is_shim_of(*pid, pod))
        .collect()
}

fn ppid(pid: i64) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit(')')
        .next()?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

async fn setup_with_handler(n: u8) -> Option<(Registry, Crustd, TestNet)> {
    if !Path::new(CONTAINERD_SHIM).exists() {
        eprintln!(
            "SKIPPED: {CONTAINERD_SHIM} is missing (Debian package `containerd`; run hack/install-deps)"
        );
        return None;
    }
    let registry = Registry::start(None).expect("registry");
    let crustd = Crustd::start_with(Options {
        images_config: format!("insecure_registries = [\"{}\"]", registry.addr),
        sandbox_config: format!(
            "runtime_handlers = {{ runc = {{ kind = \"oci\", path = \"runc\" }}, \
             {HANDLER} = {{ kind = \"shim-v2\", path = \"{CONTAINERD_SHIM}\" }} }}"
        ),
        ..Default::default()
    })
    .await
    .expect("crustd starts");
    let net = TestNet::new(&crustd, n);
    Some((registry, crustd, net))
}

/// What most tests here start from: crustd with the containerd-shim handler, busybox
/// pulled, a client, and a ready pod run with `handler`. For a containerd-shim pod,
/// `guard` holds its one shim (killed should the test fail before removing the pod).
struct Scene {
    registry: Registry,
    crustd: Crustd,
    net: TestNet,
    image: String,
    rt: Rt,
    pc: cri::PodSandboxConfig,
    pod: String,
    guard: Option<ShimGuard>,
}

/// [`Scene`] on test network `n`, the pod named `name`; None (the test skips) without
/// containerd-shim-runc-v2.
async fn scene(n: u8, name: &str, handler: &str) -> Option<Scene> {
    let (registry, crustd, net) = setup_with_handler(n).await?;
    let image = registry.image("crust/busybox:latest");
    pull(&crustd, &image).await;
    let mut rt = crustd.runtime().await.expect("client");
    let pc = pod_config(name, &net, &crustd.dir().join("logs"));
    let pod = run_pod_with(&mut rt, &pc, handler).await;
    let guard = (handler == HANDLER).then(|| {
        let shims = shims_of(&pod);
        assert_eq!(shims.len(), 1, "shims of the pod: {shims:?}");
        ShimGuard {
            pid: shims[0],
            pod: pod.clone(),
        }
    });
    Some(Scene {
        registry,
        crustd,
        net,
        image,
        rt,
        pc,
        pod,
        guard,
    })
}

async fn run_pod_with(rt: &mut Rt, config: &cri::PodSandboxConfig, handler: &str) -> String {
    rt.run_pod_sandbox(cri::RunPodSandboxRequest {
        config: Some(config.clone()),
        runtime_handler: handler.into(),
    })
    .await
    .expect("RunPodSandbox")
    .into_inner()
    .pod_sandbox_id
}

#[tokio::test]
async fn a_pod_under_containerd_shim_runc_v2() {
    let Some(Scene {
        registry: _registry,
        crustd,
        net,
        image,
        mut rt,
        pc,
        pod,
        guard,
    }) = scene(231, "foreign", HANDLER).await
    else {
        return;
    };
    let log_dir = crustd.dir().join("logs");

    // One containerd shim serves the pod (checked by `scene`), started in the pod dir.
    let shim_pid = guard.as_ref().expect("the pod's shim").pid;
    let pod_dir = crustd.state_dir.join("pods").join(&pod);
    let address = std::fs::read_to_string(pod_dir.join("address")).expect("address");
    let pid_file = std::fs::read_to_string(pod_dir.join("shim.pid")).expect("shim.pid");
    assert_eq!(pid_file.trim(), shim_pid.to_string());
    let socket = PathBuf::from(address.trim().trim_start_matches("unix://"));
    assert!(socket.exists(), "{}", socket.display());
    let pod_status = rt
        .pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: pod.clone(),
            verbose: false,
        })
        .await
        .expect("PodSandboxStatus")
        .into_inner()
        .status
        .expect("status");
    assert_eq!(pod_status.runtime_handler, HANDLER);
    assert_eq!(pod_status.state, cri::PodSandboxState::SandboxReady as i32);

    // A container that writes to both streams and fails: exit code and a CRI-format log.
    let long_line = "x".repeat(40_000);
    let script = format!("echo out; echo err >&2; echo {long_line}; printf last; exit 3");
    let exits = create(
        &mut rt,
        &pod,
        &pc,
        container_config("exits", &image, &["/bin/sh", "-c", &script]),
    )
    .await
    .expect("CreateContainer");
    start(&mut rt, &exits).await;
    let s = wait_exited(&mut rt, &exits, Duration::from_secs(20)).await;
    assert_eq!((s.exit_code, s.reason.as_str()), (3, "Error"));
    assert!(s.started_at > 0 && s.finished_at >= s.started_at);
    let log_path = PathBuf::from(&s.log_path);
    assert_eq!(log_path, log_dir.join("exits/0.log"));
    // crustd's copy ends when the shim closes the FIFOs, just after the exit.
    wait_for("the last log line", Duration::from_secs(5), || {
        log_lines(&log_path).iter().any(|l| l.2 == "last")
    })
    .await;
    let lines = log_lines(&log_path);
    for want in [
        ("stdout", "F", "out"),
        ("stderr", "F", "err"),
        ("stdout", "F", "last"),
    ] {
        assert!(
            lines.contains(&(want.0.into(), want.1.into(), want.2.into())),
            "{want:?} in {:?}",
            lines
                .iter()
                .map(|l| (&l.0, &l.1, l.2.len()))
                .collect::<Vec<_>>()
        );
    }
    let long: Vec<_> = lines.iter().filter(|l| l.2.starts_with('x')).collect();
    assert!(long.len() >= 3, "{} pieces", long.len());
    assert!(long[..long.len() - 1].iter().all(|l| l.1 == "P"));
    assert_eq!(long.last().map(|l| l.1.as_str()), Some("F"));
    assert_eq!(
        long.iter().map(|l| l.2.len()).sum::<usize>(),
        long_line.len()
    );

    // A long-running container: its process is the shim's child; exec; log rotation; stop.
    let ticker = create_ticker(&mut rt, &pod, &pc, &image).await;
    start(&mut rt, &ticker).await;
    let pid = pid_of(&mut rt, &ticker).await;
    assert_eq!(
        ppid(pid),
        Some(shim_pid),
        "the container runs under the shim"
    );
    assert_eq!(shims_of(&pod), [shim_pid], "still one shim for the pod");

    let r = exec(
        &mut rt,
        &ticker,
        &["/bin/sh", "-c", "echo hi; echo oops >&2; exit 2"],
        10,
    )
    .await
    .expect("ExecSync");
    assert_eq!(
        (r.stdout.as_slice(), r.stderr.as_slice(), r.exit_code),
        (&b"hi\n"[..], &b"oops\n"[..], 2)
    );
    let err = exec(&mut rt, &ticker, &["/bin/sleep", "10"], 1)
        .await
        .expect_err("timeout");
    assert_eq!(err.code(), Code::DeadlineExceeded);

    // Resources are updated through the shim (runc update).
    update_memory_and_shares(&mut rt, &ticker, 64 << 20, 512).await;
    let memory_cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .expect("cgroup of the container")
        .lines()
        .find_map(|l| {
            let (_, rest) = l.split_once(':')?;
            let (controllers, path) = rest.split_once(':')?;
            controllers
                .split(',')
                .any(|c| c == "memory")
                .then(|| path.to_string())
        });
    if let Some(cg) = memory_cgroup {
        let limit =
            std::fs::read_to_string(format!("/sys/fs/cgroup/memory{cg}/memory.limit_in_bytes"))
                .expect("memory limit");
        assert_eq!(limit.trim(), (64u64 << 20).to_string());
    }

    let log = PathBuf::from(status(&mut rt, &ticker).await.log_path);
    let has_ticks = |p: &Path| {
        std::fs::read_to_string(p)
            .is_ok_and(|t| t.lines().filter(|l| l.contains(" tick ")).count() >= 2)
    };
    wait_for("ticks", Duration::from_secs(10), || has_ticks(&log)).await;
    let rotated = log.with_extension("log.1");
    std::fs::rename(&log, &rotated).expect("rename");
    rt.reopen_container_log(cri::ReopenContainerLogRequest {
        container_id: ticker.clone(),
    })
    .await
    .expect("ReopenContainerLog");
    wait_for("ticks in the reopened log", Duration::from_secs(10), || {
        has_ticks(&log)
    })
    .await;
    assert!(
        log_lines(&log)
            .iter()
            .all(|l| l.0 == "stdout" && l.1 == "F")
    );

    rt.stop_container(cri::StopContainerRequest {
        container_id: ticker.clone(),
        timeout: 0,
    })
    .await
    .expect("StopContainer");
    let s = status(&mut rt, &ticker).await;
    assert_eq!(s.state, cri::ContainerState::ContainerExited as i32);
    assert_eq!(s.exit_code, 137);
    let err = rt
        .reopen_container_log(cri::ReopenContainerLogRequest {
            container_id: ticker.clone(),
        })
        .await
        .expect_err("not running");
    assert_eq!(err.code(), Code::FailedPrecondition);

    // The shim published the exits to crustd's events endpoint.
    for id in [&exits, &ticker] {
        let log = crustd.log();
        assert!(
            log.lines().any(|l| l.contains("shim event")
                && l.contains("/tasks/exit")
                && l.contains(id.as_str())),
            "no /tasks/exit event for {id} in the crustd log"
        );
    }

    for id in [&exits, &ticker] {
        rt.remove_container(cri::RemoveContainerRequest {
            container_id: id.to_string(),
        })
        .await
        .expect("RemoveContainer");
        assert!(!crustd.state_dir.join("containers").join(id).exists());
        assert!(
            !crustd.state_dir.join("runc/k8s.io").join(id).exists(),
            "runc state of {id} is left"
        );
    }
    rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: pod.clone(),
    })
    .await
    .expect("StopPodSandbox");
    remove_pod(&mut rt, &pod).await;

    // Nothing is left: shim, its socket, the pod dir, mounts, cgroups.
    wait_for("the shim to exit", Duration::from_secs(5), || {
        !alive(shim_pid as i64)
    })
    .await;
    assert!(!socket.exists(), "shim socket {} is left", socket.display());
    assert!(!pod_dir.exists());
    assert_eq!(mounts_under(crustd.dir()), Vec::<String>::new());
    assert_no_cgroups_left(&net);
    assert!(
        !crustd.log().contains("shim did not exit; killing it"),
        "the shim had to be killed"
    );
}

#[tokio::test]
async fn crustd_restart_keeps_copying_the_logs_of_a_containerd_shim_pod() {
    let Some(Scene {
        registry: _registry,
        mut crustd,
        net,
        image,
        mut rt,
        pc,
        pod,
        guard,
    }) = scene(232, "restart", HANDLER).await
    else {
        return;
    };
    let shim_pid = guard.as_ref().expect("the pod's shim").pid;
    let id = create(
        &mut rt,
        &pod,
        &pc,
        container_config(
            "later",
            &image,
            &["/bin/sh", "-c", "echo before; sleep 2; echo after; exit 4"],
        ),
    )
    .await
    .expect("create");
    start(&mut rt, &id).await;
    let log = PathBuf::from(status(&mut rt, &id).await.log_path);
    wait_for("the first line", Duration::from_secs(10), || {
        std::fs::read_to_string(&log).is_ok_and(|t| t.contains(" before"))
    })
    .await;

    crustd.restart().await.expect("restart");
    let mut rt = crustd.runtime().await.expect("client");
    let s = wait_exited(&mut rt, &id, Duration::from_secs(20)).await;
    assert_eq!(s.exit_code, 4);
    wait_for(
        "the line written after the restart",
        Duration::from_secs(5),
        || std::fs::read_to_string(&log).is_ok_and(|t| t.contains(" after")),
    )
    .await;
    assert!(alive(shim_pid as i64), "the shim outlived crustd");

    remove_pod(&mut rt, &pod).await;
    wait_for("the shim to exit", Duration::from_secs(5), || {
        !alive(shim_pid as i64)
    })
    .await;
    assert_eq!(mounts_under(crustd.dir()), Vec::<String>::new());
    assert_no_cgroups_left(&net);
}

#[tokio::test]
async fn the_default_handler_still_runs_crust_shim() {
    let Some(Scene {
        registry: _registry,
        crustd,
        net,
        image,
        mut rt,
        pc,
        pod,
        guard: _guard,
    }) = scene(233, "default", "").await
    else {
        return;
    };
    assert!(
        shims_of(&pod).is_empty(),
        "no containerd shim for a runc pod"
    );
    let pod_dir = crustd.state_dir.join("pods").join(&pod);
    assert!(!pod_dir.join("shim.flavour").exists());
    assert!(!pod_dir.join("config.json").exists());
    let id = create(
        &mut rt,
        &pod,
        &pc,
        container_config("echo", &image, &["/bin/sh", "-c", "echo hello"]),
    )
    .await
    .expect("create");
    start(&mut rt, &id).await;
    let s = wait_exited(&mut rt, &id, Duration::from_secs(20)).await;
    assert_eq!(s.exit_code, 0);
    // crust-shim wrote the log itself: no output FIFOs in the bundle.
    assert!(
        !crustd
            .state_dir
            .join("containers")
            .join(&id)
            .join("io")
            .exists()
    );
    let lines = log_lines(Path::new(&s.log_path));
    assert!(
        lines.contains(&("stdout".into(), "F".into(), "hello".into())),
        "{lines:?}"
    );
    remove_pod(&mut rt, &pod).await;
    assert_no_cgroups_left(&net);
}

#[tokio::test]
async fn a_killed_containerd_shim_is_noticed_and_removal_cleans_up() {
    let Some(Scene {
        registry: _registry,
        crustd,
        net,
        image,
        mut rt,
        pc,
        pod,
        guard,
    }) = scene(234, "shimkill", HANDLER).await
    else {
        return;
    };
    let shim_pid = guard.as_ref().expect("the pod's shim").pid;
    let address = std::fs::read_to_string(crustd.state_dir.join("pods").join(&pod).join("address"))
        .expect("address");
    let socket = PathBuf::from(address.trim().trim_start_matches("unix://"));
    let id = create_sleeper(&mut rt, &pod, &pc, &image).await;
    start(&mut rt, &id).await;
    let pid = pid_of(&mut rt, &id).await;

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(shim_pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill shim");
    // Noticed: UNKNOWN, or EXITED once the exit is known.
    wait_state(
        &mut rt,
        &id,
        &[
            cri::ContainerState::ContainerUnknown,
            cri::ContainerState::ContainerExited,
        ],
        Duration::from_secs(10),
    )
    .await;
    let pod_state = rt
        .pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: pod.clone(),
            verbose: false,
        })
        .await
        .expect("PodSandboxStatus")
        .into_inner()
        .status
        .expect("status")
        .state;
    assert_eq!(pod_state, cri::PodSandboxState::SandboxNotready as i32);

    remove_pod(&mut rt, &pod).await;
    wait_for(
        &format!("container process {pid} to die with its pod"),
        Duration::from_secs(10),
        || !alive(pid),
    )
    .await;
    assert!(
        !socket.exists(),
        "socket {} of the killed shim is left",
        socket.display()
    );
    assert!(!crustd.state_dir.join("runc/k8s.io").join(&id).exists());
    assert_eq!(mounts_under(crustd.dir()), Vec::<String>::new());
    assert_no_cgroups_left(&net);
}

#[tokio::test]
async fn a_tty_container_under_containerd_shim_logs_its_terminal_output() {
    let Some(Scene {
        registry: _registry,
        crustd,
        net,
        image,
        mut rt,
        pc,
        pod,
        guard: _guard,
    }) = scene(235, "tty", HANDLER).await
    else {
        return;
    };
    let mut config = container_config(
        "term",
        &image,
        &["/bin/sh", "-c", "tty; echo on-a-terminal; exit 5"],
    );
    config.tty = true;
    let id = create(&mut rt, &pod, &pc, config).await.expect("create");
    start(&mut rt, &id).await;
    let s = wait_exited(&mut rt, &id, Duration::from_secs(20)).await;
    assert_eq!(s.exit_code, 5);
    let log = PathBuf::from(&s.log_path);
    wait_for("the terminal's output", Duration::from_secs(5), || {
        std::fs::read_to_string(&log).is_ok_and(|t| t.contains("on-a-terminal"))
    })
    .await;
    let lines = log_lines(&log);
    // A pty: one stream, lines ending in CR LF; `tty` names the pty.
    assert!(lines.iter().all(|l| l.0 == "stdout"), "{lines:?}");
    assert!(
        lines.iter().any(|l| l.2.starts_with("/dev/pts/")),
        "{lines:?}"
    );
    assert!(
        !crustd
            .state_dir
            .join("containers")
            .join(&id)
            .join("io/stderr")
            .exists()
    );
    remove_pod(&mut rt, &pod).await;
    assert_no_cgroups_left(&net);
}

#[tokio::test]
async fn an_exit_while_crustd_is_down_is_reported_and_the_shim_survives() {
    let Some(Scene {
        registry: _registry,
        mut crustd,
        net,
        image,
        mut rt,
        pc,
        pod,
        guard,
    }) = scene(236, "down", HANDLER).await
    else {
        return;
    };
    let shim_pid = guard.as_ref().expect("the pod's shim").pid;
    let id = create(
        &mut rt,
        &pod,
        &pc,
        container_config(
            "brief",
            &image,
            &["/bin/sh", "-c", "echo start; sleep 1; echo end; exit 6"],
        ),
    )
    .await
    .expect("create");
    start(&mut rt, &id).await;
    let pid = pid_of(&mut rt, &id).await;

    // crustd dies (nobody reads the shim's log or the container's FIFOs, the events
    // endpoint is gone) while the container finishes and the shim reports it.
    crustd.crash().await.expect("crash");
    wait_for("the container to finish", Duration::from_secs(10), || {
        !alive(pid)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(alive(shim_pid as i64), "the shim died without crustd");

    crustd.restart().await.expect("restart");
    let mut rt = crustd.runtime().await.expect("client");
    let s = wait_exited(&mut rt, &id, Duration::from_secs(20)).await;
    assert_eq!(s.exit_code, 6);
    assert!(
        log_lines(Path::new(&s.log_path))
            .iter()
            .any(|l| l.2 == "start"),
        "the output before the crash is in the log"
    );
    remove_pod(&mut rt, &pod).await;
    wait_for("the shim to exit", Duration::from_secs(5), || {
        !alive(shim_pid as i64)
    })
    .await;
    assert_eq!(mounts_under(crustd.dir()), Vec::<String>::new());
    assert_no_cgroups_left(&net);
}

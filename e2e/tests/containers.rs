//! Containers end to end: a real crustd, real runc under the pod's crust-shim,
//! real CNI plugins, and fixture images pulled from a real docker-registry.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crust_e2e::cri;
use crust_e2e::net::mounts_under;
use crust_e2e::workload::*;
use tonic::Code;

/// Sample count of `crust_container_operation_duration_seconds{operation}`.
const OP_COUNT: &str = "crust_container_operation_duration_seconds_count";
const EXITS: &str = "crust_container_exits_total";
const NOT_OOM: &[(&str, &str)] = &[("oom", "false")];
const OOM: &[(&str, &str)] = &[("oom", "true")];
const START: &[(&str, &str)] = &[("operation", "start")];
const STOP: &[(&str, &str)] = &[("operation", "stop")];
const REMOVE: &[(&str, &str)] = &[("operation", "remove")];

/// The ids ListContainers returns for `filter`, sorted.
async fn listed_ids(rt: &mut Rt, filter: cri::ContainerFilter) -> Vec<String> {
    let mut ids: Vec<String> = rt
        .list_containers(cri::ListContainersRequest {
            filter: Some(filter),
        })
        .await
        .expect("ListContainers")
        .into_inner()
        .containers
        .into_iter()
        .map(|c| c.id)
        .collect();
    ids.sort();
    ids
}

fn in_state(state: cri::ContainerState) -> cri::ContainerFilter {
    cri::ContainerFilter {
        state: Some(cri::ContainerStateValue {
            state: state as i32,
        }),
        ..Default::default()
    }
}

fn sorted(ids: &[&String]) -> Vec<String> {
    let mut v: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}

#[tokio::test]
async fn lifecycle_logs_exit_codes_and_cleanup() {
    let (registry, crustd, net) = setup(201).await;
    let image = registry.image("crust/busybox:latest");
    let image_id = pull(&crustd, &image).await;
    let mut rt = crustd.runtime().await.expect("client");
    let log_dir = crustd.dir().join("logs");
    let pc = pod_config("lifecycle", &net, &log_dir);
    let pod = run_pod(&mut rt, &pc).await;
    // crustd is this test's own: every container it counts is one made here.
    wait_container_gauges(&crustd, [0, 0, 0, 0]).await;
    let starts = counter(&crustd, OP_COUNT, START).await;
    let stops = counter(&crustd, OP_COUNT, STOP).await;
    let removes = counter(&crustd, OP_COUNT, REMOVE).await;
    let exits = counter(&crustd, EXITS, NOT_OOM).await;

    let long_line = "x".repeat(40_000);
    let script = format!("echo out; echo err >&2; echo {long_line}; exit 3");
    let id = create(
        &mut rt,
        &pod,
        &pc,
        container_config("exits", &image, &["/bin/sh", "-c", &script]),
    )
    .await
    .expect("CreateContainer");
    let s = status(&mut rt, &id).await;
    assert_eq!(s.state, cri::ContainerState::ContainerCreated as i32);
    assert_eq!(s.image_ref, image_id);
    assert!(s.created_at > 0 && s.started_at == 0);
    assert_eq!(s.labels.get("container").map(String::as_str), Some("exits"));
    assert_eq!(
        s.annotations.get("kept").map(String::as_str),
        Some("as given")
    );

    // A log path that would leave the pod's log directory is refused.
    for bad in ["../escape.log", "/etc/evil.log"] {
        let mut c = container_config("badlog", &image, &["/bin/true"]);
        c.log_path = bad.into();
        let err = create(&mut rt, &pod, &pc, c)
            .await
            .expect_err("bad log path");
        assert_eq!(err.code(), Code::InvalidArgument, "{bad}");
    }

    // A second container with the same name in the pod is refused, naming the holder.
    let dup = create(
        &mut rt,
        &pod,
        &pc,
        container_config("exits", &image, &["/bin/true"]),
    )
    .await
    .expect_err("duplicate name");
    assert_eq!(dup.code(), Code::AlreadyExists);
    assert!(dup.message().contains(&id), "{}", dup.message());
    // The refused creates are not counted: one container, CREATED.
    wait_container_gauges(&crustd, [1, 0, 0, 0]).await;

    start(&mut rt, &id).await;
    let s = wait_exited(&mut rt, &id, Duration::from_secs(20)).await;
    assert_eq!(s.exit_code, 3);
    assert_eq!(s.reason, "Error");
    wait_container_gauges(&crustd, [0, 0, 1, 0]).await;
    wait_metrics(
        &crustd,
        &[
            (OP_COUNT, START, starts + 1.0),
            (EXITS, NOT_OOM, exits + 1.0),
        ],
    )
    .await;
    assert_eq!(counter(&crustd, EXITS, OOM).await, 0.0);
    assert!(s.started_at > 0 && s.finished_at >= s.started_at);
    // Once its exit is recorded the task leaves the shim, as with containerd:
    // runc's state of it goes, the container stays listed until removed.
    let runc_state = crustd.state_dir.join("runc").join(&id);
    wait_for(
        "the runc state of an exited container to go",
        Duration::from_secs(10),
        || !runc_state.exists(),
    )
    .await;
    let log_path = PathBuf::from(&s.log_path);
    assert_eq!(log_path, log_dir.join("exits/0.log"));
    let lines = log_lines(&log_path);
    assert!(
        lines.contains(&("stdout".into(), "F".into(), "out".into())),
        "{lines:?}"
    );
    assert!(
        lines.contains(&("stderr".into(), "F".into(), "err".into())),
        "{lines:?}"
    );
    // The long line comes in 16 KiB partial pieces ending with a full one.
    let long: Vec<_> = lines.iter().filter(|l| l.2.starts_with('x')).collect();
    assert!(long.len() >= 3, "{} pieces", long.len());
    assert!(long[..long.len() - 1].iter().all(|l| l.1 == "P"));
    assert_eq!(long.last().map(|l| l.1.as_str()), Some("F"));
    assert_eq!(
        long.iter().map(|l| l.2.len()).sum::<usize>(),
        long_line.len()
    );

    // A clean exit says Completed.
    let ok = create(
        &mut rt,
        &pod,
        &pc,
        container_config("ok", &image, &["/bin/true"]),
    )
    .await
    .expect("create");
    start(&mut rt, &ok).await;
    let s = wait_exited(&mut rt, &ok, Duration::from_secs(20)).await;
    assert_eq!((s.exit_code, s.reason.as_str()), (0, "Completed"));

    // One container of each state: a running sleeper, an idle one never started.
    let sleeper = create_sleeper(&mut rt, &pod, &pc, &image).await;
    start(&mut rt, &sleeper).await;
    let idle = create(
        &mut rt,
        &pod,
        &pc,
        container_config("idle", &image, &["/bin/true"]),
    )
    .await
    .expect("create");
    wait_container_gauges(&crustd, [1, 1, 2, 0]).await;
    wait_metrics(
        &crustd,
        &[
            (OP_COUNT, START, starts + 3.0),
            (EXITS, NOT_OOM, exits + 2.0),
        ],
    )
    .await;

    // The state filter.
    use cri::ContainerState as S;
    assert_eq!(
        listed_ids(&mut rt, in_state(S::ContainerCreated)).await,
        [idle.as_str()]
    );
    assert_eq!(
        listed_ids(&mut rt, in_state(S::ContainerRunning)).await,
        [sleeper.as_str()]
    );
    assert_eq!(
        listed_ids(&mut rt, in_state(S::ContainerExited)).await,
        sorted(&[&id, &ok])
    );
    assert_eq!(
        listed_ids(&mut rt, in_state(S::ContainerUnknown)).await,
        Vec::<String>::new()
    );
    // The id filter: the full id or a unique prefix; ANDed with the state.
    let by_id = |id: &str| cri::ContainerFilter {
        id: id.to_string(),
        ..Default::default()
    };
    assert_eq!(listed_ids(&mut rt, by_id(&id)).await, [id.as_str()]);
    assert_eq!(
        listed_ids(&mut rt, by_id(&sleeper[..12])).await,
        [sleeper.as_str()]
    );
    assert_eq!(
        listed_ids(&mut rt, by_id("not-a-container")).await,
        Vec::<String>::new()
    );
    let running_with_id = |id: &str| cri::ContainerFilter {
        id: id.to_string(),
        ..in_state(S::ContainerRunning)
    };
    assert_eq!(
        listed_ids(&mut rt, running_with_id(&sleeper[..12])).await,
        [sleeper.as_str()]
    );
    assert_eq!(
        listed_ids(&mut rt, running_with_id(&id[..12])).await,
        Vec::<String>::new()
    );
    // A pod that does not exist has no containers.
    assert_eq!(
        listed_ids(
            &mut rt,
            cri::ContainerFilter {
                pod_sandbox_id: "not-a-pod".into(),
                ..Default::default()
            }
        )
        .await,
        Vec::<String>::new()
    );

    // A stop of a running container is timed; its exit counted.
    rt.stop_container(cri::StopContainerRequest {
        container_id: sleeper.clone(),
        timeout: 0,
    })
    .await
    .expect("StopContainer");
    wait_container_gauges(&crustd, [1, 0, 3, 0]).await;
    wait_metrics(
        &crustd,
        &[(OP_COUNT, STOP, stops + 1.0), (EXITS, NOT_OOM, exits + 3.0)],
    )
    .await;

    // List filters are ANDed.
    let listed = rt
        .list_containers(cri::ListContainersRequest {
            filter: Some(cri::ContainerFilter {
                pod_sandbox_id: pod[..12].to_string(),
                label_selector: HashMap::from([("container".to_string(), "ok".to_string())]),
                ..Default::default()
            }),
        })
        .await
        .expect("ListContainers")
        .into_inner()
        .containers;
    assert_eq!(
        listed.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(),
        [ok.as_str()]
    );

    // Remove by prefix, twice: the second is a no-op.
    for _ in 0..2 {
        rt.remove_container(cri::RemoveContainerRequest {
            container_id: id[..16].to_string(),
        })
        .await
        .expect("RemoveContainer");
    }
    let err = rt
        .container_status(cri::ContainerStatusRequest {
            container_id: id.clone(),
            verbose: false,
        })
        .await
        .expect_err("removed");
    assert_eq!(err.code(), Code::NotFound);
    // One removal timed (the second call, a no-op, is not), one container fewer.
    wait_container_gauges(&crustd, [1, 0, 2, 0]).await;
    wait_metrics(&crustd, &[(OP_COUNT, REMOVE, removes + 1.0)]).await;

    rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: pod.clone(),
    })
    .await
    .expect("StopPodSandbox");
    remove_pod(&mut rt, &pod).await;
    assert!(
        rt.list_containers(cri::ListContainersRequest::default())
            .await
            .expect("list")
            .into_inner()
            .containers
            .is_empty(),
        "the pod's containers went with it"
    );
    wait_container_gauges(&crustd, [0, 0, 0, 0]).await;
    assert_eq!(mounts_under(crustd.dir()), Vec::<String>::new());
    assert!(!crustd.state_dir.join("containers").join(&ok).exists());
    assert_no_cgroups_left(&net);
}

#[tokio::test]
async fn exec_sync_output_exit_codes_timeout_and_stop_timeout() {
    let (_registry, crustd, _net, image, mut rt, pc, pod) = scene(202, "exec").await;
    // PID 1 without a SIGTERM handler ignores SIGTERM: stop must fall back to SIGKILL.
    let id = create_sleeper(&mut rt, &pod, &pc, &image).await;
    start(&mut rt, &id).await;
    assert_eq!(
        status(&mut rt, &id).await.state,
        cri::ContainerState::ContainerRunning as i32
    );

    let r = exec(
        &mut rt,
        &id,
        &["/bin/sh", "-c", "echo hi; echo oops >&2; exit 7"],
        10,
    )
    .await
    .expect("ExecSync");
    assert_eq!(r.stdout, b"hi\n");
    assert_eq!(r.stderr, b"oops\n");
    assert_eq!(r.exit_code, 7);

    let r = exec(&mut rt, &id, &["/bin/hostname"], 10)
        .await
        .expect("ExecSync");
    assert_eq!(String::from_utf8_lossy(&r.stdout).trim(), "exec");

    // A command past its timeout is killed, and the call says it timed out.
    let started = Instant::now();
    let err = exec(
        &mut rt,
        &id,
        &["/bin/sh", "-c", "echo $$ > /tmp/timeout.pid; exec sleep 37"],
        1,
    )
    .await
    .expect_err("times out");
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    assert!(err.message().contains("timed out"), "{}", err.message());
    assert!(started.elapsed() < Duration::from_secs(15));
    let r = exec(&mut rt, &id, &["/bin/cat", "/tmp/timeout.pid"], 10)
        .await
        .expect("ExecSync");
    let pid: u32 = String::from_utf8_lossy(&r.stdout)
        .trim()
        .parse()
        .expect("the pid of the timed-out command");
    let proc_entry = format!("/proc/{pid}");
    let r = exec(&mut rt, &id, &["/usr/bin/test", "-e", &proc_entry], 10)
        .await
        .expect("ExecSync");
    assert_eq!(r.exit_code, 1, "the timed-out command (pid {pid}) lives on");
    let r = exec(&mut rt, &id, &["/bin/ps"], 10)
        .await
        .expect("ExecSync");
    let ps = String::from_utf8_lossy(&r.stdout);
    assert!(ps.contains("sleep 1000"), "ps lists processes:\n{ps}");
    assert!(
        !ps.contains("sleep 37"),
        "the timed-out command lives on:\n{ps}"
    );

    // A child left behind holding stdout does not hold the answer back.
    let started = Instant::now();
    let r = exec(
        &mut rt,
        &id,
        &["/bin/sh", "-c", "sleep 30 & echo started"],
        20,
    )
    .await
    .expect("ExecSync");
    assert_eq!(r.stdout, b"started\n");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );

    // Output over the cap is cut at 16 MiB, not kept whole.
    let r = exec(
        &mut rt,
        &id,
        &[
            "/bin/sh",
            "-c",
            "dd if=/dev/zero bs=1048576 count=20 2>/dev/null",
        ],
        30,
    )
    .await
    .expect("ExecSync");
    assert_eq!(r.stdout.len(), 16 * 1024 * 1024);
    // So is stderr, on its own.
    let r = exec(
        &mut rt,
        &id,
        &[
            "/bin/sh",
            "-c",
            "dd if=/dev/zero bs=1048576 count=20 2>/dev/null | cat >&2",
        ],
        30,
    )
    .await
    .expect("ExecSync");
    assert_eq!(
        (r.stdout.len(), r.stderr.len(), r.exit_code),
        (0, 16 * 1024 * 1024, 0)
    );

    let started = Instant::now();
    rt.stop_container(cri::StopContainerRequest {
        container_id: id.clone(),
        timeout: 2,
    })
    .await
    .expect("StopContainer");
    let waited = started.elapsed();
    assert!(waited >= Duration::from_secs(2), "stopped after {waited:?}");
    let s = status(&mut rt, &id).await;
    assert_eq!(s.state, cri::ContainerState::ContainerExited as i32);
    assert_eq!(s.exit_code, 137);
    // Stop again is a no-op; exec in a stopped container is refused.
    rt.stop_container(cri::StopContainerRequest {
        container_id: id.clone(),
        timeout: 2,
    })
    .await
    .expect("StopContainer again");
    let err = exec(&mut rt, &id, &["/bin/true"], 5)
        .await
        .expect_err("not running");
    assert_eq!(err.code(), Code::FailedPrecondition);

    remove_pod(&mut rt, &pod).await;
    assert_eq!(mounts_under(crustd.dir()), Vec::<String>::new());
}

#[tokio::test]
async fn crustd_restart_keeps_containers_and_reports_exits_that_happened_while_down() {
    let (_registry, mut crustd, net, image, mut rt, pc, pod) = scene(203, "restart").await;
    let sleeper = create_sleeper(&mut rt, &pod, &pc, &image).await;
    start(&mut rt, &sleeper).await;
    let short = create(
        &mut rt,
        &pod,
        &pc,
        container_config(
            "short",
            &image,
            &["/bin/sh", "-c", "echo before; sleep 2; echo after; exit 5"],
        ),
    )
    .await
    .expect("create");
    start(&mut rt, &short).await;
    let sleeper_pid = pid_of(&mut rt, &sleeper).await;
    // Created but not started: it must still be startable after the restart.
    let idle = create(
        &mut rt,
        &pod,
        &pc,
        container_config("idle", &image, &["/bin/sleep", "1000"]),
    )
    .await
    .expect("create");
    let pod_status = |mut rt: Rt, pod: String| async move {
        rt.pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: pod,
            verbose: false,
        })
        .await
        .expect("PodSandboxStatus")
        .into_inner()
        .status
        .expect("status")
    };
    let before = pod_status(rt.clone(), pod.clone()).await;

    crustd.crash().await.expect("SIGKILL crustd");
    tokio::time::sleep(Duration::from_secs(3)).await;
    crustd.restart().await.expect("restart");
    let mut rt = crustd.runtime().await.expect("client");

    let s = status(&mut rt, &sleeper).await;
    assert_eq!(s.state, cri::ContainerState::ContainerRunning as i32);
    assert!(alive(sleeper_pid));
    let r = exec(&mut rt, &sleeper, &["/bin/echo", "still here"], 10)
        .await
        .expect("exec after restart");
    assert_eq!(r.stdout, b"still here\n");

    let s = wait_exited(&mut rt, &short, Duration::from_secs(10)).await;
    assert_eq!(s.exit_code, 5);
    let texts: Vec<String> = log_lines(&PathBuf::from(&s.log_path))
        .into_iter()
        .map(|l| l.2)
        .collect();
    assert_eq!(
        texts,
        ["before", "after"],
        "the log kept flowing while crustd was down"
    );

    // The pod is as it was; the created container is still CREATED and starts.
    let after = pod_status(rt.clone(), pod.clone()).await;
    assert_eq!(after.state, cri::PodSandboxState::SandboxReady as i32);
    assert_eq!(
        (after.network, after.created_at),
        (before.network, before.created_at)
    );
    assert_eq!(
        status(&mut rt, &idle).await.state,
        cri::ContainerState::ContainerCreated as i32
    );
    start(&mut rt, &idle).await;
    assert_eq!(
        status(&mut rt, &idle).await.state,
        cri::ContainerState::ContainerRunning as i32
    );
    let idle_pid = pid_of(&mut rt, &idle).await;
    assert!(alive(idle_pid));

    remove_pod(&mut rt, &pod).await;
    assert!(!alive(sleeper_pid), "container process left running");
    assert!(!alive(idle_pid), "container process left running");
    assert_eq!(mounts_under(crustd.dir()), Vec::<String>::new());
    assert_no_cgroups_left(&net);
}

#[tokio::test]
async fn a_killed_shim_is_noticed_and_remove_cleans_up() {
    let (_registry, crustd, net, image, mut rt, pc, pod) = scene(204, "shimkill").await;
    let id = create_sleeper(&mut rt, &pod, &pc, &image).await;
    start(&mut rt, &id).await;
    let pid = pid_of(&mut rt, &id).await;

    let shim_pid: i32 =
        std::fs::read_to_string(crustd.state_dir.join("pods").join(&pod).join("shim.pid"))
            .expect("shim.pid")
            .trim()
            .parse()
            .expect("pid");
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

    // Its process outlived the shim; StopContainer kills it all the same.
    rt.stop_container(cri::StopContainerRequest {
        container_id: id.clone(),
        timeout: 1,
    })
    .await
    .expect("StopContainer");
    assert!(
        !alive(pid),
        "container process {pid} survived StopContainer"
    );
    // And it was reaped (by the host's init: its shim, the subreaper, is gone).
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    wait_for(
        &format!("container process {pid} to be reaped, not left a zombie"),
        Duration::from_secs(10),
        || !proc_dir.exists(),
    )
    .await;
    let s = status(&mut rt, &id).await;
    assert_eq!(s.state, cri::ContainerState::ContainerExited as i32);
    assert_ne!(s.finished_at, 0);

    rt.remove_container(cri::RemoveContainerRequest {
        container_id: id.clone(),
    })
    .await
    .expect("RemoveContainer");
    remove_pod(&mut rt, &pod).await;
    assert_eq!(mounts_under(crustd.dir()), Vec::<String>::new());
    assert_no_cgroups_left(&net);
}

#[tokio::test]
async fn reopen_container_log_follows_kubelet_rotation() {
    let (_registry, _crustd, _net, image, mut rt, pc, pod) = scene(205, "rotate").await;
    let id = create_ticker(&mut rt, &pod, &pc, &image).await;
    start(&mut rt, &id).await;
    let log = PathBuf::from(status(&mut rt, &id).await.log_path);
    let wait_for_lines = |path: PathBuf| async move {
        wait_for(
            &format!("lines in {}", path.display()),
            Duration::from_secs(10),
            || std::fs::read_to_string(&path).is_ok_and(|t| t.lines().count() >= 2),
        )
        .await
    };
    wait_for_lines(log.clone()).await;

    // kubelet rotates: rename, then ask for a reopen.
    let rotated = log.with_extension("log.1");
    std::fs::rename(&log, &rotated).expect("rename");
    rt.reopen_container_log(cri::ReopenContainerLogRequest {
        container_id: id.clone(),
    })
    .await
    .expect("ReopenContainerLog");
    wait_for_lines(log.clone()).await;
    let before = std::fs::read_to_string(&rotated).expect("rotated");
    let after = std::fs::read_to_string(&log).expect("new log");
    let last = |t: &str| -> u32 {
        t.lines()
            .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
            .next_back()
            .expect("a tick")
    };
    let first_new: u32 = after
        .lines()
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
        .expect("a tick");
    assert!(
        first_new > last(&before),
        "the new file continues where the old stopped"
    );

    // Not running: refused.
    rt.stop_container(cri::StopContainerRequest {
        container_id: id.clone(),
        timeout: 0,
    })
    .await
    .expect("stop");
    let err = rt
        .reopen_container_log(cri::ReopenContainerLogRequest {
            container_id: id.clone(),
        })
        .await
        .expect_err("not running");
    assert_eq!(err.code(), Code::FailedPrecondition);
    remove_pod(&mut rt, &pod).await;
}

#[tokio::test]
async fn container_events_stream_with_pod_and_container_statuses() {
    let (registry, crustd, net) = setup(206).await;
    let image = registry.image("crust/busybox:latest");
    pull(&crustd, &image).await;
    let mut rt = crustd.runtime().await.expect("client");
    let mut events = rt
        .get_container_events(cri::GetEventsRequest {})
        .await
        .expect("GetContainerEvents")
        .into_inner();
    let pc = pod_config("events", &net, &crustd.dir().join("logs"));
    let pod = run_pod(&mut rt, &pc).await;
    let id = create(
        &mut rt,
        &pod,
        &pc,
        container_config("brief", &image, &["/bin/true"]),
    )
    .await
    .expect("create");
    start(&mut rt, &id).await;
    wait_exited(&mut rt, &id, Duration::from_secs(20)).await;
    rt.remove_container(cri::RemoveContainerRequest {
        container_id: id.clone(),
    })
    .await
    .expect("remove");

    use cri::ContainerEventType as T;
    let mut seen = Vec::new();
    while seen.len() < 4 {
        let e = tokio::time::timeout(Duration::from_secs(10), events.message())
            .await
            .expect("an event within 10 s")
            .expect("stream")
            .expect("open stream");
        assert_eq!(e.container_id, id);
        assert!(e.created_at > 0);
        let pod_status = e.pod_sandbox_status.as_ref().expect("pod status");
        assert_eq!(pod_status.id, pod);
        let kind = T::try_from(e.container_event_type).expect("event type");
        if kind == T::ContainerStoppedEvent {
            let s = e
                .containers_statuses
                .iter()
                .find(|s| s.id == id)
                .expect("the container's status");
            assert_eq!(s.state, cri::ContainerState::ContainerExited as i32);
        }
        if kind == T::ContainerDeletedEvent {
            assert!(e.containers_statuses.iter().all(|s| s.id != id));
        }
        seen.push(kind);
    }
    assert_eq!(
        seen,
        [
            T::ContainerCreatedEvent,
            T::ContainerStartedEvent,
            T::ContainerStoppedEvent,
            T::ContainerDeletedEvent
        ]
    );
    remove_pod(&mut rt, &pod).await;
}

#[tokio::test]
async fn containers_of_a_pod_without_cgroup_parent_leave_no_cgroups() {
    let (registry, crustd, net) = setup(207).await;
    let image = registry.image("crust/busybox:latest");
    pull(&crustd, &image).await;
    let mut rt = crustd.runtime().await.expect("client");
    let mut pc = pod_config("noparent", &net, &crustd.dir().join("logs"));
    if let Some(l) = pc.linux.as_mut() {
        l.cgroup_parent = String::new();
    }
    let pod = run_pod(&mut rt, &pc).await;
    let id = create_sleeper(&mut rt, &pod, &pc, &image).await;
    start(&mut rt, &id).await;
    // Stop the pod with its container running, then remove it, as the bench does.
    rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: pod.clone(),
    })
    .await
    .expect("StopPodSandbox");
    remove_pod(&mut rt, &pod).await;
    let left: Vec<PathBuf> = crust_e2e::net::cgroup_mounts()
        .into_iter()
        .flat_map(|m| {
            let crust = m.join("crust");
            [crust.join(&id), crust.join(format!("crust-{pod}"))]
        })
        .filter(|d| d.exists())
        .collect();
    assert_eq!(left, Vec::<PathBuf>::new(), "cgroups left behind");
}

#[tokio::test]
async fn a_kubelet_retry_of_a_create_gets_the_container_not_a_name_conflict() {
    let (_registry, _crustd, _net, image, mut rt, pc, pod) = scene(208, "retry").await;
    let config = container_config("slow", &image, &["/bin/sleep", "1000"]);

    // kubelet gives up on the first call (here: at once) and sends it again.
    let first = {
        let mut rt = rt.clone();
        let (pod, pc, config) = (pod.clone(), pc.clone(), config.clone());
        tokio::time::timeout(Duration::from_millis(1), async move {
            create(&mut rt, &pod, &pc, config).await
        })
        .await
    };
    let retried = create(&mut rt, &pod, &pc, config.clone())
        .await
        .expect("the retry succeeds");
    if let Ok(Ok(id)) = first {
        assert_eq!(id, retried, "both calls name the same container");
    }
    // The same request again gets the same, still untouched, container.
    let again = create(&mut rt, &pod, &pc, config.clone())
        .await
        .expect("an identical retry");
    assert_eq!(again, retried);
    let named: Vec<_> = rt
        .list_containers(cri::ListContainersRequest::default())
        .await
        .expect("list")
        .into_inner()
        .containers
        .into_iter()
        .filter(|c| c.metadata.as_ref().is_some_and(|m| m.name == "slow"))
        .collect();
    assert_eq!(named.len(), 1, "one container for the name");
    let mut other = config.clone();
    other.command = vec!["/bin/true".into()];
    let err = create(&mut rt, &pod, &pc, other)
        .await
        .expect_err("a different request for the same name");
    assert_eq!(err.code(), Code::AlreadyExists);
    assert!(err.message().contains(&retried), "{}", err.message());
    // Once started, the container is no longer a create to hand back.
    start(&mut rt, &retried).await;
    let err = create(&mut rt, &pod, &pc, config)
        .await
        .expect_err("the name is used by a running container");
    assert_eq!(err.code(), Code::AlreadyExists);
    remove_pod(&mut rt, &pod).await;
}

#[tokio::test]
async fn crustd_killed_amid_creates_leaves_no_orphan_bundle_or_mount() {
    let (_registry, mut crustd, _net, image, rt, pc, pod) = scene(209, "crashcreate").await;
    let bundles = crustd.dir().join("state/containers");

    // A burst of creates, and crustd killed while they run: some are
    // recorded, some are cut short somewhere between mount and record.
    let mut calls = Vec::new();
    for i in 0..12 {
        let (mut rt, pod, pc) = (rt.clone(), pod.clone(), pc.clone());
        let config = container_config(&format!("c{i}"), &image, &["/bin/sleep", "1000"]);
        calls.push(tokio::spawn(async move {
            create(&mut rt, &pod, &pc, config).await
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_dir(&bundles).map_or(0, |d| d.count()) < 3 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    crustd.crash().await.expect("SIGKILL crustd");
    for c in calls {
        let _ = c.await;
    }
    crustd.restart().await.expect("restart");

    // Every bundle and every rootfs mount left is a container crustd lists.
    let mut rt = crustd.runtime().await.expect("client");
    let listed: Vec<String> = rt
        .list_containers(cri::ListContainersRequest::default())
        .await
        .expect("list")
        .into_inner()
        .containers
        .into_iter()
        .map(|c| c.id)
        .collect();
    let mut dirs: Vec<String> = std::fs::read_dir(&bundles)
        .expect("bundles dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    dirs.sort();
    let mut expected = listed.clone();
    expected.sort();
    assert_eq!(
        dirs, expected,
        "bundle directories are exactly the listed containers"
    );
    let mounts = mounts_under(&bundles);
    for m in &mounts {
        assert!(
            listed.iter().any(|id| m.contains(id.as_str())),
            "mount {m} belongs to no container ({listed:?})"
        );
    }
    // And those work: one starts, and removing the pod leaves nothing.
    if let Some(id) = listed.first() {
        start(&mut rt, id).await;
    }
    remove_pod(&mut rt, &pod).await;
    assert_eq!(mounts_under(crustd.dir()), Vec::<String>::new());
    assert_eq!(
        std::fs::read_dir(&bundles).map_or(0, |d| d.count()),
        0,
        "no bundle left"
    );
}

#[tokio::test]
async fn creates_racing_remove_pod_sandbox_leave_no_container_behind() {
    let (_registry, crustd, _net, image, mut rt, pc, pod) = scene(210, "racecreate").await;

    // Creates keep coming, each right after the last, until the pod refuses them.
    let mut calls = Vec::new();
    for t in 0..4 {
        let (mut rt, pod, pc, image) = (rt.clone(), pod.clone(), pc.clone(), image.clone());
        calls.push(tokio::spawn(async move {
            for n in 0.. {
                let config = container_config(&format!("c{t}-{n}"), &image, &["/bin/sleep", "1"]);
                if let Err(e) = create(&mut rt, &pod, &pc, config).await {
                    return e;
                }
            }
            unreachable!()
        }));
    }
    tokio::time::sleep(Duration::from_millis(30)).await;
    remove_pod(&mut rt, &pod).await;
    for c in calls {
        // Too late: the pod was stopped or gone.
        let e = c.await.expect("create task");
        assert!(
            matches!(e.code(), Code::FailedPrecondition | Code::NotFound),
            "{e:?}"
        );
    }
    let left = rt
        .list_containers(cri::ListContainersRequest::default())
        .await
        .expect("list")
        .into_inner()
        .containers;
    let names: Vec<_> = left
        .iter()
        .filter_map(|c| c.metadata.as_ref())
        .map(|m| &m.name)
        .collect();
    assert!(names.is_empty(), "containers outlived their pod: {names:?}");
    let bundles = crustd.dir().join("state/containers");
    assert_eq!(
        std::fs::read_dir(&bundles).map_or(0, |d| d.count()),
        0,
        "no bundle left"
    );
    assert_eq!(mounts_under(crustd.dir()), Vec::<String>::new());
}

#[tokio::test]
async fn a_second_start_of_a_container_leaves_it_running_and_a_stopped_pod_starts_nothing() {
    let (_registry, crustd, net, image, mut rt, pc, pod) = scene(218, "twostarts").await;
    let id = create_sleeper(&mut rt, &pod, &pc, &image).await;

    // kubelet retries a StartContainer it gave up on: both calls race.
    let start_call = |mut rt: Rt, id: String| async move {
        rt.start_container(cri::StartContainerRequest { container_id: id })
            .await
    };
    let (a, b) = tokio::join!(
        start_call(rt.clone(), id.clone()),
        start_call(rt.clone(), id.clone())
    );
    let oks = [&a, &b].iter().filter(|r| r.is_ok()).count();
    assert_eq!(oks, 1, "one start wins: {a:?} {b:?}");
    for r in [&a, &b] {
        if let Err(e) = r {
            assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
        }
    }
    let s = status(&mut rt, &id).await;
    assert_eq!(s.state, cri::ContainerState::ContainerRunning as i32);
    let pid = pid_of(&mut rt, &id).await;
    assert!(alive(pid), "the container runs");

    // A stopped pod starts nothing.
    let late = create(
        &mut rt,
        &pod,
        &pc,
        container_config("late", &image, &["/bin/sleep", "1000"]),
    )
    .await
    .expect("create");
    rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: pod.clone(),
    })
    .await
    .expect("StopPodSandbox");
    let err = rt
        .start_container(cri::StartContainerRequest {
            container_id: late.clone(),
        })
        .await
        .expect_err("start in a stopped pod");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(!alive(pid), "StopPodSandbox stopped the running one");
    remove_pod(&mut rt, &pod).await;
    assert_eq!(mounts_under(crustd.dir()), Vec::<String>::new());
    assert_no_cgroups_left(&net);
}

#[tokio::test]
async fn stdin_true_gives_the_process_a_stdin_that_waits_for_a_writer() {
    let (_registry, crustd, _net, image, mut rt, pc, pod) = scene(219, "stdin").await;
    let reader = &["/bin/sh", "-c", "read line; echo got:$line"];

    // Without stdin the process reads /dev/null: EOF at once, it ends.
    let closed = create(
        &mut rt,
        &pod,
        &pc,
        container_config("nostdin", &image, reader),
    )
    .await
    .expect("create");
    start(&mut rt, &closed).await;
    let s = wait_exited(&mut rt, &closed, Duration::from_secs(10)).await;
    assert_eq!(s.exit_code, 0);

    // With stdin it waits for what an attach writes, and reads it.
    let mut c = container_config("stdin", &image, reader);
    c.stdin = true;
    let open = create(&mut rt, &pod, &pc, c).await.expect("create");
    start(&mut rt, &open).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        status(&mut rt, &open).await.state,
        cri::ContainerState::ContainerRunning as i32,
        "it waits on its stdin"
    );
    let fifo = crustd
        .state_dir
        .join("containers")
        .join(&open)
        .join("stdin");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&fifo)
        .and_then(|mut f| std::io::Write::write_all(&mut f, b"hello\n"))
        .expect("write the stdin FIFO");
    let s = wait_exited(&mut rt, &open, Duration::from_secs(10)).await;
    assert_eq!(s.exit_code, 0);
    let lines: Vec<String> = log_lines(&PathBuf::from(&s.log_path))
        .into_iter()
        .map(|l| l.2)
        .collect();
    assert_eq!(lines, vec!["got:hello".to_string()]);

    remove_pod(&mut rt, &pod).await;
}

#[tokio::test]
async fn stop_container_sends_the_image_stop_signal() {
    let (registry, crustd, net) = setup(223).await;
    // StopSignal SIGQUIT; its CMD says ready, then traps SIGQUIT (not SIGTERM) and exits 0.
    let image = registry.image("crust/stopsignal:latest");
    pull(&crustd, &image).await;
    let mut rt = crustd.runtime().await.expect("client");
    let pc = pod_config("stopsig", &net, &crustd.dir().join("logs"));
    let pod = run_pod(&mut rt, &pc).await;
    let id = create(&mut rt, &pod, &pc, container_config("quit", &image, &[]))
        .await
        .expect("create");
    start(&mut rt, &id).await;
    let log = PathBuf::from(status(&mut rt, &id).await.log_path);
    wait_for("the trap to be set", Duration::from_secs(10), || {
        log_lines(&log).iter().any(|l| l.2 == "ready")
    })
    .await;
    rt.stop_container(cri::StopContainerRequest {
        container_id: id.clone(),
        timeout: 10,
    })
    .await
    .expect("StopContainer");
    let s = status(&mut rt, &id).await;
    assert_eq!(s.state, cri::ContainerState::ContainerExited as i32);
    assert_eq!(
        (s.exit_code, s.reason.as_str()),
        (0, "Completed"),
        "SIGTERM would have killed it (143)"
    );
    let texts: Vec<String> = log_lines(&log).into_iter().map(|l| l.2).collect();
    assert!(texts.contains(&"got SIGQUIT".to_string()), "{texts:?}");

    remove_pod(&mut rt, &pod).await;
}

//! End to end: crust-shim driving real runc, through crust-sandbox's shim client.
//! Needs root, runc and /bin/busybox (Debian busybox-static); skipped otherwise.

use std::{
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use crust_sandbox::shim::{
    CreateTask, EventsServer, Output, RuntimeOptions, ShimClient, ShimEvent, SpawnConfig,
    TaskEvent, TaskIo, TaskStatus,
};
use oci_spec::runtime::{LinuxBuilder, ProcessBuilder, RootBuilder, Spec};
use tokio::sync::mpsc::UnboundedReceiver;

/// The shim under test; `CRUST_SHIM_BIN` may point at another build (e.g. the `shim` profile).
fn shim_binary() -> PathBuf {
    std::env::var_os("CRUST_SHIM_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_crust-shim")))
}

fn vm_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn usable() -> bool {
    let root = nix::unistd::geteuid().is_root();
    let runc = std::process::Command::new("runc")
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    root && runc && Path::new("/bin/busybox").exists()
}

/// Everything the test started, torn down on drop (also when an assertion failed).
struct Guard {
    dir: tempfile::TempDir,
    cgroup_prefix: String,
    pids: Vec<u32>,
    containers: Vec<String>,
}

impl Guard {
    fn path(&self) -> &Path {
        self.dir.path()
    }
    fn runc_root(&self) -> PathBuf {
        self.path().join("runc")
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        for id in &self.containers {
            let _ = std::process::Command::new("runc")
                .arg("--root")
                .arg(self.runc_root())
                .args(["delete", "--force", id])
                .output();
        }
        for &pid in &self.pids {
            if alive(pid) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        for m in mounts_under(self.path()) {
            let _ = nix::mount::umount2(m.as_str(), nix::mount::MntFlags::MNT_DETACH);
        }
        for d in cgroups_named(&self.cgroup_prefix) {
            let _ = std::fs::remove_dir(d);
        }
    }
}

fn alive(pid: u32) -> bool {
    // A zombie is not alive for our purposes.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !s
            .rsplit(')')
            .next()
            .map(|r| r.trim_start().starts_with('Z'))
            .unwrap_or(false),
        Err(_) => false,
    }
}

fn mounts_under(dir: &Path) -> Vec<String> {
    let d = dir.display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| m.starts_with(&d))
        .map(str::to_string)
        .collect()
}

fn cgroups_named(prefix: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(ctrls) = std::fs::read_dir("/sys/fs/cgroup") {
        for c in ctrls.flatten() {
            if let Ok(entries) = std::fs::read_dir(c.path()) {
                for e in entries.flatten() {
                    if e.file_name().to_string_lossy().starts_with(prefix) {
                        out.push(e.path());
                    }
                }
            }
        }
    }
    out
}

fn bundle(g: &Guard, id: &str, args: &[&str]) -> PathBuf {
    bundle_with(g, id, args, false)
}

fn bundle_with(g: &Guard, id: &str, args: &[&str], terminal: bool) -> PathBuf {
    let b = g.path().join(id);
    let bin = b.join("rootfs/bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::copy("/bin/busybox", bin.join("busybox")).unwrap();
    for l in ["sh", "echo", "sleep", "cat", "printf", "head", "sort"] {
        symlink("busybox", bin.join(l)).unwrap();
    }
    for d in ["proc", "dev", "sys", "tmp"] {
        std::fs::create_dir_all(b.join("rootfs").join(d)).unwrap();
    }
    let mut spec = Spec::default();
    let process = ProcessBuilder::default()
        .args(args.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .env(vec!["PATH=/bin".to_string()])
        .cwd("/")
        .no_new_privileges(true)
        .terminal(terminal)
        .build()
        .unwrap();
    spec.set_process(Some(process));
    spec.set_root(Some(
        RootBuilder::default()
            .path("rootfs")
            .readonly(true)
            .build()
            .unwrap(),
    ));
    spec.set_hostname(Some(id.to_string()));
    let linux = LinuxBuilder::default()
        .cgroups_path(PathBuf::from(format!("/{}{id}", g.cgroup_prefix)))
        .namespaces(oci_spec::runtime::get_default_namespaces())
        .masked_paths(vec![])
        .readonly_paths(vec![])
        .build()
        .unwrap();
    spec.set_linux(Some(linux));
    spec.save(b.join("config.json")).unwrap();
    b
}

async fn next_exit(rx: &mut UnboundedReceiver<ShimEvent>, want_id: &str) -> (u32, u32) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let ev = tokio::time::timeout(left, rx.recv())
            .await
            .expect("timed out waiting for exit event")
            .expect("events channel closed");
        if let TaskEvent::Exit {
            id,
            pid,
            exit_status,
            ..
        } = ev.event
            && id == want_id
        {
            return (pid, exit_status);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_shim_runs_containers_with_runc() {
    if !usable() {
        eprintln!("skipped: needs root, runc and /bin/busybox");
        return;
    }
    let dir = tempfile::Builder::new()
        .prefix("crust-shim-it")
        .tempdir_in("/tmp")
        .unwrap();
    let mut g = Guard {
        dir,
        cgroup_prefix: format!("crust-shim-it-{}-", std::process::id()),
        pids: Vec::new(),
        containers: Vec::new(),
    };
    let pod_dir = g.path().join("pod");
    std::fs::create_dir_all(&pod_dir).unwrap();

    let (events, mut rx) = EventsServer::start(&g.path().join("events.sock"))
        .await
        .unwrap();
    let cfg = SpawnConfig {
        binary: shim_binary(),
        socket_dir: g.path().join("s"),
        ..Default::default()
    };
    let shim = ShimClient::spawn(&cfg, "pod1", &pod_dir, events.address())
        .await
        .unwrap();
    let shim_pid = shim.shim_pid().await.unwrap();
    g.pids.push(shim_pid);
    assert_eq!(
        std::fs::read_to_string(pod_dir.join("shim.pid")).unwrap(),
        shim_pid.to_string()
    );
    // The shim runs in its own session.
    assert_eq!(
        nix::unistd::getsid(Some(nix::unistd::Pid::from_raw(shim_pid as i32)))
            .unwrap()
            .as_raw(),
        shim_pid as i32
    );
    let runtime = RuntimeOptions {
        root: Some(g.runc_root()),
        ..Default::default()
    };

    // 1. A container that writes to stdout and stderr and exits 3.
    let log = g.path().join("logs/c1.log");
    let b1 = bundle(
        &g,
        "c1",
        &[
            "sh",
            "-c",
            "echo out; echo err >&2; printf '%020000d\\n' 7; echo -n tail; exit 3",
        ],
    );
    g.containers.push("c1".into());
    let pid1 = shim
        .create(&CreateTask {
            id: "c1".into(),
            bundle: b1,
            io: TaskIo {
                output: Output::CriLog(log.clone()),
                ..Default::default()
            },
            runtime: runtime.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    g.pids.push(pid1);
    assert_eq!(
        shim.state("c1", "").await.unwrap().status,
        TaskStatus::Created
    );
    assert_eq!(shim.start("c1", "").await.unwrap(), pid1);
    let (epid, status) = next_exit(&mut rx, "c1").await;
    assert_eq!((epid, status), (pid1, 3));
    assert_eq!(shim.wait("c1", "").await.unwrap().exit_status, 3);
    let st = shim.state("c1", "").await.unwrap();
    assert_eq!((st.status, st.exit_status), (TaskStatus::Stopped, 3));
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 5, "{text}");
    // The 20000-byte line: one 16 KiB partial entry, then the rest as the full entry.
    let long: Vec<&&str> = lines
        .iter()
        .filter(|l| l.contains(" stdout P ") || l.ends_with("07"))
        .collect();
    assert_eq!(long.len(), 2, "{text}");
    assert!(long[0].ends_with(&format!(" stdout P {}", "0".repeat(16 * 1024))));
    assert!(long[1].ends_with(&format!(" stdout F {}7", "0".repeat(20000 - 16 * 1024 - 1))));
    for l in &lines {
        let ts = l.split(' ').next().unwrap();
        assert!(ts.ends_with('Z') && ts.len() == 30, "timestamp {ts}");
    }
    assert!(lines.iter().any(|l| l.ends_with(" stdout F out")), "{text}");
    assert!(lines.iter().any(|l| l.ends_with(" stderr F err")), "{text}");
    assert!(
        lines.iter().any(|l| l.ends_with(" stdout F tail")),
        "{text}"
    );
    let del = shim.delete("c1", "").await.unwrap();
    assert_eq!(del.exit_status, 3);
    assert!(matches!(
        shim.state("c1", "").await,
        Err(crust_sandbox::shim::ShimError::NotFound(_))
    ));

    // 2. A long-running container: exec into it, stats, reopen its log, kill it.
    let log2 = g.path().join("logs/c2.log");
    let b2 = bundle(&g, "c2", &["sleep", "1000"]);
    g.containers.push("c2".into());
    let pid2 = shim
        .create(&CreateTask {
            id: "c2".into(),
            bundle: b2,
            io: TaskIo {
                output: Output::CriLog(log2.clone()),
                ..Default::default()
            },
            runtime: runtime.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    g.pids.push(pid2);
    shim.start("c2", "").await.unwrap();
    assert_eq!(
        shim.state("c2", "").await.unwrap().status,
        TaskStatus::Running
    );
    // runc itself agrees it runs, and the process is sleep, not runc's init still waiting.
    let state = std::process::Command::new("runc")
        .arg("--root")
        .arg(g.runc_root())
        .args(["state", "c2"])
        .output()
        .unwrap();
    let state: serde_json::Value = serde_json::from_slice(&state.stdout).unwrap();
    assert_eq!(state["status"], "running", "{state}");
    let comm = std::fs::read_to_string(format!("/proc/{pid2}/comm")).unwrap();
    assert_eq!(comm.trim(), "sleep");

    let out = g.path().join("exec.out");
    let process = ProcessBuilder::default()
        .args(vec![
            "sh".to_string(),
            "-c".to_string(),
            "echo hi from $(cat /proc/1/comm); exit 7".to_string(),
        ])
        .env(vec!["PATH=/bin".to_string()])
        .cwd("/")
        .build()
        .unwrap();
    shim.exec(
        "c2",
        "e1",
        &process,
        &TaskIo {
            output: Output::Paths {
                stdout: Some(out.clone()),
                stderr: None,
            },
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let epid = shim.start("c2", "e1").await.unwrap();
    g.pids.push(epid);
    let (_, st) = next_exit(&mut rx, "e1").await;
    assert_eq!(st, 7);
    assert_eq!(shim.wait("c2", "e1").await.unwrap().exit_status, 7);
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "hi from sleep\n");
    assert_eq!(shim.delete("c2", "e1").await.unwrap().exit_status, 7);

    eprintln!(
        "shim VmRSS with one running container after an exec: {} KiB",
        vm_rss_kib(shim_pid)
    );
    if let Some(secs) = std::env::var_os("CRUST_SHIM_HOLD") {
        // Debugging aid: keep the shim up to inspect it.
        let secs = secs.to_string_lossy().parse().unwrap_or(30);
        eprintln!("holding shim pid {shim_pid} for {secs}s");
        tokio::time::sleep(Duration::from_secs(secs)).await;
    }
    let pids = shim.pids("c2").await.unwrap();
    assert_eq!(pids, vec![pid2]);
    let m = shim.stats("c2").await.unwrap();
    assert!(m.memory.usage.usage > 0, "memory usage {:?}", m.memory);
    shim.reopen_log("c2").await.unwrap();
    assert!(log2.exists());

    // Still running: delete refuses, shutdown (not now) keeps the shim.
    assert!(shim.delete("c2", "").await.is_err());
    shim.shutdown(false).await.unwrap();
    assert!(alive(shim_pid));

    shim.kill("c2", "", 9, false).await.unwrap();
    let (_, st) = next_exit(&mut rx, "c2").await;
    assert_eq!(st, 128 + 9);
    assert!(matches!(
        shim.reopen_log("c2").await,
        Err(crust_sandbox::shim::ShimError::FailedPrecondition(_))
    ));
    shim.delete("c2", "").await.unwrap();

    // 3. stdin through a FIFO (attach), closed with CloseIO.
    let fifo = g.path().join("c3.stdin");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let log3 = g.path().join("logs/c3.log");
    let b3 = bundle(&g, "c3", &["cat"]);
    g.containers.push("c3".into());
    let pid3 = shim
        .create(&CreateTask {
            id: "c3".into(),
            bundle: b3,
            io: TaskIo {
                stdin: Some(fifo.clone()),
                output: Output::CriLog(log3.clone()),
                terminal: false,
            },
            runtime: runtime.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    g.pids.push(pid3);
    shim.start("c3", "").await.unwrap();
    {
        use std::io::Write;
        let mut w = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
        w.write_all(b"ping\n").unwrap();
    }
    // cat keeps running after the writer left: the shim holds the FIFO open.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        shim.state("c3", "").await.unwrap().status,
        TaskStatus::Running
    );
    shim.close_stdin("c3", "").await.unwrap();
    let (_, st) = next_exit(&mut rx, "c3").await;
    assert_eq!(st, 0);
    let text = std::fs::read_to_string(&log3).unwrap();
    assert!(text.ends_with(" stdout F ping\n"), "{text}");
    shim.delete("c3", "").await.unwrap();

    // 4. A terminal: runc hands the pty over the console socket.
    let log4 = g.path().join("logs/c4.log");
    let b4 = bundle_with(
        &g,
        "c4",
        &["sh", "-c", "sleep 0.2; echo tty-out; exit 5"],
        true,
    );
    g.containers.push("c4".into());
    let pid4 = shim
        .create(&CreateTask {
            id: "c4".into(),
            bundle: b4,
            io: TaskIo {
                output: Output::CriLog(log4.clone()),
                terminal: true,
                ..Default::default()
            },
            runtime: runtime.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    g.pids.push(pid4);
    shim.start("c4", "").await.unwrap();
    shim.resize_pty("c4", "", 100, 30).await.unwrap();
    let (_, st) = next_exit(&mut rx, "c4").await;
    assert_eq!(st, 5);
    let text = std::fs::read_to_string(&log4).unwrap();
    assert!(text.contains(" stdout F tty-out"), "{text}");
    shim.delete("c4", "").await.unwrap();

    // 6. A memory limit the process exceeds: /tasks/oom, then the exit by SIGKILL.
    let b6 = bundle(
        &g,
        "c6",
        &["sh", "-c", "head -c 200000000 /dev/zero | sort"],
    );
    let cfg_path = b6.join("config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&cfg_path).unwrap()).unwrap();
    cfg["linux"]["resources"] = serde_json::json!({"memory": {"limit": 16 * 1024 * 1024}});
    std::fs::write(&cfg_path, serde_json::to_vec(&cfg).unwrap()).unwrap();
    g.containers.push("c6".into());
    let pid6 = shim
        .create(&CreateTask {
            id: "c6".into(),
            bundle: b6,
            runtime: runtime.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    g.pids.push(pid6);
    shim.start("c6", "").await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut oom = false;
    let status = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let ev = tokio::time::timeout(left, rx.recv())
            .await
            .expect("no exit of c6")
            .unwrap();
        match ev.event {
            TaskEvent::Oom { container_id } if container_id == "c6" => oom = true,
            TaskEvent::Exit {
                id, exit_status, ..
            } if id == "c6" => break exit_status,
            _ => {}
        }
    };
    assert!(oom, "no /tasks/oom before the exit");
    assert_eq!(status, 128 + 9);
    shim.delete("c6", "").await.unwrap();

    // 5. crustd goes away: the container keeps running and its log keeps flowing; the exit
    // is recorded, and published once an events endpoint is back at the same address.
    let events_path = g.path().join("events.sock");
    events.shutdown().await;
    drop(rx);
    drop(shim);
    let log5 = g.path().join("logs/c5.log");
    let b5 = bundle(
        &g,
        "c5",
        &["sh", "-c", "sleep 0.3; echo while-away; exit 4"],
    );
    g.containers.push("c5".into());
    let again = ShimClient::reconnect(&pod_dir).await.unwrap();
    assert_eq!(again.shim_pid().await.unwrap(), shim_pid);
    let pid5 = again
        .create(&CreateTask {
            id: "c5".into(),
            bundle: b5,
            io: TaskIo {
                output: Output::CriLog(log5.clone()),
                ..Default::default()
            },
            runtime: runtime.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    g.pids.push(pid5);
    again.start("c5", "").await.unwrap();
    assert_eq!(again.wait("c5", "").await.unwrap().exit_status, 4);
    let st = again.state("c5", "").await.unwrap();
    assert_eq!((st.status, st.exit_status), (TaskStatus::Stopped, 4));
    assert!(
        std::fs::read_to_string(&log5)
            .unwrap()
            .ends_with(" stdout F while-away\n")
    );
    let (events, mut rx) = EventsServer::start(&events_path).await.unwrap();
    let (_, st) = next_exit(&mut rx, "c5").await;
    assert_eq!(st, 4);
    again.delete("c5", "").await.unwrap();

    again.shutdown(false).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while alive(shim_pid) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!alive(shim_pid), "shim still running");
    events.shutdown().await;

    for pid in [pid1, pid2, epid, pid3, pid4, pid5, pid6] {
        assert!(!alive(pid), "process {pid} left");
    }
    assert!(mounts_under(g.path()).is_empty(), "mounts left");
    assert!(
        cgroups_named(&g.cgroup_prefix).is_empty(),
        "cgroups left: {:?}",
        cgroups_named(&g.cgroup_prefix)
    );
    eprintln!(
        "shim log:\n{}",
        std::fs::read_to_string(pod_dir.join("shim.log")).unwrap_or_default()
    );
    let sock = std::fs::read_to_string(pod_dir.join("address")).unwrap();
    assert!(
        !Path::new(sock.trim().trim_start_matches("unix://")).exists(),
        "socket left"
    );
}

fn status_kib(pid: u32, file: &str, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/{file}"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Memory of ten pod shims with one `sleep` container each (run by hand:
/// `CRUST_SHIM_BIN=$(hack/build-shim) cargo test -p crust-shim --test runc -- --ignored --nocapture`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn memory_of_ten_pod_shims() {
    if !usable() {
        eprintln!("skipped: needs root, runc and /bin/busybox");
        return;
    }
    let dir = tempfile::Builder::new()
        .prefix("crust-shim-mem")
        .tempdir_in("/tmp")
        .unwrap();
    let mut g = Guard {
        dir,
        cgroup_prefix: format!("crust-shim-mem-{}-", std::process::id()),
        pids: Vec::new(),
        containers: Vec::new(),
    };
    let (events, _rx) = EventsServer::start(&g.path().join("events.sock"))
        .await
        .unwrap();
    let cfg = SpawnConfig {
        binary: shim_binary(),
        socket_dir: g.path().join("s"),
        ..Default::default()
    };
    let runtime = RuntimeOptions {
        root: Some(g.runc_root()),
        ..Default::default()
    };
    let mut shims = Vec::new();
    for i in 0..10 {
        let pod_dir = g.path().join(format!("pod{i}"));
        std::fs::create_dir_all(&pod_dir).unwrap();
        let shim = ShimClient::spawn(&cfg, &format!("pod{i}"), &pod_dir, events.address())
            .await
            .unwrap();
        let pid = shim.shim_pid().await.unwrap();
        g.pids.push(pid);
        let id = format!("m{i}");
        let b = bundle(&g, &id, &["sleep", "1000"]);
        g.containers.push(id.clone());
        let cpid = shim
            .create(&CreateTask {
                id: id.clone(),
                bundle: b,
                io: TaskIo {
                    output: Output::CriLog(g.path().join(format!("logs/{id}.log"))),
                    ..Default::default()
                },
                runtime: runtime.clone(),
                ..Default::default()
            })
            .await
            .unwrap();
        g.pids.push(cpid);
        shim.start(&id, "").await.unwrap();
        shims.push((shim, pid, id));
    }
    // Let short-lived blocking threads retire.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (mut rss, mut pss, mut anon) = (0, 0, 0);
    for (_, pid, _) in &shims {
        rss += status_kib(*pid, "status", "VmRSS:");
        anon += status_kib(*pid, "status", "RssAnon:");
        pss += status_kib(*pid, "smaps_rollup", "Pss:");
    }
    eprintln!(
        "10 pod shims, one running container each: per shim VmRSS {} KiB, RssAnon {} KiB, Pss {} KiB",
        rss / 10,
        anon / 10,
        pss / 10
    );
    for (shim, pid, id) in shims {
        shim.kill(&id, "", 9, false).await.unwrap();
        shim.wait(&id, "").await.unwrap();
        shim.delete(&id, "").await.unwrap();
        shim.shutdown(false).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while alive(pid) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(!alive(pid));
    }
    events.shutdown().await;
    assert!(cgroups_named(&g.cgroup_prefix).is_empty());
}

/// A shim that cannot reach its events endpoint fails `start` with an error, leaves its
/// reason in shim.log and no process behind.
#[tokio::test]
async fn start_without_events_endpoint_fails_cleanly() {
    let dir = tempfile::Builder::new()
        .prefix("crust-shim-nostart")
        .tempdir_in("/tmp")
        .unwrap();
    let pod_dir = dir.path().join("pod");
    std::fs::create_dir_all(&pod_dir).unwrap();
    let cfg = SpawnConfig {
        binary: shim_binary(),
        socket_dir: dir.path().join("s"),
        ..Default::default()
    };
    let missing = format!("unix://{}", dir.path().join("nothing.sock").display());
    let err = ShimClient::spawn(&cfg, "podx", &pod_dir, &missing)
        .await
        .unwrap_err();
    assert!(
        matches!(err, crust_sandbox::shim::ShimError::Start(_)),
        "{err}"
    );
    let log = std::fs::read_to_string(pod_dir.join("shim.log")).unwrap_or_default();
    assert!(!log.is_empty(), "shim.log empty");
    assert!(!pod_dir.join("shim.pid").exists());
}

/// Memory of a shim across 200 exec round trips (run by hand, like the one above).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn shim_memory_is_flat_across_execs() {
    if !usable() {
        eprintln!("skipped: needs root, runc and /bin/busybox");
        return;
    }
    let dir = tempfile::Builder::new()
        .prefix("crust-shim-churn")
        .tempdir_in("/tmp")
        .unwrap();
    let mut g = Guard {
        dir,
        cgroup_prefix: format!("crust-shim-churn-{}-", std::process::id()),
        pids: Vec::new(),
        containers: Vec::new(),
    };
    let (events, _rx) = EventsServer::start(&g.path().join("events.sock"))
        .await
        .unwrap();
    let cfg = SpawnConfig {
        binary: shim_binary(),
        socket_dir: g.path().join("s"),
        ..Default::default()
    };
    let pod_dir = g.path().join("pod");
    std::fs::create_dir_all(&pod_dir).unwrap();
    let shim = ShimClient::spawn(&cfg, "pod", &pod_dir, events.address())
        .await
        .unwrap();
    let pid = shim.shim_pid().await.unwrap();
    g.pids.push(pid);
    let b = bundle(&g, "k", &["sleep", "1000"]);
    g.containers.push("k".into());
    let runtime = RuntimeOptions {
        root: Some(g.runc_root()),
        ..Default::default()
    };
    g.pids.push(
        shim.create(&CreateTask {
            id: "k".into(),
            bundle: b,
            runtime,
            ..Default::default()
        })
        .await
        .unwrap(),
    );
    shim.start("k", "").await.unwrap();
    let process = ProcessBuilder::default()
        .args(vec!["echo".to_string(), "x".to_string()])
        .env(vec!["PATH=/bin".to_string()])
        .cwd("/")
        .build()
        .unwrap();
    let mut samples = Vec::new();
    for i in 0..200 {
        let id = format!("e{i}");
        shim.exec("k", &id, &process, &TaskIo::default())
            .await
            .unwrap();
        shim.start("k", &id).await.unwrap();
        assert_eq!(shim.wait("k", &id).await.unwrap().exit_status, 0);
        shim.delete("k", &id).await.unwrap();
        if i % 50 == 49 {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            samples.push(status_kib(pid, "status", "RssAnon:"));
        }
    }
    eprintln!("shim RssAnon after every 50 execs (KiB): {samples:?}");
    shim.kill("k", "", 9, false).await.unwrap();
    shim.wait("k", "").await.unwrap();
    shim.delete("k", "").await.unwrap();
    shim.shutdown(false).await.unwrap();
    events.shutdown().await;
}

//! What a container's configuration does once it runs: image/request merge,
//! users, read-only rootfs, capabilities, privileged, seccomp, memory limits and
//! OOM kills, resource updates, and the namespaces a pod's containers share.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crust_e2e::cri;
use crust_e2e::workload::*;
use tonic::Code;

fn with_security(
    mut c: cri::ContainerConfig,
    f: impl FnOnce(&mut cri::LinuxContainerSecurityContext),
) -> cri::ContainerConfig {
    let linux = c.linux.get_or_insert_with(Default::default);
    f(linux.security_context.get_or_insert_with(Default::default));
    c
}

fn log_texts(s: &cri::ContainerStatus) -> Vec<String> {
    log_lines(&PathBuf::from(&s.log_path))
        .into_iter()
        .map(|l| l.2)
        .collect()
}

/// The effective capability mask of the container's init, from inside.
async fn cap_eff(rt: &mut Rt, id: &str) -> u64 {
    let r = exec(rt, id, &["/bin/grep", "CapEff", "/proc/1/status"], 10)
        .await
        .expect("exec");
    let text = String::from_utf8_lossy(&r.stdout);
    let hex = text.split_whitespace().last().expect("CapEff value");
    u64::from_str_radix(hex, 16).expect("hex")
}

const CAP_NET_ADMIN: u64 = 1 << 12;

/// `sh -c script` in the container: exit code, stdout and stderr (trimmed).
async fn sh(rt: &mut Rt, id: &str, script: &str) -> (i32, String, String) {
    let r = exec(rt, id, &["/bin/sh", "-c", script], 10)
        .await
        .expect("exec");
    let text = |b: &[u8]| String::from_utf8_lossy(b).trim().to_string();
    (r.exit_code, text(&r.stdout), text(&r.stderr))
}

/// A masked file reads empty: it is /dev/null bound over the original.
const READ_TIMER_LIST: &str =
    "test -c /proc/timer_list && echo devnull; head -c 64 /proc/timer_list | wc -c";
/// A write of the value already there, so that it changes nothing if it succeeds.
const WRITE_PROC_SYS: &str =
    "v=$(cat /proc/sys/net/ipv4/ip_forward) && echo $v > /proc/sys/net/ipv4/ip_forward";

#[tokio::test]
async fn image_config_and_request_merge_and_users_resolve_in_the_image() {
    let (registry, crustd, net) = setup(211).await;
    let image = registry.image("crust/config:latest");
    pull(&crustd, &image).await;
    let mut rt = crustd.runtime().await.expect("client");
    let pc = pod_config("merge", &net, &crustd.dir().join("logs"));
    let pod = run_pod(&mut rt, &pc).await;

    // The image's ENTRYPOINT ["/bin/sh","-c"] and CMD ["echo hello"].
    let plain = create(&mut rt, &pod, &pc, container_config("plain", &image, &[]))
        .await
        .expect("create");
    start(&mut rt, &plain).await;
    let s = wait_exited(&mut rt, &plain, Duration::from_secs(20)).await;
    assert_eq!(log_texts(&s), ["hello"]);

    // args replace CMD only; env adds to and overrides the image's; USER app and WORKDIR kept.
    let mut c = container_config("merged", &image, &[]);
    c.args = vec!["echo $(id -u):$(id -g) $(pwd) $FOO $EXTRA".into()];
    c.envs = vec![
        cri::KeyValue {
            key: "FOO".into(),
            value: "request".into(),
        },
        cri::KeyValue {
            key: "EXTRA".into(),
            value: "x".into(),
        },
    ];
    let id = create(&mut rt, &pod, &pc, c).await.expect("create");
    start(&mut rt, &id).await;
    let s = wait_exited(&mut rt, &id, Duration::from_secs(20)).await;
    assert_eq!(log_texts(&s), ["1000:1000 /work request x"]);

    // run_as_user and working_dir from the request win.
    let mut c = container_config("root", &image, &[]);
    c.args = vec!["echo $(id -u) $(pwd)".into()];
    c.working_dir = "/tmp".into();
    let c = with_security(c, |sc| sc.run_as_user = Some(cri::Int64Value { value: 0 }));
    let id = create(&mut rt, &pod, &pc, c).await.expect("create");
    start(&mut rt, &id).await;
    let s = wait_exited(&mut rt, &id, Duration::from_secs(20)).await;
    assert_eq!(log_texts(&s), ["0 /tmp"]);

    // A user name that the image's /etc/passwd does not have is refused.
    let c = with_security(container_config("ghost", &image, &[]), |sc| {
        sc.run_as_username = "ghost".into()
    });
    let err = create(&mut rt, &pod, &pc, c)
        .await
        .expect_err("no such user");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("ghost"), "{}", err.message());
    // ... and leaves nothing behind: the name is free again.
    let c = with_security(container_config("ghost", &image, &[]), |sc| {
        sc.run_as_username = "app".into()
    });
    create(&mut rt, &pod, &pc, c)
        .await
        .expect("name free after a failed create");
    remove_pod(&mut rt, &pod).await;
}

#[tokio::test]
async fn readonly_rootfs_capabilities_privileged_and_seccomp() {
    let (_registry, _crustd, _net, image, mut rt, pc, pod) = scene(212, "security").await;
    let sleep = ["/bin/sleep", "1000"];

    let plain = create(
        &mut rt,
        &pod,
        &pc,
        container_config("plain", &image, &sleep),
    )
    .await
    .expect("create");
    start(&mut rt, &plain).await;
    assert_eq!(cap_eff(&mut rt, &plain).await & CAP_NET_ADMIN, 0);
    let w = exec(&mut rt, &plain, &["/bin/touch", "/written"], 10)
        .await
        .expect("exec");
    assert_eq!(w.exit_code, 0, "a writable rootfs takes writes");
    let dev = exec(&mut rt, &plain, &["/bin/ls", "/dev/kmsg"], 10)
        .await
        .expect("exec");
    assert_ne!(
        dev.exit_code, 0,
        "an unprivileged container sees no host devices"
    );
    // Masked paths: /dev/null over files, an empty read-only tmpfs over
    // directories. (/proc/kcore, the usual example, exists only on some kernels.)
    assert_eq!(
        sh(&mut rt, &plain, READ_TIMER_LIST).await,
        (0, "devnull\n0".into(), String::new()),
        "/proc/timer_list is masked"
    );
    assert_eq!(
        sh(&mut rt, &plain, "ls -A /sys/firmware | wc -l").await.1,
        "0",
        "/sys/firmware is masked"
    );
    if std::path::Path::new("/proc/kcore").exists() {
        assert_eq!(
            sh(&mut rt, &plain, "head -c 64 /proc/kcore | wc -c")
                .await
                .1,
            "0",
            "/proc/kcore is masked"
        );
    }
    // Read-only paths: /proc/sys refuses even root's writes.
    let (code, _, err) = sh(&mut rt, &plain, WRITE_PROC_SYS).await;
    assert_ne!(code, 0, "/proc/sys is writable");
    assert!(err.contains("Read-only file system"), "{err}");

    let c = with_security(container_config("ro", &image, &sleep), |sc| {
        sc.readonly_rootfs = true;
        sc.capabilities = Some(cri::Capability {
            add_capabilities: vec!["NET_ADMIN".into()],
            ..Default::default()
        });
        sc.seccomp = Some(cri::SecurityProfile {
            profile_type: cri::security_profile::ProfileType::RuntimeDefault as i32,
            localhost_ref: String::new(),
        });
    });
    let ro = create(&mut rt, &pod, &pc, c).await.expect("create");
    start(&mut rt, &ro).await;
    let w = exec(&mut rt, &ro, &["/bin/touch", "/written"], 10)
        .await
        .expect("exec");
    assert_ne!(w.exit_code, 0, "a read-only rootfs refuses writes");
    assert_ne!(
        cap_eff(&mut rt, &ro).await & CAP_NET_ADMIN,
        0,
        "NET_ADMIN added"
    );
    let u = exec(
        &mut rt,
        &ro,
        &["/bin/busybox", "unshare", "-U", "/bin/true"],
        10,
    )
    .await
    .expect("exec");
    assert_ne!(u.exit_code, 0, "RuntimeDefault refuses unshare");
    let u = exec(
        &mut rt,
        &plain,
        &["/bin/busybox", "unshare", "-U", "/bin/true"],
        10,
    )
    .await
    .expect("exec");
    assert_eq!(
        u.exit_code,
        0,
        "unconfined allows it: {}",
        String::from_utf8_lossy(&u.stderr)
    );

    let c = with_security(container_config("privileged", &image, &sleep), |sc| {
        sc.privileged = true
    });
    let mut pc_priv = pc.clone();
    if let Some(l) = pc_priv.linux.as_mut() {
        l.security_context
            .get_or_insert_with(Default::default)
            .privileged = true;
    }
    let p = create(&mut rt, &pod, &pc_priv, c).await.expect("create");
    start(&mut rt, &p).await;
    let dev = exec(&mut rt, &p, &["/bin/ls", "/dev/kmsg"], 10)
        .await
        .expect("exec");
    assert_eq!(dev.exit_code, 0, "a privileged container sees host devices");
    assert_ne!(cap_eff(&mut rt, &p).await & (1 << 21), 0, "CAP_SYS_ADMIN");
    // Nothing is masked or read-only for a privileged container.
    assert_eq!(
        sh(&mut rt, &p, READ_TIMER_LIST).await,
        (0, "64".into(), String::new()),
        "/proc/timer_list unmasked"
    );
    assert_ne!(
        sh(&mut rt, &p, "ls -A /sys/firmware | wc -l").await.1,
        "0",
        "/sys/firmware unmasked"
    );
    assert_eq!(
        sh(&mut rt, &p, WRITE_PROC_SYS).await,
        (0, String::new(), String::new()),
        "/proc/sys writable"
    );

    remove_pod(&mut rt, &pod).await;
}

/// cgroup v1 (this machine's layout) memory limit of a container.
fn memory_limit_file(cgroups_path: &str) -> PathBuf {
    PathBuf::from("/sys/fs/cgroup/memory")
        .join(cgroups_path.trim_start_matches('/'))
        .join("memory.limit_in_bytes")
}

async fn cgroups_path(rt: &mut Rt, id: &str) -> String {
    verbose_info(rt, id).await["cgroupsPath"]
        .as_str()
        .expect("cgroupsPath")
        .to_string()
}

#[tokio::test]
async fn memory_limits_oom_kills_and_resource_updates() {
    let (_registry, crustd, _net, image, mut rt, pc, pod) = scene(213, "limits").await;
    const OOM: &[(&str, &str)] = &[("oom", "true")];
    const NOT_OOM: &[(&str, &str)] = &[("oom", "false")];
    const START: &[(&str, &str)] = &[("operation", "start")];
    const EXITS: &str = "crust_container_exits_total";
    const STARTS: &str = "crust_container_operation_duration_seconds_count";
    let ooms = counter(&crustd, EXITS, OOM).await;
    let exits = counter(&crustd, EXITS, NOT_OOM).await;
    let starts = counter(&crustd, STARTS, START).await;
    let limited = |name: &str, cmd: &[&str], bytes: i64| {
        let mut c = container_config(name, &image, cmd);
        c.linux = Some(cri::LinuxContainerConfig {
            resources: Some(cri::LinuxContainerResources {
                memory_limit_in_bytes: bytes,
                ..Default::default()
            }),
            ..Default::default()
        });
        c
    };

    // dd's 64 MiB buffer does not fit in 16 MiB.
    let oom = create(
        &mut rt,
        &pod,
        &pc,
        limited(
            "oom",
            &[
                "/bin/dd",
                "if=/dev/zero",
                "of=/dev/null",
                "bs=64M",
                "count=4",
            ],
            16 << 20,
        ),
    )
    .await
    .expect("create");
    start(&mut rt, &oom).await;
    let s = wait_exited(&mut rt, &oom, Duration::from_secs(30)).await;
    assert_eq!(s.reason, "OOMKilled", "exit {} {}", s.exit_code, s.message);
    assert_eq!(s.exit_code, 137);
    // One exit, counted as an OOM kill and not as another exit.
    wait_metrics(
        &crustd,
        &[(EXITS, OOM, ooms + 1.0), (STARTS, START, starts + 1.0)],
    )
    .await;
    assert_eq!(counter(&crustd, EXITS, NOT_OOM).await, exits);
    wait_container_gauges(&crustd, [0, 0, 1, 0]).await;

    let id = create(
        &mut rt,
        &pod,
        &pc,
        limited("update", &["/bin/sleep", "1000"], 32 << 20),
    )
    .await
    .expect("create");
    start(&mut rt, &id).await;
    wait_container_gauges(&crustd, [0, 1, 1, 0]).await;
    wait_metrics(&crustd, &[(STARTS, START, starts + 2.0)]).await;
    let file = memory_limit_file(&cgroups_path(&mut rt, &id).await);
    let read = |f: &PathBuf| -> i64 {
        std::fs::read_to_string(f)
            .unwrap_or_else(|e| panic!("{}: {e}", f.display()))
            .trim()
            .parse()
            .expect("number")
    };
    assert_eq!(read(&file), 32 << 20);
    update_memory_and_shares(&mut rt, &id, 64 << 20, 512).await;
    assert_eq!(read(&file), 64 << 20);
    let s = status(&mut rt, &id).await;
    assert_eq!(
        s.resources
            .and_then(|r| r.linux)
            .map(|l| l.memory_limit_in_bytes),
        Some(64 << 20)
    );
    // A sparse update (kubelet's CPU manager sends only what changes) keeps the rest,
    // and the device rules of the spec stay.
    rt.update_container_resources(cri::UpdateContainerResourcesRequest {
        container_id: id.clone(),
        linux: Some(cri::LinuxContainerResources {
            cpu_shares: 256,
            ..Default::default()
        }),
        ..Default::default()
    })
    .await
    .expect("UpdateContainerResources");
    assert_eq!(read(&file), 64 << 20);
    let s = status(&mut rt, &id).await;
    let linux = s.resources.and_then(|r| r.linux).expect("resources");
    assert_eq!(
        (linux.memory_limit_in_bytes, linux.cpu_shares),
        (64 << 20, 256)
    );
    let info = verbose_info(&mut rt, &id).await;
    let devices = info["runtimeSpec"]["linux"]["resources"]["devices"]
        .as_array()
        .expect("device rules kept");
    assert!(devices.iter().any(|d| d["allow"] == false), "{devices:?}");

    remove_pod(&mut rt, &pod).await;
}

#[tokio::test]
async fn containers_of_a_pod_share_localhost_ipc_and_uts() {
    let (_registry, _crustd, _net, image, mut rt, pc, pod) = scene(214, "shared").await;
    let server = create(
        &mut rt,
        &pod,
        &pc,
        container_config(
            "server",
            &image,
            &[
                "/bin/sh",
                "-c",
                "while true; do echo pong | nc -l -p 7777; done",
            ],
        ),
    )
    .await
    .expect("create");
    start(&mut rt, &server).await;
    let client = create(
        &mut rt,
        &pod,
        &pc,
        container_config("client", &image, &["/bin/sleep", "1000"]),
    )
    .await
    .expect("create");
    start(&mut rt, &client).await;

    let mut answer = String::new();
    for _ in 0..50 {
        let r = exec(
            &mut rt,
            &client,
            &["/bin/sh", "-c", "echo ping | nc -w 2 127.0.0.1 7777"],
            10,
        )
        .await
        .expect("exec");
        answer = String::from_utf8_lossy(&r.stdout).trim().to_string();
        if answer == "pong" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(answer, "pong", "localhost is shared");

    let ns = |r: cri::ExecSyncResponse| String::from_utf8_lossy(&r.stdout).trim().to_string();
    for kind in ["net", "ipc", "uts"] {
        let path = format!("/proc/self/ns/{kind}");
        let a = ns(exec(&mut rt, &server, &["/bin/readlink", &path], 10)
            .await
            .expect("exec"));
        let b = ns(exec(&mut rt, &client, &["/bin/readlink", &path], 10)
            .await
            .expect("exec"));
        assert!(!a.is_empty());
        assert_eq!(a, b, "{kind} namespace shared");
    }
    // PID namespaces are per container by default.
    let a = ns(exec(
        &mut rt,
        &server,
        &["/bin/readlink", "/proc/self/ns/pid"],
        10,
    )
    .await
    .expect("exec"));
    let b = ns(exec(
        &mut rt,
        &client,
        &["/bin/readlink", "/proc/self/ns/pid"],
        10,
    )
    .await
    .expect("exec"));
    assert_ne!(a, b);

    remove_pod(&mut rt, &pod).await;
}

#[tokio::test]
async fn containers_of_a_pod_in_pod_pid_mode_see_each_other() {
    let (registry, crustd, net) = setup(220).await;
    let image = registry.image("crust/busybox:latest");
    pull(&crustd, &image).await;
    let mut rt = crustd.runtime().await.expect("client");
    let mut pc = pod_config("podpid", &net, &crustd.dir().join("logs"));
    crust_e2e::workload::namespaces(&mut pc).pid = cri::NamespaceMode::Pod as i32;
    let pod = run_pod(&mut rt, &pc).await;
    let mut ids = Vec::new();
    for (name, secs) in [("one", "1001"), ("two", "1002")] {
        let id = create(
            &mut rt,
            &pod,
            &pc,
            container_config(name, &image, &["/bin/sleep", secs]),
        )
        .await
        .expect("create");
        start(&mut rt, &id).await;
        ids.push(id);
    }
    let out = |r: cri::ExecSyncResponse| String::from_utf8_lossy(&r.stdout).trim().to_string();
    let pid_ns = |rt: &mut Rt, id: String| {
        let mut rt = rt.clone();
        async move {
            out(
                exec(&mut rt, &id, &["/bin/readlink", "/proc/self/ns/pid"], 10)
                    .await
                    .expect("exec"),
            )
        }
    };
    let (a, b) = (
        pid_ns(&mut rt, ids[0].clone()).await,
        pid_ns(&mut rt, ids[1].clone()).await,
    );
    assert!(a.starts_with("pid:"), "{a}");
    assert_eq!(a, b, "one PID namespace for the pod");
    let host = std::fs::read_link("/proc/self/ns/pid").expect("own pid ns");
    assert_ne!(Path::new(&a), host, "not the host's");
    // Each sees the other's process.
    for (id, other) in [(&ids[0], "/bin/sleep 1002"), (&ids[1], "/bin/sleep 1001")] {
        let ps = out(exec(&mut rt, id, &["/bin/ps", "-o", "args"], 10)
            .await
            .expect("exec"));
        assert!(
            ps.lines().any(|l| l.trim() == other),
            "{other} not in:\n{ps}"
        );
    }
    // PID 1 is the pod's infra process, and it does not show crustd's command line.
    let init = exec(&mut rt, &ids[0], &["/bin/cat", "/proc/1/cmdline"], 10)
        .await
        .expect("exec");
    assert!(
        [&b"crust-pod-init"[..], b"crust-pod-init\0"].contains(&init.stdout.as_slice()),
        "{:?}",
        String::from_utf8_lossy(&init.stdout)
    );

    // An orphan of the pod is reparented to that PID 1, which reaps it when it ends: a
    // background child whose parent exits must not stay a zombie for the pod's life.
    let status = rt
        .pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: pod.clone(),
            verbose: true,
        })
        .await
        .expect("PodSandboxStatus")
        .into_inner();
    let info: serde_json::Value = serde_json::from_str(&status.info["info"]).expect("info JSON");
    let infra = info["namespaces"]["infra_pid"].as_i64().expect("infra pid");
    let (code, _, err) = sh(
        &mut rt,
        &ids[0],
        "(/bin/sleep 2 </dev/null >/dev/null 2>&1 &)",
    )
    .await;
    assert_eq!(code, 0, "{err}");
    // The orphan may still be the forked shell for a moment (comm `sh`) before it
    // executes sleep: poll.
    let orphan_of_infra = || {
        std::fs::read_to_string(format!("/proc/{infra}/task/{infra}/children"))
            .expect("infra's children")
            .split_whitespace()
            .find(|p| {
                std::fs::read_to_string(format!("/proc/{p}/comm"))
                    .is_ok_and(|c| c.trim() == "sleep")
            })
            .map(str::to_string)
    };
    wait_for(
        "the orphaned sleep as the infra's child",
        Duration::from_secs(2),
        || orphan_of_infra().is_some(),
    )
    .await;
    let orphan = orphan_of_infra().expect("the orphaned sleep is the infra's child");
    let stat = format!("/proc/{orphan}/stat");
    wait_for("the orphan reaped", Duration::from_secs(5), || {
        !Path::new(&stat).exists()
    })
    .await;

    remove_pod(&mut rt, &pod).await;
}

#[tokio::test]
async fn groups_devices_and_oom_score_adj_reach_the_process() {
    let (_registry, crustd, _net, image, mut rt, pc, pod) = scene(222, "process").await;
    let sleep = ["/bin/sleep", "1000"];

    // run_as_group and supplemental groups, with the image's own membership of uid
    // 1000 (app is in group extra, 2000) kept, as containerd does.
    let c = with_security(container_config("groups", &image, &sleep), |sc| {
        sc.run_as_user = Some(cri::Int64Value { value: 1000 });
        sc.run_as_group = Some(cri::Int64Value { value: 3000 });
        sc.supplemental_groups = vec![4000];
    });
    let id = create(&mut rt, &pod, &pc, c).await.expect("create");
    start(&mut rt, &id).await;
    let (code, out, err) = sh(&mut rt, &id, "id -u; id -g; id -G").await;
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(&lines[..2], ["1000", "3000"], "{out}");
    let mut groups: Vec<&str> = lines[2].split_whitespace().collect();
    groups.sort();
    assert_eq!(groups, ["2000", "3000", "4000"], "{out}");

    // A device with its permissions: read-only is readable, not writable.
    let dev = ["/dev/fuse", "/dev/net/tun"]
        .into_iter()
        .find(|d| std::path::Path::new(d).exists());
    if let Some(host_dev) = dev {
        for (name, perms, want) in [("dev-r", "r", "r-ok"), ("dev-rw", "rw", "r-ok w-ok")] {
            let mut c = container_config(name, &image, &sleep);
            c.devices = vec![cri::Device {
                container_path: "/dev/xdev".into(),
                host_path: host_dev.into(),
                permissions: perms.into(),
            }];
            let id = create(&mut rt, &pod, &pc, c).await.expect("create");
            start(&mut rt, &id).await;
            let (_, out, _) = sh(
                &mut rt,
                &id,
                "r=; (exec 3</dev/xdev) 2>/dev/null && r=r-ok; \
                 (exec 4>/dev/xdev) 2>/dev/null && r=\"$r w-ok\"; echo $r",
            )
            .await;
            assert_eq!(out, want, "{host_dev} with {perms:?}");
        }
    } else {
        eprintln!("no /dev/fuse or /dev/net/tun on this host: device permissions not checked");
    }

    // oom_score_adj as asked, but never below crustd's own.
    let own: i32 = std::fs::read_to_string(format!(
        "/proc/{}/oom_score_adj",
        crustd.pid().expect("crustd runs")
    ))
    .expect("crustd's oom_score_adj")
    .trim()
    .parse()
    .expect("a number");
    for (name, asked, want) in [
        ("oom-high", 500, 500.max(own)),
        ("oom-low", -900, (-900).max(own)),
    ] {
        let mut c = container_config(name, &image, &sleep);
        c.linux
            .get_or_insert_with(Default::default)
            .resources
            .get_or_insert_with(Default::default)
            .oom_score_adj = asked;
        let id = create(&mut rt, &pod, &pc, c).await.expect("create");
        start(&mut rt, &id).await;
        let (_, out, _) = sh(&mut rt, &id, "cat /proc/1/oom_score_adj").await;
        assert_eq!(out, want.to_string(), "asked {asked}, crustd has {own}");
    }

    remove_pod(&mut rt, &pod).await;
}

/// A tmpfs made a shared mount (the host paths of propagating mounts must be shared or
/// slave); detached with everything mounted below it when dropped.
struct SharedTmpfs(PathBuf);

impl SharedTmpfs {
    fn new(dir: PathBuf) -> Self {
        use nix::mount::{MsFlags, mount};
        std::fs::create_dir_all(&dir).expect("mkdir");
        mount(
            Some("tmpfs"),
            &dir,
            Some("tmpfs"),
            MsFlags::empty(),
            Some("size=4m"),
        )
        .expect("mount tmpfs");
        let g = SharedTmpfs(dir);
        mount(
            None::<&str>,
            &g.0,
            None::<&str>,
            MsFlags::MS_SHARED,
            None::<&str>,
        )
        .expect("make it shared");
        g
    }

    /// Mounts a small tmpfs at `name` below it, holding `file` with `text`.
    fn mount_below(&self, name: &str, file: &str, text: &str) {
        let d = self.0.join(name);
        std::fs::create_dir_all(&d).expect("mkdir");
        nix::mount::mount(
            Some("tmpfs"),
            &d,
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some("size=1m"),
        )
        .expect("mount below");
        std::fs::write(d.join(file), text).expect("write");
    }
}

impl Drop for SharedTmpfs {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

#[tokio::test]
async fn host_path_mounts_are_bound_readonly_or_writable() {
    let (_registry, crustd, _net, image, mut rt, pc, pod) = scene(215, "mounts").await;
    let host = crustd.dir().join("host-data");
    let shared = SharedTmpfs::new(host.clone());
    std::fs::write(host.join("hello"), "from the host\n").expect("write");
    let mut c = container_config("mounter", &image, &["/bin/sleep", "1000"]);
    c.mounts = vec![
        cri::Mount {
            container_path: "/ro".into(),
            host_path: host.display().to_string(),
            readonly: true,
            ..Default::default()
        },
        cri::Mount {
            container_path: "/rw".into(),
            host_path: host.display().to_string(),
            readonly: false,
            propagation: cri::MountPropagation::PropagationHostToContainer as i32,
            ..Default::default()
        },
    ];
    let id = create(&mut rt, &pod, &pc, c).await.expect("create");
    start(&mut rt, &id).await;
    let r = exec(&mut rt, &id, &["/bin/cat", "/ro/hello"], 10)
        .await
        .expect("exec");
    assert_eq!(r.stdout, b"from the host\n");
    let r = exec(&mut rt, &id, &["/bin/touch", "/ro/new"], 10)
        .await
        .expect("exec");
    assert_ne!(r.exit_code, 0, "a readonly mount refuses writes");
    let r = exec(&mut rt, &id, &["/bin/touch", "/rw/new"], 10)
        .await
        .expect("exec");
    assert_eq!(r.exit_code, 0);
    assert!(host.join("new").exists(), "the write reached the host");
    let s = status(&mut rt, &id).await;
    assert_eq!(s.mounts.len(), 2, "mounts are reported as given");

    // A mount made on the host after the start reaches the container through the
    // host-to-container mount, not through the private one.
    shared.mount_below("later", "late", "mounted later\n");
    let r = exec(&mut rt, &id, &["/bin/cat", "/rw/later/late"], 10)
        .await
        .expect("exec");
    assert_eq!(
        (r.exit_code, r.stdout.as_slice()),
        (0, &b"mounted later\n"[..]),
        "HostToContainer: {}",
        String::from_utf8_lossy(&r.stderr)
    );
    let r = exec(&mut rt, &id, &["/bin/cat", "/ro/later/late"], 10)
        .await
        .expect("exec");
    assert_ne!(r.exit_code, 0, "a private mount sees no later host mount");

    // Bidirectional (privileged, as kubelet requires): a mount made in the container
    // appears on the host.
    let mut c = with_security(
        container_config("bidi", &image, &["/bin/sleep", "1000"]),
        |sc| sc.privileged = true,
    );
    c.mounts = vec![cri::Mount {
        container_path: "/bi".into(),
        host_path: host.display().to_string(),
        propagation: cri::MountPropagation::PropagationBidirectional as i32,
        ..Default::default()
    }];
    let mut pc_priv = pc.clone();
    if let Some(l) = pc_priv.linux.as_mut() {
        l.security_context
            .get_or_insert_with(Default::default)
            .privileged = true;
    }
    let bidi = create(&mut rt, &pod, &pc_priv, c)
        .await
        .expect("create bidi");
    start(&mut rt, &bidi).await;
    let r = exec(
        &mut rt,
        &bidi,
        &[
            "/bin/sh",
            "-c",
            "mkdir -p /bi/fromc && mount -t tmpfs none /bi/fromc && echo out > /bi/fromc/x",
        ],
        10,
    )
    .await
    .expect("exec");
    assert_eq!(r.exit_code, 0, "{}", String::from_utf8_lossy(&r.stderr));
    assert_eq!(
        std::fs::read_to_string(host.join("fromc/x"))
            .ok()
            .as_deref(),
        Some("out\n"),
        "Bidirectional: the container's mount reached the host"
    );

    // Propagation from a private host mount would carry nothing: refused at create.
    let private = crustd.dir().join("private-data");
    std::fs::create_dir_all(&private).expect("mkdir");
    for (name, prop) in [
        (
            "bidi-private",
            cri::MountPropagation::PropagationBidirectional,
        ),
        (
            "slave-private",
            cri::MountPropagation::PropagationHostToContainer,
        ),
    ] {
        let mut c = container_config(name, &image, &["/bin/true"]);
        c.mounts = vec![cri::Mount {
            container_path: "/x".into(),
            host_path: private.display().to_string(),
            propagation: prop as i32,
            ..Default::default()
        }];
        let err = create(&mut rt, &pod, &pc, c)
            .await
            .expect_err("propagation from a private mount");
        assert_eq!(err.code(), Code::InvalidArgument, "{name}: {err}");
        assert!(err.message().contains("mount"), "{name}: {}", err.message());
    }

    // A host path that does not exist is refused at create.
    let mut c = container_config("missing", &image, &["/bin/true"]);
    c.mounts = vec![cri::Mount {
        container_path: "/x".into(),
        host_path: "/nonexistent/crust/path".into(),
        ..Default::default()
    }];
    let err = create(&mut rt, &pod, &pc, c)
        .await
        .expect_err("missing host path");
    assert_eq!(err.code(), Code::InvalidArgument);

    remove_pod(&mut rt, &pod).await;
}

#[tokio::test]
async fn containers_of_a_host_network_pod_run_with_the_host_network_and_name() {
    let (registry, crustd, net) = setup(216).await;
    let image = registry.image("crust/busybox:latest");
    pull(&crustd, &image).await;
    let mut rt = crustd.runtime().await.expect("client");
    let mut pc = pod_config("hostnet", &net, &crustd.dir().join("logs"));
    if let Some(l) = pc.linux.as_mut() {
        let sc = l.security_context.get_or_insert_with(Default::default);
        sc.namespace_options
            .get_or_insert_with(Default::default)
            .network = cri::NamespaceMode::Node as i32;
    }
    let pod = run_pod(&mut rt, &pc).await;
    let id = create(
        &mut rt,
        &pod,
        &pc,
        container_config("who", &image, &["/bin/hostname"]),
    )
    .await
    .expect("create");
    start(&mut rt, &id).await;
    let s = wait_exited(&mut rt, &id, Duration::from_secs(20)).await;
    assert_eq!(
        (s.exit_code, s.reason.as_str()),
        (0, "Completed"),
        "{}",
        s.message
    );
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").expect("hostname");
    assert_eq!(log_texts(&s), [host.trim()]);
    remove_pod(&mut rt, &pod).await;
}

//! User namespaces (`hostUsers: false`): a POD-mode pod runs its containers as root inside and
//! as the mapped, unprivileged uid on the host; image files and the pod's files show as root's
//! through idmapped mounts; a volume with the pod's mappings is idmapped, one without is not;
//! NODE is unchanged; bad mappings are refused; removal (also after a crustd SIGKILL) leaves
//! no mount, pin, directory or process. Real crictl for exec, inspect and removal.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crust_e2e::workload::*;
use crust_e2e::{Crustd, cri, crictl};

/// The host ids of test `n`'s pod: far above any real user, distinct per test.
fn host_base(n: u8) -> u32 {
    65536 * (1000 + u32::from(n))
}

fn mapping(host: u32) -> Vec<cri::IdMapping> {
    vec![cri::IdMapping {
        host_id: host,
        container_id: 0,
        length: 65536,
    }]
}

fn pod_userns(pc: &mut cri::PodSandboxConfig, host: u32) {
    namespaces(pc).userns_options = Some(cri::UserNamespace {
        mode: cri::NamespaceMode::Pod as i32,
        uids: mapping(host),
        gids: mapping(host),
    });
}

/// runc's init walks to the bundle as the pod's root: the test's temp dir must be searchable
/// (as /run is on a node).
fn searchable(crustd: &Crustd) {
    std::fs::set_permissions(crustd.dir(), std::fs::Permissions::from_mode(0o711)).expect("chmod");
}

fn crictl(crustd: &Crustd, args: &[&str]) -> String {
    let config = crictl::config(&crustd.socket).expect("crictl config");
    let out = Command::new(crictl::path())
        .arg("--config")
        .arg(&config)
        .args(args)
        .output()
        .expect("crictl");
    assert!(
        out.status.success(),
        "crictl {args:?}: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        crustd.log()
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// Mount points below the crustd's directory.
fn mounts_below(dir: &Path) -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
        .filter(|p| Path::new(p).starts_with(dir))
        .collect()
}

/// Processes whose real uid lies in `[base, base + 65536)`.
fn processes_of(base: u32) -> Vec<String> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let status = std::fs::read_to_string(e.path().join("status")).ok()?;
            let uid: u32 = status
                .lines()
                .find_map(|l| l.strip_prefix("Uid:"))?
                .split_whitespace()
                .next()?
                .parse()
                .ok()?;
            (uid >= base && uid - base < 65536).then(|| e.file_name().to_string_lossy().to_string())
        })
        .collect()
}

/// `setup(n)` with the test's directory searchable, busybox pulled and a client.
async fn userns_setup(
    n: u8,
) -> (
    crust_e2e::registry::Registry,
    Crustd,
    crust_e2e::net::TestNet,
    String,
    Rt,
) {
    let (registry, crustd, net) = setup(n).await;
    searchable(&crustd);
    let image = registry.image("crust/busybox:latest");
    pull(&crustd, &image).await;
    let rt = crustd.runtime().await.expect("client");
    (registry, crustd, net, image, rt)
}

async fn sleeper(
    rt: &mut Rt,
    pod: &str,
    pc: &cri::PodSandboxConfig,
    image: &str,
    name: &str,
) -> String {
    let c = container_config(name, image, &["/bin/sleep", "1000"]);
    create(rt, pod, pc, c).await.expect("create")
}

fn assert_nothing_left(crustd: &Crustd, base: Option<u32>) {
    let state = &crustd.state_dir;
    let entries = |d: &str| {
        std::fs::read_dir(state.join(d))
            .map(|r| r.count())
            .unwrap_or(0)
    };
    assert_eq!(entries("pods"), 0, "pod dirs left");
    assert_eq!(entries("containers"), 0, "bundles left");
    assert_eq!(entries("containers-trash"), 0, "removed bundles left");
    // The crustd's own state tmpfs (when a test mounts one) is the only mount allowed.
    let left: Vec<String> = mounts_below(crustd.dir())
        .into_iter()
        .filter(|m| Path::new(m) != state && Path::new(m) != crustd.root_dir)
        .collect();
    assert!(left.is_empty(), "mounts left: {left:?}");
    if let Some(base) = base {
        assert!(
            processes_of(base).is_empty(),
            "processes of the pod's uids left"
        );
    }
}

#[tokio::test]
async fn a_pod_in_a_user_namespace_is_root_inside_and_unprivileged_outside() {
    let n = 40;
    let base = host_base(n);
    let (_registry, crustd, net, image, mut rt) = userns_setup(n).await;

    let status = rt
        .status(cri::StatusRequest { verbose: false })
        .await
        .expect("Status")
        .into_inner();
    assert!(
        status
            .runtime_handlers
            .iter()
            .all(|h| h.features.is_some_and(|f| f.user_namespaces)),
        "{:?}",
        status.runtime_handlers
    );

    let mut pc = pod_config("userns", &net, &crustd.dir().join("logs"));
    pod_userns(&mut pc, base);
    let t0 = std::time::Instant::now();
    let pod = run_pod(&mut rt, &pc).await;
    let t_pod = t0.elapsed();

    // Two volumes from the host, both owned by root there: `plain` without mappings (so
    // world-writable, as the pod's root is nobody to it), `idmapped` with the pod's.
    let plain = crustd.dir().join("plain");
    let idmapped = crustd.dir().join("idmapped");
    for d in [&plain, &idmapped] {
        std::fs::create_dir(d).expect("mkdir");
    }
    std::fs::set_permissions(&plain, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    std::fs::write(idmapped.join("from-host"), "x").expect("write");
    let mut c = container_config("c", &image, &["/bin/sh", "-c", "sleep 1000"]);
    c.mounts = vec![
        cri::Mount {
            container_path: "/plain".into(),
            host_path: plain.display().to_string(),
            ..Default::default()
        },
        cri::Mount {
            container_path: "/idmapped".into(),
            host_path: idmapped.display().to_string(),
            uid_mappings: mapping(base),
            gid_mappings: mapping(base),
            ..Default::default()
        },
        // Maps of its own (a user namespace made for the mount): on-disk 0 is host
        // base + 5, which is 5 inside.
        cri::Mount {
            container_path: "/shifted".into(),
            host_path: idmapped.display().to_string(),
            uid_mappings: mapping(base + 5),
            gid_mappings: mapping(base + 5),
            readonly: true,
            ..Default::default()
        },
    ];
    let t0 = std::time::Instant::now();
    let id = create(&mut rt, &pod, &pc, c).await.expect("create");
    // The figures the architecture map quotes (printed with --nocapture).
    eprintln!(
        "userns: RunPodSandbox {t_pod:?}, CreateContainer (2 idmapped volumes) {:?}",
        t0.elapsed()
    );
    start(&mut rt, &id).await;

    // Inside: root, with the mapping in uid_map.
    let out = crictl(&crustd, &["exec", &id, "id"]);
    assert!(out.starts_with("uid=0(root) gid=0(root)"), "{out}");
    let out = crictl(
        &crustd,
        &[
            "exec",
            &id,
            "cat",
            "/proc/self/uid_map",
            "/proc/self/gid_map",
        ],
    );
    let lines: Vec<Vec<&str>> = out
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    let want = vec!["0".to_string(), base.to_string(), "65536".into()];
    assert_eq!(lines.len(), 2, "{out}");
    for l in &lines {
        assert_eq!(l, &want, "{out}");
    }
    // Image files and the pod's files are root's (idmapped), /sys and the cgroup fs are there.
    let out = crictl(
        &crustd,
        &[
            "exec",
            &id,
            "stat",
            "-c",
            "%u:%g %n",
            "/bin/busybox",
            "/etc/hosts",
            "/etc/resolv.conf",
            "/dev/shm",
            "/idmapped/from-host",
        ],
    );
    assert_eq!(out.lines().count(), 5, "{out}");
    for l in out.lines() {
        assert!(l.starts_with("0:0 "), "{out}");
    }
    let out = crictl(
        &crustd,
        &["exec", &id, "stat", "-c", "%u:%g", "/shifted/from-host"],
    );
    assert_eq!(out.trim(), "5:5");
    let out = crictl(
        &crustd,
        &["exec", &id, "ls", "/sys/class/net", "/sys/fs/cgroup"],
    );
    assert!(out.contains("eth0") && out.contains("lo"), "{out}");
    // The container can write its own root filesystem.
    crictl(&crustd, &["exec", &id, "touch", "/made-inside"]);

    // On the host: the process is the mapped, unprivileged uid.
    let pid = pid_of(&mut rt, &id).await;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let uids = status.lines().find(|l| l.starts_with("Uid:")).expect("Uid");
    assert_eq!(
        uids.split_whitespace().skip(1).collect::<Vec<_>>(),
        vec![base.to_string(); 4],
        "{uids}"
    );
    assert!(!processes_of(base).is_empty());

    // Volumes: without mappings a file is the mapped uid's on the host; through the idmap
    // it is stored as root's (what root is inside).
    crictl(&crustd, &["exec", &id, "touch", "/plain/f", "/idmapped/f"]);
    let md = std::fs::metadata(plain.join("f")).expect("plain/f");
    assert_eq!((md.uid(), md.gid()), (base, base));
    let md = std::fs::metadata(idmapped.join("f")).expect("idmapped/f");
    assert_eq!((md.uid(), md.gid()), (0, 0));

    // PodSandboxStatus says so.
    let st = rt
        .pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: pod.clone(),
            verbose: false,
        })
        .await
        .expect("status")
        .into_inner()
        .status
        .expect("status");
    let u = st
        .linux
        .and_then(|l| l.namespaces)
        .and_then(|n| n.options)
        .and_then(|o| o.userns_options)
        .expect("userns_options");
    assert_eq!(u.mode, cri::NamespaceMode::Pod as i32);
    assert_eq!(u.uids, mapping(base));

    // Removal leaves nothing: no mount (rootfs, idmapped copies, pins), no directory, no process.
    crictl(&crustd, &["rmp", "-f", &pod]);
    assert_nothing_left(&crustd, Some(base));
    assert!(
        plain.join("f").exists() && idmapped.join("from-host").exists(),
        "volumes kept"
    );
}

#[tokio::test]
async fn node_mode_is_the_hosts_user_namespace() {
    let n = 41;
    let (registry, crustd, net) = setup(n).await;
    let image = registry.image("crust/busybox:latest");
    pull(&crustd, &image).await;
    let mut rt = crustd.runtime().await.expect("client");
    let mut pc = pod_config("node", &net, &crustd.dir().join("logs"));
    namespaces(&mut pc).userns_options = Some(cri::UserNamespace {
        mode: cri::NamespaceMode::Node as i32,
        ..Default::default()
    });
    let t0 = std::time::Instant::now();
    let pod = run_pod(&mut rt, &pc).await;
    let t_pod = t0.elapsed();
    let t0 = std::time::Instant::now();
    let id = sleeper(&mut rt, &pod, &pc, &image, "c").await;
    eprintln!(
        "NODE: RunPodSandbox {t_pod:?}, CreateContainer {:?}",
        t0.elapsed()
    );
    start(&mut rt, &id).await;
    let out = crictl(&crustd, &["exec", &id, "cat", "/proc/self/uid_map"]);
    assert_eq!(
        out.split_whitespace().collect::<Vec<_>>(),
        ["0", "0", "4294967295"]
    );
    let pid = pid_of(&mut rt, &id).await;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    assert!(
        status
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["Uid:", "0", "0", "0", "0"])
    );
    crictl(&crustd, &["rmp", "-f", &pod]);
    assert_nothing_left(&crustd, None);
}

#[tokio::test]
async fn bad_mappings_are_refused_and_leave_nothing() {
    let n = 42;
    let base = host_base(n);
    let (_registry, crustd, net, image, mut rt) = userns_setup(n).await;
    let m = |c: u32, h: u32, l: u32| cri::IdMapping {
        container_id: c,
        host_id: h,
        length: l,
    };
    let cases: Vec<(&str, Vec<cri::IdMapping>, Vec<cri::IdMapping>, &str)> = vec![
        (
            "overlap",
            vec![m(0, base, 1000), m(1000, base + 10, 10)],
            mapping(base),
            "host ids overlap",
        ),
        (
            "noroot",
            vec![m(1, base, 1000)],
            mapping(base),
            "container id 0 is not mapped",
        ),
        ("nogids", mapping(base), vec![], "gids: no mapping"),
        ("zero", vec![m(0, base, 0)], mapping(base), "length is 0"),
        (
            "wrap",
            vec![m(0, u32::MAX - 5, 65536)],
            mapping(base),
            "past the id space",
        ),
    ];
    for (name, uids, gids, want) in cases {
        let mut pc = pod_config(name, &net, &crustd.dir().join("logs"));
        namespaces(&mut pc).userns_options = Some(cri::UserNamespace {
            mode: cri::NamespaceMode::Pod as i32,
            uids,
            gids,
        });
        let e = rt
            .run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(pc),
                runtime_handler: String::new(),
            })
            .await
            .expect_err(name);
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{name}: {e:?}");
        assert!(e.message().contains(want), "{name}: {}", e.message());
    }
    // A user namespace with the host's network namespace.
    let mut pc = pod_config("hostnet", &net, &crustd.dir().join("logs"));
    pod_userns(&mut pc, base);
    namespaces(&mut pc).network = cri::NamespaceMode::Node as i32;
    let e = rt
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(pc),
            runtime_handler: String::new(),
        })
        .await
        .expect_err("hostnet");
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");

    // Mappings on a mount: malformed ones are refused, and a pod without a user namespace
    // takes none.
    let pc = pod_config("plain", &net, &crustd.dir().join("logs"));
    let pod = run_pod(&mut rt, &pc).await;
    let vol = crustd.dir().join("vol");
    std::fs::create_dir(&vol).expect("mkdir");
    for (maps, want) in [
        (vec![m(0, base, 0)], "length is 0"),
        (mapping(base), "need a pod with its own user namespace"),
    ] {
        let mut c = container_config("c", &image, &["/bin/sh", "-c", "sleep 1000"]);
        c.mounts = vec![cri::Mount {
            container_path: "/vol".into(),
            host_path: vol.display().to_string(),
            uid_mappings: maps.clone(),
            gid_mappings: maps,
            ..Default::default()
        }];
        let e = create(&mut rt, &pod, &pc, c).await.expect_err(want);
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
        assert!(e.message().contains(want), "{}", e.message());
    }
    remove_pod(&mut rt, &pod).await;
    assert_nothing_left(&crustd, Some(base));
}

#[tokio::test]
async fn a_user_namespace_pod_is_removed_after_a_crustd_crash() {
    let n = 43;
    let base = host_base(n);
    let (registry, mut crustd, net) = setup(n).await;
    searchable(&crustd);
    let image = registry.image("crust/busybox:latest");
    pull(&crustd, &image).await;
    let mut rt = crustd.runtime().await.expect("client");
    let mut pc = pod_config("crash", &net, &crustd.dir().join("logs"));
    pod_userns(&mut pc, base);
    // A shared PID namespace: the infra process is the user namespace's first process.
    namespaces(&mut pc).pid = cri::NamespaceMode::Pod as i32;
    let pod = run_pod(&mut rt, &pc).await;
    let running = sleeper(&mut rt, &pod, &pc, &image, "running").await;
    start(&mut rt, &running).await;
    // Created, never started: its bundle and idmapped copies outlive the crash too.
    let _created = sleeper(&mut rt, &pod, &pc, &image, "created").await;
    let out = crictl(&crustd, &["exec", &running, "cat", "/proc/1/cmdline"]);
    assert!(out.starts_with("crust-pod-init"), "{out}");
    drop(rt);
    crustd.crash().await.expect("crash");
    crustd.restart().await.expect("restart");
    let mut rt = crustd.runtime().await.expect("client");
    // The created container still starts (its bundle path is searchable again).
    start(&mut rt, &_created).await;
    let out = crictl(&crustd, &["exec", &_created, "id", "-u"]);
    assert_eq!(out.trim(), "0");
    crictl(&crustd, &["rmp", "-f", &pod]);
    wait_for("the pod's processes gone", Duration::from_secs(10), || {
        processes_of(base).is_empty()
    })
    .await;
    assert_nothing_left(&crustd, Some(base));
}

#[tokio::test]
async fn crictl_runs_a_pod_with_a_user_namespace() {
    let n = 44;
    let base = host_base(n);
    let (_registry, crustd, net, image, _rt) = userns_setup(n).await;
    let ids = serde_json::json!([{ "host_id": base, "container_id": 0, "length": 65536 }]);
    let pod = serde_json::json!({
        "metadata": { "name": "crictl-userns", "uid": "uid-crictl-userns", "namespace": "e2e" },
        "hostname": "crictl-userns",
        "log_directory": crustd.dir().join("logs").display().to_string(),
        "linux": {
            "cgroup_parent": net.cgroup_parent,
            "security_context": { "namespace_options": {
                "pid": cri::NamespaceMode::Container as i32,
                "userns_options": { "mode": cri::NamespaceMode::Pod as i32, "uids": ids, "gids": ids }
            } }
        }
    });
    let ctr = serde_json::json!({
        "metadata": { "name": "c" },
        "image": { "image": image },
        "command": ["/bin/sleep", "1000"],
        "log_path": "c/0.log"
    });
    let pod_file = crustd.dir().join("pod.json");
    let ctr_file = crustd.dir().join("ctr.json");
    std::fs::write(&pod_file, pod.to_string()).expect("pod.json");
    std::fs::write(&ctr_file, ctr.to_string()).expect("ctr.json");
    let (pod_file, ctr_file) = (
        pod_file.display().to_string(),
        ctr_file.display().to_string(),
    );
    let pod = crictl(&crustd, &["runp", &pod_file]).trim().to_string();
    let inspect: serde_json::Value =
        serde_json::from_str(&crictl(&crustd, &["inspectp", "-o", "json", &pod])).expect("json");
    let userns = &inspect["status"]["linux"]["namespaces"]["options"]["usernsOptions"];
    assert_eq!(userns["mode"], "POD", "{inspect}");
    assert_eq!(userns["uids"][0]["hostId"], base, "{inspect}");
    let id = crictl(&crustd, &["create", &pod, &ctr_file, &pod_file])
        .trim()
        .to_string();
    crictl(&crustd, &["start", &id]);
    let out = crictl(&crustd, &["exec", &id, "cat", "/proc/self/uid_map"]);
    assert_eq!(
        out.split_whitespace().collect::<Vec<_>>(),
        ["0", &base.to_string(), "65536"]
    );
    crictl(&crustd, &["rmp", "-f", &pod]);
    assert_nothing_left(&crustd, Some(base));
}

//! crust's state is root's alone (the class of containerd's CVE-2021-41103): another
//! user of the host can neither read a container's env (from state.redb or its
//! config.json) nor walk into its root filesystem, nor run a setuid-root binary a
//! root container left in its /tmp.

use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use crust_e2e::cri;
use crust_e2e::workload::*;

/// The unprivileged user the checks run as.
const NOBODY: u32 = 65534;
const SECRET: &str = "s3cret-8a1f0c";

/// `cmd` run as nobody (no supplementary groups: std drops them when it sets the uid).
fn as_nobody(program: impl AsRef<std::ffi::OsStr>, args: &[&str]) -> std::io::Result<Output> {
    Command::new(program)
        .args(args)
        .env("LC_ALL", "C")
        .uid(NOBODY)
        .gid(NOBODY)
        .output()
}

/// Paths below `top` (not crossing into other mounts, not following links) whose mode lets
/// group or others in, except what containers must read (their `/` and layer files below a
/// snapshot's `fs`, the pod's hosts, hostname and resolv.conf), sockets, and what runc
/// itself writes with its own modes inside crust's 0700 directories (a bundle's `init.pid`
/// and `log.json`, its per-container state dir in the 0700 `<state_dir>/runc`).
fn open_to_others(top: &Path) -> Vec<String> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let exempt = |p: &Path| {
        p.components().any(|c| c.as_os_str() == "fs")
            || ["hosts", "hostname", "resolv.conf", "init.pid", "log.json"]
                .iter()
                .any(|n| p.file_name().is_some_and(|f| f == *n))
            || p.parent().is_some_and(|d| d.ends_with("runc"))
    };
    let mut out = Vec::new();
    let dev = std::fs::metadata(top).expect("top").dev();
    let mut stack = vec![top.to_path_buf()];
    while let Some(p) = stack.pop() {
        let Ok(m) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        let ft = m.file_type();
        if ft.is_symlink() || ft.is_socket() || m.dev() != dev || exempt(&p) {
            continue;
        }
        if m.mode() & 0o077 != 0 {
            out.push(format!("{:o} {}", m.mode() & 0o7777, p.display()));
        }
        if ft.is_dir() {
            stack.extend(std::fs::read_dir(&p).unwrap().flatten().map(|e| e.path()));
        }
    }
    out.sort();
    out
}

/// A read as nobody fails with "Permission denied".
fn assert_denied(program: &str, path: &Path) {
    let out = as_nobody(program, &[path.to_str().expect("utf-8 path")]).expect(program);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("Permission denied"),
        "{program} {} as nobody: {:?}, {} bytes read, stderr {stderr:?}",
        path.display(),
        out.status,
        out.stdout.len()
    );
}

#[tokio::test]
async fn other_users_cannot_read_container_secrets_or_reach_root_through_its_files() {
    let (registry, crustd, net) = setup(242).await;
    // The test's temp dir stands for /var/lib and /run: passable by everyone.
    std::fs::set_permissions(
        crustd.dir(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod temp dir");
    let image = registry.image("crust/busybox:latest");
    pull(&crustd, &image).await;
    let mut rt = crustd.runtime().await.expect("client");
    let pc = pod_config("private", &net, &crustd.dir().join("logs"));
    let pod = run_pod(&mut rt, &pc).await;
    let mut config = container_config(
        "app",
        &image,
        &[
            "/bin/sh",
            "-c",
            "cp /bin/busybox /tmp/probe && chmod 4755 /tmp/probe && ln -s probe /tmp/id \
             && touch /tmp/ready && exec sleep 1000",
        ],
    );
    config.envs = vec![cri::KeyValue {
        key: "DB_PASSWORD".into(),
        value: SECRET.into(),
    }];
    let id = create(&mut rt, &pod, &pc, config).await.expect("create");
    start(&mut rt, &id).await;
    let bundle = crustd.state_dir.join("containers").join(&id);
    let rootfs = bundle.join("rootfs");
    wait_for("the container's probe", Duration::from_secs(10), || {
        rootfs.join("tmp/ready").exists()
    })
    .await;
    // Root sees it all: the checks below fail for want of permission, not of files.
    assert!(
        std::fs::read_to_string(bundle.join("config.json"))
            .unwrap()
            .contains(SECRET)
    );

    for top in [&crustd.root_dir, &crustd.state_dir] {
        assert_eq!(
            open_to_others(top),
            Vec::<String>::new(),
            "below {}",
            top.display()
        );
    }
    assert_denied("cat", &crustd.root_dir.join("state.redb"));
    assert_denied("cat", &bundle.join("config.json"));
    assert_denied("ls", &rootfs);
    let grep = as_nobody(
        "grep",
        &[
            "-rl",
            SECRET,
            crustd.root_dir.to_str().unwrap(),
            crustd.state_dir.to_str().unwrap(),
        ],
    )
    .expect("grep");
    assert_eq!(
        String::from_utf8_lossy(&grep.stdout),
        "",
        "files holding the secret that nobody can read"
    );
    match as_nobody(rootfs.join("tmp/id"), &["-u"]) {
        Err(e) => assert_eq!(
            e.raw_os_error(),
            Some(nix::libc::EACCES),
            "exec of the container's setuid binary: {e}"
        ),
        Ok(out) => panic!(
            "nobody ran the container's setuid-root binary: {:?}, euid {:?}",
            out.status,
            String::from_utf8_lossy(&out.stdout)
        ),
    }

    // The container, running as root inside, is unaffected.
    let out = exec(&mut rt, &id, &["/bin/sh", "-c", "echo $DB_PASSWORD"], 10)
        .await
        .expect("exec");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), SECRET);
    remove_pod(&mut rt, &pod).await;
}

//! Native exec (the shim starts exec processes itself, shim/src/nexec): what such a
//! process sees must be what the container's own init sees — and what a `runc exec`
//! process sees, checked on a container whose seccomp profile sends its execs to runc.

use std::time::Duration;

use crust_e2e::cri;
use crust_e2e::workload::{container_config, create, exec, pid_of, scene_with, start};
use crust_e2e::{Options, workload::Rt};

/// Prints, for the exec'd shell (`$$`) and then for the container's init (pid 1), what
/// confines it: the same lines for both when the exec got the init's confinement.
const CONFINEMENT: &str = r#"
for p in $$ 1; do
  echo "== $p"
  grep -E '^(Cap|NoNewPrivs|Seccomp|Uid|Gid|Groups|Umask)' /proc/$p/status
  cat /proc/$p/cgroup /proc/$p/limits /proc/$p/oom_score_adj
  for n in /proc/$p/ns/*; do echo "${n##*/} $(readlink $n)"; done
  echo "cwd $(readlink /proc/$p/cwd)"
  tr '\0' '\n' < /proc/$p/environ | sort
done
"#;

fn with_security(
    mut c: cri::ContainerConfig,
    f: impl FnOnce(&mut cri::LinuxContainerSecurityContext),
) -> cri::ContainerConfig {
    let linux = c.linux.get_or_insert_with(Default::default);
    f(linux.security_context.get_or_insert_with(Default::default));
    c
}

/// A container of a non-root user with extra groups, dropped capabilities, a read-only
/// rootfs, no_new_privs, a working dir and an env var; `seccomp` adds RuntimeDefault.
fn confined(name: &str, image: &str, seccomp: bool) -> cri::ContainerConfig {
    let mut c = container_config(name, image, &["/bin/sleep", "1000"]);
    c.working_dir = "/tmp".into();
    c.envs = vec![cri::KeyValue {
        key: "GREETING".into(),
        value: "hello".into(),
    }];
    with_security(c, |sc| {
        sc.run_as_user = Some(cri::Int64Value { value: 1000 });
        sc.run_as_group = Some(cri::Int64Value { value: 1000 });
        sc.supplemental_groups = vec![5, 6];
        sc.readonly_rootfs = true;
        sc.no_new_privs = true;
        sc.capabilities = Some(cri::Capability {
            drop_capabilities: vec!["ALL".into()],
            add_capabilities: vec!["CHOWN".into(), "NET_RAW".into()],
            ..Default::default()
        });
        if seccomp {
            sc.seccomp = Some(cri::SecurityProfile {
                profile_type: cri::security_profile::ProfileType::RuntimeDefault as i32,
                localhost_ref: String::new(),
            });
        }
    })
}

/// Signals blocked and ignored by an exec'd process (not a shell: ash ignores SIGQUIT
/// itself) and by the init.
async fn signals(rt: &mut Rt, id: &str) -> (String, String) {
    let args = [
        "/bin/grep",
        "-E",
        "^Sig(Blk|Ign)",
        "/proc/self/status",
        "/proc/1/status",
    ];
    let r = exec(rt, id, &args, 10).await.expect("exec");
    let out = String::from_utf8_lossy(&r.stdout);
    let pick = |who: &str| -> String {
        out.lines()
            .filter_map(|l| l.strip_prefix(who))
            .collect::<Vec<_>>()
            .join("\n")
    };
    (pick("/proc/self/status:"), pick("/proc/1/status:"))
}

/// The exec's section and the init's section of [`CONFINEMENT`].
async fn confinement(rt: &mut Rt, id: &str) -> (String, String) {
    let r = exec(rt, id, &["/bin/sh", "-c", CONFINEMENT], 10)
        .await
        .expect("exec");
    let out = String::from_utf8_lossy(&r.stdout).into_owned();
    assert_eq!(
        r.exit_code,
        0,
        "{out}{}",
        String::from_utf8_lossy(&r.stderr)
    );
    let (mine, init) = out.split_once("== 1\n").expect("two sections");
    let mine = mine.split_once('\n').expect("header").1.to_string();
    (mine, init.to_string())
}

fn crictl() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/bin/crictl")
}

/// A crictl config file next to `socket` naming it.
fn crictl_config(socket: &std::path::Path) -> std::path::PathBuf {
    let path = socket.with_extension("crictl.yaml");
    let endpoint = format!("unix://{}", socket.display());
    std::fs::write(
        &path,
        format!("runtime-endpoint: {endpoint}\nimage-endpoint: {endpoint}\n"),
    )
    .unwrap();
    path
}

/// The shim's log of the test's pods.
fn shim_logs(crustd: &crust_e2e::Crustd) -> String {
    let mut text = String::new();
    for root in [&crustd.root_dir, &crustd.state_dir] {
        let out = std::process::Command::new("find")
            .arg(root)
            .args(["-name", "shim.log"])
            .output()
            .expect("find");
        for p in String::from_utf8_lossy(&out.stdout).lines() {
            text += &std::fs::read_to_string(p).unwrap_or_default();
        }
    }
    text
}

/// Zombie children and open fds of the shim (the parent of the container's init).
fn shim_leftovers(init_pid: i64) -> (usize, usize) {
    let status = std::fs::read_to_string(format!("/proc/{init_pid}/status")).unwrap();
    let shim: u32 = status
        .lines()
        .find_map(|l| l.strip_prefix("PPid:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("PPid");
    let zombies = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
        .filter(|s| {
            let rest: Vec<&str> = s
                .rsplit(')')
                .next()
                .unwrap_or("")
                .split_whitespace()
                .collect();
            rest.first() == Some(&"Z") && rest.get(1) == Some(&shim.to_string().as_str())
        })
        .count();
    let fds = std::fs::read_dir(format!("/proc/{shim}/fd"))
        .unwrap()
        .count();
    (zombies, fds)
}

#[tokio::test]
async fn native_exec_confines_as_the_init_and_as_runc_exec() {
    let opts = Options {
        env: vec![("RUST_LOG".into(), "debug".into())],
        ..Default::default()
    };
    let (_registry, crustd, _net, image, mut rt, pc, pod) = scene_with(55, "nexec", opts).await;
    let native = create(&mut rt, &pod, &pc, confined("native", &image, false))
        .await
        .expect("create");
    start(&mut rt, &native).await;
    let by_runc = create(&mut rt, &pod, &pc, confined("by-runc", &image, true))
        .await
        .expect("create");
    start(&mut rt, &by_runc).await;

    let (mine, init) = confinement(&mut rt, &native).await;
    assert_eq!(mine, init, "native exec vs the init");
    let (mine_sig, init_sig) = signals(&mut rt, &native).await;
    assert!(mine_sig.contains("SigIgn"), "{mine_sig}");
    assert_eq!(mine_sig, init_sig, "signals: native exec vs the init");
    for want in [
        "Uid:\t1000\t1000\t1000\t1000",
        "Groups:\t5 6",
        "NoNewPrivs:\t1",
    ] {
        assert!(mine.contains(want), "{want} in {mine}");
    }
    assert!(
        mine.contains("cwd /tmp") && mine.contains("GREETING=hello"),
        "{mine}"
    );
    // CHOWN and NET_RAW only, in the bounding set; a non-root user keeps none.
    assert!(mine.contains("CapBnd:\t0000000000002001"), "{mine}");
    assert!(mine.contains("CapEff:\t0000000000000000"), "{mine}");
    let logs = shim_logs(&crustd);
    assert!(
        logs.contains(&format!("exec in {native} natively")),
        "{logs}"
    );

    // runc applies the container's seccomp filter; the native path leaves such a
    // container's execs to runc, which gives the same picture.
    let (mine, init) = confinement(&mut rt, &by_runc).await;
    assert_eq!(mine, init, "runc exec vs the init");
    let (runc_sig, init_sig) = signals(&mut rt, &by_runc).await;
    assert_eq!(runc_sig, init_sig, "signals: runc exec vs the init");
    assert!(mine.contains("Seccomp:\t2"), "{mine}");
    assert!(
        shim_logs(&crustd).contains(&format!(
            "exec in {by_runc} through runc: linux.seccomp is set"
        )),
        "fallback logged"
    );

    // Exit codes, a missing binary: the same on both paths.
    for id in [&native, &by_runc] {
        let r = exec(&mut rt, id, &["/bin/sh", "-c", "echo out; exit 3"], 10)
            .await
            .expect("exec");
        assert_eq!((r.exit_code, r.stdout.as_slice()), (3, &b"out\n"[..]));
        let e = exec(&mut rt, id, &["nope"], 10)
            .await
            .expect_err("no such binary");
        assert!(
            e.message()
                .contains(r#"exec: "nope": executable file not found in $PATH"#),
            "{id}: {e:?}"
        );
        let e2 = exec(&mut rt, &by_runc, &["nope"], 10).await.unwrap_err();
        assert_eq!(e.code(), e2.code());
    }

    // crictl exec -it (script gives crictl a terminal): the pty the shim opened in the
    // container, at crictl's size, and no exec of the native container went to runc.
    let script = format!(
        "stty cols 91 rows 27; {} --config {} exec -it {native} sh -c 'tty; stty size; id -u'",
        crictl().display(),
        crictl_config(&crustd.socket).display()
    );
    let out = std::process::Command::new("script")
        .args(["-qec", &script, "/dev/null"])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("script runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "tty exec: {text}");
    for want in ["/dev/pts/", "27 91", "1000"] {
        assert!(text.contains(want), "{want} in {text:?}");
    }
    let logs = shim_logs(&crustd);
    assert!(
        !logs.contains(&format!("exec in {native} through runc")),
        "{logs}"
    );

    // Many execs leave no zombie and no descriptor behind in the shim.
    let init_pid = pid_of(&mut rt, &native).await;
    let before = shim_leftovers(init_pid);
    for _ in 0..20 {
        let r = exec(&mut rt, &native, &["/bin/true"], 10)
            .await
            .expect("exec");
        assert_eq!(r.exit_code, 0);
    }
    let _ = exec(&mut rt, &native, &["nope"], 10).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = shim_leftovers(init_pid);
    assert_eq!(after.0, 0, "zombies under the shim");
    assert_eq!(after.1, before.1, "shim fds before/after");
    // How long the shim took per native exec (for the record, in the test's output).
    for l in shim_logs(&crustd)
        .lines()
        .filter(|l| l.contains("natively"))
    {
        eprintln!("{l}");
    }
}

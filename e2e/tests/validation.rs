//! Validation at the edge, end to end with the real client: crictl with pod and
//! container JSON configs sends what crust must refuse; crictl prints the
//! InvalidArgument naming the field, and nothing is left behind — nothing listed,
//! no pod directory, no CNI lease, no cgroup, no log directory, no forged log line.

use std::path::{Path, PathBuf};
use std::process::Command;

use crust_e2e::net::TestNet;
use crust_e2e::workload::*;
use crust_e2e::{Crustd, cri};
use serde_json::json;
use tonic::Code;

const CRICTL: &str = "/work/shared/bin/crictl";

struct Crictl<'a> {
    crustd: &'a Crustd,
}

/// What crictl printed and whether it succeeded.
struct Output {
    ok: bool,
    stdout: String,
    stderr: String,
}

impl Crictl<'_> {
    fn run(&self, args: &[&str]) -> Output {
        let endpoint = format!("unix://{}", self.crustd.socket.display());
        let out = Command::new(CRICTL)
            .args([
                "--runtime-endpoint",
                &endpoint,
                "--image-endpoint",
                &endpoint,
            ])
            .args(["--timeout", "60s"])
            .args(args)
            .output()
            .expect("crictl runs");
        Output {
            ok: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).trim().to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).to_string(),
        }
    }

    /// Runs a crictl command that must fail with InvalidArgument naming `field`.
    fn refused(&self, args: &[&str], field: &str) -> String {
        let out = self.run(args);
        assert!(!out.ok, "{args:?} succeeded: {}", out.stdout);
        assert!(
            out.stderr.contains("code = InvalidArgument") && out.stderr.contains(field),
            "{args:?}: expected InvalidArgument naming {field}, crictl printed:\n{}",
            out.stderr
        );
        out.stderr
    }

    fn ids(&self, args: &[&str]) -> Vec<String> {
        let out = self.run(args);
        assert!(out.ok, "{args:?}: {}", out.stderr);
        out.stdout.lines().map(str::to_string).collect()
    }
}

fn write_json(dir: &Path, name: &str, v: &serde_json::Value) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, serde_json::to_vec_pretty(v).expect("json")).expect("write config");
    p
}

/// A pod config as crictl users write them, with this test's network and cgroup parent.
fn pod_json(name: &str, net: &TestNet, log_directory: &str) -> serde_json::Value {
    json!({
        "metadata": { "name": name, "namespace": "e2e", "uid": format!("uid-{}", name.len()), "attempt": 0 },
        "hostname": "valid",
        "log_directory": log_directory,
        "linux": {
            "cgroup_parent": net.cgroup_parent,
            "security_context": { "namespace_options": { "pid": 1 } }
        }
    })
}

fn pod_dirs(crustd: &Crustd) -> usize {
    std::fs::read_dir(crustd.state_dir.join("pods"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[tokio::test]
async fn crictl_gets_invalid_argument_and_nothing_is_left_behind() {
    let (registry, crustd, net) = setup(171).await;
    let image = registry.image("crust/busybox:latest");
    pull(&crustd, &image).await;
    let crictl = Crictl { crustd: &crustd };
    let dir = crustd.dir().join("configs");
    std::fs::create_dir_all(&dir).expect("configs dir");
    let logs = crustd.dir().join("logs").display().to_string();
    let path = |p: &PathBuf| p.display().to_string();

    // run_as_group without run_as_user: the CRI API says the runtime MUST error.
    let mut alone = pod_json("group-alone", &net, &logs);
    alone["linux"]["security_context"]["run_as_group"] = json!({ "value": 1000 });
    let f = write_json(&dir, "group-alone.json", &alone);
    let said = crictl.refused(&["runp", &path(&f)], "run_as_group");
    assert!(said.contains("run_as_user"), "{said}");

    // A relative log directory: crustd's working directory is nobody's.
    let f = write_json(
        &dir,
        "relative.json",
        &pod_json("relative", &net, "relative/logs"),
    );
    crictl.refused(&["runp", &path(&f)], "log_directory");
    let cwd = std::fs::read_link(format!("/proc/{}/cwd", crustd.pid().expect("pid")))
        .expect("crustd's cwd");
    assert!(
        !cwd.join("relative").exists(),
        "a log directory was made in crustd's working directory"
    );

    // A NUL byte in the name never reaches the CNI plugin.
    let f = write_json(&dir, "nul.json", &pod_json("web\u{0}x", &net, &logs));
    crictl.refused(&["runp", &path(&f)], "metadata.name");

    // A newline and an ESC in a name: refused, and logged as one escaped line.
    let f = write_json(
        &dir,
        "forged.json",
        &pod_json("web\n\u{1b}[31mforged", &net, &logs),
    );
    crictl.refused(&["runp", &path(&f)], "metadata.name");
    let log = crustd.log();
    assert!(
        !log.contains('\u{1b}'),
        "a raw ESC reached crustd.log:\n{log}"
    );
    let line = log
        .lines()
        .find(|l| l.contains("forged"))
        .expect("the refusal is logged");
    assert!(
        line.contains("InvalidArgument") && line.contains("RunPodSandbox"),
        "the name split the log line: {line}"
    );

    // Nothing of any of them exists.
    assert_eq!(crictl.ids(&["pods", "-q"]), Vec::<String>::new());
    assert_eq!(pod_dirs(&crustd), 0, "pod directories left");
    assert_eq!(net.leases(), Vec::<String>::new(), "CNI leases left");
    assert_no_cgroups_left(&net);
    assert!(!Path::new(&logs).exists(), "a log directory was made");

    // In a good pod, a container asking for run_as_group alone is refused too.
    let pod_file = write_json(&dir, "pod.json", &pod_json("valid", &net, &logs));
    let pod = crictl.run(&["runp", &path(&pod_file)]);
    assert!(pod.ok, "the valid pod: {}", pod.stderr);
    let container = json!({
        "metadata": { "name": "group-alone" },
        "image": { "image": image },
        "command": ["/bin/sleep", "1000"],
        "log_path": "group-alone/0.log",
        "linux": { "security_context": { "run_as_group": { "value": 1000 } } }
    });
    let c = write_json(&dir, "container.json", &container);
    let said = crictl.refused(
        &["create", &pod.stdout, &path(&c), &path(&pod_file)],
        "linux.security_context.run_as_group",
    );
    assert!(said.contains("run_as_username"), "{said}");
    // ... and one whose log path climbs out of the pod's log directory.
    let mut climbing = container.clone();
    climbing["linux"]["security_context"] = json!({});
    climbing["log_path"] = json!("../../escaped.log");
    let c = write_json(&dir, "climbing.json", &climbing);
    crictl.refused(
        &["create", &pod.stdout, &path(&c), &path(&pod_file)],
        "log_path",
    );
    assert_eq!(crictl.ids(&["ps", "-a", "-q"]), Vec::<String>::new());
    let containers = crustd.state_dir.join("containers");
    assert_eq!(
        std::fs::read_dir(&containers)
            .map(|d| d.count())
            .unwrap_or(0),
        0,
        "container directories left in {}",
        containers.display()
    );

    let stop = crictl.run(&["stopp", &pod.stdout]);
    assert!(stop.ok, "{}", stop.stderr);
    let rm = crictl.run(&["rmp", &pod.stdout]);
    assert!(rm.ok, "{}", rm.stderr);
}

/// The memory limit file of a container's cgroup (v1's or v2's).
fn memory_limit_file(cgroups_path: &str) -> PathBuf {
    let path = cgroups_path.trim_start_matches('/');
    if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        PathBuf::from("/sys/fs/cgroup")
            .join(path)
            .join("memory.max")
    } else {
        PathBuf::from("/sys/fs/cgroup/memory")
            .join(path)
            .join("memory.limit_in_bytes")
    }
}

fn with_resources(
    mut c: cri::ContainerConfig,
    r: cri::LinuxContainerResources,
) -> cri::ContainerConfig {
    c.linux = Some(cri::LinuxContainerConfig {
        resources: Some(r),
        ..Default::default()
    });
    c
}

#[tokio::test]
async fn bad_resources_are_refused_and_change_nothing() {
    let (_registry, _crustd, _net, image, mut rt, pc, pod) = scene(172, "resources").await;
    let sleep = ["/bin/sleep", "1000"];
    let mib64 = cri::LinuxContainerResources {
        memory_limit_in_bytes: 64 << 20,
        ..Default::default()
    };

    // A negative memory limit was "no limit"; now it is refused and nothing is made.
    let c = with_resources(
        container_config("negative", &image, &sleep),
        cri::LinuxContainerResources {
            memory_limit_in_bytes: -1,
            ..Default::default()
        },
    );
    let err = create(&mut rt, &pod, &pc, c)
        .await
        .expect_err("negative memory");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(
        err.message()
            .starts_with("linux.resources.memory_limit_in_bytes:"),
        "{}",
        err.message()
    );
    let listed = rt
        .list_containers(cri::ListContainersRequest::default())
        .await
        .expect("ListContainers")
        .into_inner()
        .containers;
    assert!(listed.is_empty(), "{listed:?}");

    // An update with a bad value is refused and leaves the running limit as it was.
    let id = create(
        &mut rt,
        &pod,
        &pc,
        with_resources(container_config("limited", &image, &sleep), mib64.clone()),
    )
    .await
    .expect("create");
    start(&mut rt, &id).await;
    let file = memory_limit_file(
        verbose_info(&mut rt, &id).await["cgroupsPath"]
            .as_str()
            .expect("cgroupsPath"),
    );
    let before = std::fs::read_to_string(&file).expect("memory limit");
    assert_eq!(before.trim(), (64u64 << 20).to_string());
    let bad: [(&str, cri::LinuxContainerResources); 4] = [
        (
            "memory_limit_in_bytes",
            cri::LinuxContainerResources {
                memory_limit_in_bytes: -1,
                ..Default::default()
            },
        ),
        (
            "oom_score_adj",
            cri::LinuxContainerResources {
                oom_score_adj: 5000,
                ..mib64.clone()
            },
        ),
        (
            "cpuset_cpus",
            cri::LinuxContainerResources {
                cpuset_cpus: "3-1".into(),
                ..mib64.clone()
            },
        ),
        (
            "cpu_shares",
            cri::LinuxContainerResources {
                cpu_shares: -2,
                memory_limit_in_bytes: 32 << 20,
                ..Default::default()
            },
        ),
    ];
    for (field, linux) in bad {
        let err = rt
            .update_container_resources(cri::UpdateContainerResourcesRequest {
                container_id: id.clone(),
                linux: Some(linux),
                ..Default::default()
            })
            .await
            .expect_err(field);
        assert_eq!(err.code(), Code::InvalidArgument, "{field}: {err:?}");
        assert!(err.message().contains(field), "{field}: {}", err.message());
    }
    let after = std::fs::read_to_string(&file).expect("memory limit");
    assert_eq!(after, before, "a refused update changed the limit");
    let status = status(&mut rt, &id).await;
    let recorded = status
        .resources
        .and_then(|r| r.linux)
        .map(|l| (l.memory_limit_in_bytes, l.cpu_shares));
    assert_eq!(
        recorded,
        Some((64 << 20, 0)),
        "a refused update changed the record"
    );

    remove_pod(&mut rt, &pod).await;
}

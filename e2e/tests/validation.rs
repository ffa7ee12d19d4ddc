//! Validation at the edge, end to end with the real client: crictl with pod and
//! container JSON configs sends what crust must refuse; crictl prints the
//! InvalidArgument naming the field, and nothing is left behind — nothing listed,
//! no pod directory, no CNI lease, no cgroup, no log directory, no forged log line.

use std::path::{Path, PathBuf};
use std::process::Command;

use crust_e2e::Crustd;
use crust_e2e::net::TestNet;
use crust_e2e::workload::*;
use serde_json::json;

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

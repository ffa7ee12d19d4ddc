//! One test's pod network and cgroup parent: a bridge of its own (`crust-pN`),
//! a /24 inside 10.88.0.0/16, host-local IPAM data under the test's temp dir and
//! a cgroup parent `/crust-e2e-N`, so tests run in parallel without meeting.
//! Dropping it deletes the bridge and whatever cgroups are left under the parent
//! (killing what is in them), also when the test failed.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::Crustd;

pub struct TestNet {
    pub n: u8,
    pub bridge: String,
    pub ipam_dir: PathBuf,
    pub cgroup_parent: String,
}

impl TestNet {
    /// Writes the bridge + portmap config into `crustd`'s CNI conf dir.
    pub fn new(crustd: &Crustd, n: u8) -> TestNet {
        let net = TestNet {
            n,
            bridge: format!("crust-p{n}"),
            ipam_dir: crustd.dir().join("ipam"),
            cgroup_parent: format!("/crust-e2e-{n}"),
        };
        net.write_config(crustd, None);
        net
    }

    pub fn subnet(&self) -> String {
        format!("10.88.{}.0/24", self.n)
    }

    pub fn network_name(&self) -> String {
        format!("crust-e2e-{}", self.n)
    }

    /// The bridge + portmap config; `single_ip` limits the range to one address.
    pub fn write_config(&self, crustd: &Crustd, single_ip: Option<&str>) {
        let range = match single_ip {
            Some(ip) => format!(
                r#"{{ "subnet": "{}", "rangeStart": "{ip}", "rangeEnd": "{ip}" }}"#,
                self.subnet()
            ),
            None => format!(r#"{{ "subnet": "{}" }}"#, self.subnet()),
        };
        let conf = format!(
            r#"{{
  "cniVersion": "1.0.0",
  "name": "{name}",
  "plugins": [
    {{ "type": "bridge", "bridge": "{bridge}", "isGateway": true, "ipMasq": false,
      "ipam": {{ "type": "host-local", "ranges": [[{range}]], "dataDir": "{dir}" }} }},
    {{ "type": "portmap", "capabilities": {{ "portMappings": true }} }}
  ]
}}"#,
            name = self.network_name(),
            bridge = self.bridge,
            dir = self.ipam_dir.display(),
        );
        crustd
            .write_cni_config("10-test.conflist", &conf)
            .expect("write CNI config");
    }

    /// host-local's lease files (one per allocated IP).
    pub fn leases(&self) -> Vec<String> {
        std::fs::read_dir(self.ipam_dir.join(self.network_name()))
            .map(|d| {
                d.filter_map(Result::ok)
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with("10.88."))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// This test's cgroup parent in every hierarchy where it exists.
    pub fn cgroup_dirs(&self) -> Vec<PathBuf> {
        cgroup_mounts()
            .into_iter()
            .map(|m| m.join(self.cgroup_parent.trim_start_matches('/')))
            .filter(|p| p.exists())
            .collect()
    }
}

impl Drop for TestNet {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .stderr(Stdio::null())
            .status();
        for dir in self.cgroup_dirs() {
            remove_cgroup_tree(&dir);
        }
    }
}

/// Every cgroup hierarchy of this node: the v1 controllers, the named v1
/// hierarchies (runc makes cgroups in name=systemd too) and the v2 mount.
pub fn cgroup_mounts() -> Vec<PathBuf> {
    let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    mi.lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let fstype = right.split(' ').next()?;
            let ok = fstype == "cgroup" || fstype == "cgroup2";
            ok.then(|| PathBuf::from(left.split(' ').nth(4).unwrap_or_default()))
        })
        .collect()
}

/// Kills the processes of a test's own cgroup tree and removes it (failed tests only).
pub fn remove_cgroup_tree(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.filter_map(Result::ok) {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                remove_cgroup_tree(&e.path());
            }
        }
    }
    for pid in std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse::<i32>().ok())
    {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    for _ in 0..100 {
        if std::fs::remove_dir(dir).is_ok() || !dir.exists() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Mount points at or below `dir`.
pub fn mounts_under(dir: &Path) -> Vec<String> {
    let d = dir.to_string_lossy().into_owned();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|p| p.starts_with(&d))
        .map(str::to_string)
        .collect()
}

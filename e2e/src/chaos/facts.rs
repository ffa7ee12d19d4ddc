//! What is on the node for one crustd, read from the kernel and the file system: mounts,
//! network namespaces and veths, cgroups, processes, snapshots, ingest files, CNI cache
//! entries and IP leases, pod dirs, bundles, runc state, shim sockets, container logs. The
//! invariants (`invariants.rs`) judge these against the records crustd lists.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::net::cgroup_mounts;

/// Where one crustd keeps things.
#[derive(Debug, Clone)]
pub struct Node {
    /// The temp dir everything of this crustd lives under.
    pub dir: PathBuf,
    pub root_dir: PathBuf,
    pub state_dir: PathBuf,
    pub crustd_pid: Option<u32>,
    pub bridge: String,
    /// The test's cgroup parent, `/crust-e2e-N`.
    pub cgroup_parent: String,
    /// host-local's lease files of the test network.
    pub leases_dir: PathBuf,
    /// The pods' log directories are below it.
    pub logs_dir: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub point: PathBuf,
    pub fstype: String,
    /// The super block options (overlay's `upperdir=` is there).
    pub options: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proc {
    pub pid: u32,
    pub ppid: u32,
    /// The parent's command name (`/proc/<ppid>/comm`), to tell who fails to reap a zombie.
    pub parent: String,
    /// Exited, waiting for its parent to reap it.
    pub zombie: bool,
    pub cmdline: String,
    /// Its cgroups below the cgroup parent, relative to it (`crust-<pod>/<ctr>`).
    pub cgroups: BTreeSet<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub ip: String,
    /// The container id host-local wrote into it (the pod id for crust).
    pub owner: String,
}

#[derive(Debug, Clone, Default)]
pub struct Facts {
    pub mounts: Vec<Mount>,
    /// (ifindex, name) of the veths enslaved to the test bridge.
    pub veths: Vec<(u32, String)>,
    /// Per pod with a network namespace pin: the host ifindexes its interfaces pair with.
    pub pod_peers: BTreeMap<String, BTreeSet<u32>>,
    /// Cgroup directories below the cgroup parent in any hierarchy, relative to it.
    pub cgroups: BTreeSet<String>,
    /// Processes in those cgroups or naming the crustd's dir on their command line.
    pub procs: Vec<Proc>,
    pub ingest: Vec<String>,
    pub trash: Vec<String>,
    pub snapshots: Vec<String>,
    pub cni_cache: Vec<String>,
    pub leases: Vec<Lease>,
    pub pod_dirs: Vec<String>,
    pub bundles: Vec<String>,
    pub runc_state: Vec<String>,
    pub shim_sockets: Vec<PathBuf>,
    /// The socket each pod dir's `address` file names.
    pub shim_addresses: BTreeMap<String, PathBuf>,
    /// Every CRI log file below the logs dir: its path and lines.
    pub logs: Vec<(PathBuf, Vec<String>)>,
}

/// Names in `dir` (none when it does not exist), sorted.
pub fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

impl Node {
    pub fn pod_dir(&self, id: &str) -> PathBuf {
        self.state_dir.join("pods").join(id)
    }

    /// Reads everything now. `pods` are the pods whose network namespace is looked into.
    pub fn facts(&self, pods: &[String]) -> Facts {
        let pods_dir = self.state_dir.join("pods");
        let pod_dirs = names(&pods_dir);
        Facts {
            mounts: self.mounts(),
            veths: self.veths(),
            pod_peers: pods
                .iter()
                .filter_map(|p| Some((p.clone(), self.peers(p)?)))
                .collect(),
            cgroups: self.cgroups(),
            procs: self.procs(),
            ingest: names(&self.root_dir.join("images/content/ingest")),
            trash: names(&self.root_dir.join("images/trash")),
            snapshots: names(&self.root_dir.join("images/snapshots")),
            cni_cache: names(&self.root_dir.join("cni")),
            leases: self.leases(),
            shim_addresses: pod_dirs
                .iter()
                .filter_map(|p| {
                    let a = std::fs::read_to_string(pods_dir.join(p).join("address")).ok()?;
                    let path = a.trim().trim_start_matches("unix://").to_string();
                    Some((p.clone(), PathBuf::from(path)))
                })
                .collect(),
            pod_dirs,
            bundles: names(&self.state_dir.join("containers")),
            runc_state: names(&self.state_dir.join("runc")),
            shim_sockets: names(&self.state_dir.join("s"))
                .into_iter()
                .map(|n| self.state_dir.join("s").join(n))
                .collect(),
            logs: self.logs(),
        }
    }

    fn mounts(&self) -> Vec<Mount> {
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let (left, right) = l.split_once(" - ")?;
                let point = PathBuf::from(unescape(left.split(' ').nth(4)?));
                let mut r = right.split(' ');
                let fstype = r.next()?.to_string();
                let options = r.nth(1).unwrap_or_default().to_string();
                point.starts_with(&self.dir).then_some(Mount {
                    point,
                    fstype,
                    options,
                })
            })
            .collect()
    }

    fn veths(&self) -> Vec<(u32, String)> {
        let out = Command::new("ip")
            .args(["-o", "link", "show", "master", &self.bridge])
            .output();
        let text = out
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        text.lines().filter_map(parse_link).collect()
    }

    /// The host-side ifindexes paired with the interfaces of a pod's network namespace;
    /// None when the pod has no pinned namespace.
    fn peers(&self, pod: &str) -> Option<BTreeSet<u32>> {
        let pin = self.pod_dir(pod).join("ns/net");
        if !pin.exists() {
            return None;
        }
        let out = Command::new("nsenter")
            .arg(format!("--net={}", pin.display()))
            .args(["ip", "-o", "link", "show"])
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        Some(
            text.lines()
                .filter_map(|l| {
                    let name = l.split_once(": ")?.1.split(':').next()?;
                    name.split_once("@if")?.1.parse().ok()
                })
                .collect(),
        )
    }

    fn cgroups(&self) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        for m in cgroup_mounts() {
            let base = m.join(self.cgroup_parent.trim_start_matches('/'));
            walk_dirs(&base, &base, &mut out);
        }
        out
    }

    fn procs(&self) -> Vec<Proc> {
        let me = std::process::id();
        let needle = self.dir.to_string_lossy().into_owned();
        let prefix = format!("{}/", self.cgroup_parent.trim_end_matches('/'));
        let mut out = Vec::new();
        for pid in names(Path::new("/proc"))
            .iter()
            .filter_map(|n| n.parse::<u32>().ok())
        {
            if pid == me || Some(pid) == self.crustd_pid {
                continue;
            }
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
                .unwrap_or_default();
            let cgroups: BTreeSet<String> = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
                .unwrap_or_default()
                .lines()
                .filter_map(|l| l.splitn(3, ':').nth(2))
                .filter_map(|p| p.strip_prefix(&prefix))
                .map(str::to_string)
                .collect();
            if !cgroups.is_empty() || cmdline.contains(&needle) {
                // `pid (comm) S ppid …`: the comm may hold anything but not the last ')'.
                let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
                let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
                let mut fields = after.split_whitespace();
                let zombie = fields.next() == Some("Z");
                let ppid = fields.next().and_then(|p| p.parse().ok()).unwrap_or(0);
                let parent = std::fs::read_to_string(format!("/proc/{ppid}/comm"))
                    .map(|c| c.trim().to_string())
                    .unwrap_or_default();
                out.push(Proc {
                    pid,
                    ppid,
                    parent,
                    zombie,
                    cmdline: cmdline.trim().to_string(),
                    cgroups,
                });
            }
        }
        out
    }

    fn leases(&self) -> Vec<Lease> {
        names(&self.leases_dir)
            .into_iter()
            .filter(|n| n.parse::<std::net::IpAddr>().is_ok())
            .map(|ip| {
                let text = std::fs::read_to_string(self.leases_dir.join(&ip)).unwrap_or_default();
                Lease {
                    owner: text.lines().next().unwrap_or_default().trim().to_string(),
                    ip,
                }
            })
            .collect()
    }

    fn logs(&self) -> Vec<(PathBuf, Vec<String>)> {
        let mut files = Vec::new();
        walk_files(&self.logs_dir, &mut files);
        files.sort();
        files
            .into_iter()
            .filter(|f| f.extension().is_some_and(|e| e == "log"))
            .map(|f| {
                let lines = std::fs::read_to_string(&f)
                    .unwrap_or_default()
                    .lines()
                    .map(str::to_string)
                    .collect();
                (f, lines)
            })
            .collect()
    }
}

/// `ip -o link` line → (ifindex, name without `@peer`).
fn parse_link(line: &str) -> Option<(u32, String)> {
    let (index, rest) = line.split_once(": ")?;
    let name = rest.split(':').next()?.split('@').next()?.to_string();
    Some((index.trim().parse().ok()?, name))
}

fn walk_dirs(base: &Path, dir: &Path, out: &mut BTreeSet<String>) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            let p = e.path();
            if let Ok(rel) = p.strip_prefix(base) {
                out.insert(rel.to_string_lossy().into_owned());
            }
            walk_dirs(base, &p, out);
        }
    }
}

fn walk_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        match e.file_type() {
            Ok(t) if t.is_dir() => walk_files(&e.path(), out),
            Ok(t) if t.is_file() => out.push(e.path()),
            _ => {}
        }
    }
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('\\') {
        out.push_str(&rest[..i]);
        let code = rest
            .get(i + 1..i + 4)
            .and_then(|o| u8::from_str_radix(o, 8).ok());
        match code {
            Some(c) => {
                out.push(c as char);
                rest = &rest[i + 4..];
            }
            None => {
                out.push('\\');
                rest = &rest[i + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_and_escapes_are_read() {
        assert_eq!(
            parse_link("57: veth1a2b3c4d@if2: <BROADCAST,MULTICAST,UP> mtu 1500 master crust-p100"),
            Some((57, "veth1a2b3c4d".into()))
        );
        assert_eq!(parse_link("garbage"), None);
        assert_eq!(unescape(r"/a\040b\134c"), "/a b\\c");
    }
}

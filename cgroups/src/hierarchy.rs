//! The node's cgroup hierarchies: where each is mounted and what it controls.

use std::path::{Path, PathBuf};

/// The cgroup hierarchies of the node: where each is mounted and what it controls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hierarchies {
    /// True for the v2 unified hierarchy (one mount), false for v1.
    pub unified: bool,
    /// (mount point, controllers) of each hierarchy crust uses.
    pub mounts: Vec<(PathBuf, Vec<String>)>,
}

impl Hierarchies {
    /// Reads the node's hierarchies from /proc/self/mountinfo. Named v1 hierarchies
    /// (`name=systemd`) and an empty v2 mount on a hybrid machine are skipped: they are not ours.
    pub fn detect() -> std::io::Result<Self> {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")?;
        Ok(Self::from_mountinfo(&mountinfo))
    }

    /// The hierarchies of a mountinfo text: the v1 controllers' mounts when there are
    /// any, else the v2 mount with the controllers it offers.
    pub fn from_mountinfo(mountinfo: &str) -> Self {
        let mut v1 = Vec::new();
        let mut v2 = None;
        for (mount_point, fstype, super_opts) in cgroup_mounts(mountinfo) {
            match fstype {
                "cgroup" => {
                    let controllers: Vec<String> = super_opts
                        .split(',')
                        .filter(|o| {
                            matches!(
                                *o,
                                "cpu"
                                    | "cpuacct"
                                    | "cpuset"
                                    | "memory"
                                    | "pids"
                                    | "blkio"
                                    | "devices"
                                    | "freezer"
                                    | "hugetlb"
                                    | "net_cls"
                                    | "net_prio"
                                    | "perf_event"
                                    | "rdma"
                                    | "misc"
                            )
                        })
                        .map(str::to_string)
                        .collect();
                    if !controllers.is_empty()
                        && !v1.iter().any(|(m, _): &(PathBuf, _)| *m == mount_point)
                    {
                        v1.push((mount_point, controllers));
                    }
                }
                "cgroup2" => v2 = Some(mount_point),
                _ => {}
            }
        }
        if !v1.is_empty() {
            return Self {
                unified: false,
                mounts: v1,
            };
        }
        Self {
            unified: true,
            mounts: v2
                .map(|m| {
                    let controllers = std::fs::read_to_string(m.join("cgroup.controllers"))
                        .unwrap_or_default()
                        .split_whitespace()
                        .map(str::to_string)
                        .collect();
                    vec![(m, controllers)]
                })
                .unwrap_or_default(),
        }
    }

    /// Whether the hierarchy mounted at `mount` has `controller`.
    pub fn has(&self, mount: &Path, controller: &str) -> bool {
        self.mounts
            .iter()
            .any(|(m, c)| m == mount && c.iter().any(|x| x == controller))
    }
}

/// Every cgroup mount of a mountinfo text: (mount point, `cgroup` or `cgroup2`, super
/// options), the named v1 hierarchies (`name=systemd`) included.
pub fn cgroup_mounts(mountinfo: &str) -> impl Iterator<Item = (PathBuf, &str, &str)> {
    mountinfo.lines().filter_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let mut r = right.split(' ');
        let fstype = r.next().unwrap_or_default();
        let super_opts = r.nth(1).unwrap_or_default();
        matches!(fstype, "cgroup" | "cgroup2").then(|| {
            let mount_point = left.split(' ').nth(4).unwrap_or_default();
            (PathBuf::from(mount_point), fstype, super_opts)
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hybrid_mountinfo_uses_v1_controllers_only() {
        let mi = "\
30 25 0:26 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw,nsdelegate
31 25 0:27 / /sys/fs/cgroup/systemd rw,nosuid - cgroup cgroup rw,xattr,name=systemd
32 25 0:28 / /sys/fs/cgroup/memory rw,nosuid - cgroup cgroup rw,memory
33 25 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid - cgroup cgroup rw,cpu,cpuacct
34 25 0:30 / /proc rw - proc proc rw";
        // Every cgroup mount, the named and the empty v2 one too (what removals sweep).
        let all: Vec<PathBuf> = cgroup_mounts(mi).map(|(m, _, _)| m).collect();
        assert_eq!(all.len(), 4, "{all:?}");
        assert_eq!(all[1], PathBuf::from("/sys/fs/cgroup/systemd"));
        let h = Hierarchies::from_mountinfo(mi);
        assert!(!h.unified);
        assert_eq!(h.mounts.len(), 2);
        assert_eq!(h.mounts[0].0, PathBuf::from("/sys/fs/cgroup/memory"));
        assert!(h.has(Path::new("/sys/fs/cgroup/cpu,cpuacct"), "cpu"));
    }
}

//! Pod cgroups: one directory per pod under the cgroup parent kubelet gives, in every hierarchy.
//!
//! crust only ever creates, writes and removes directories it made itself (recorded in
//! [`PodCgroup::created`]); a parent that already existed (kubelet's pod cgroup, `/kubepods`) is
//! never written to nor removed. Works on cgroup v1 (one hierarchy per controller, as on this
//! hybrid machine) and on the v2 unified hierarchy.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::hierarchy::Hierarchies;

/// Pod-level resources (the CRI LinuxContainerResources subset that applies to a pod
/// cgroup).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodResources {
    pub cpu_period: i64,
    pub cpu_quota: i64,
    pub cpu_shares: i64,
    pub memory_limit_in_bytes: i64,
    pub cpuset_cpus: String,
    pub cpuset_mems: String,
}

/// A pod cgroup crust made.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodCgroup {
    /// Path relative to each hierarchy root (`/kubepods/.../crust-<id>`).
    pub path: String,
    /// Every directory crust created, parents first; removal goes in reverse.
    pub created: Vec<PathBuf>,
}

impl PodCgroup {
    /// The systemd slice name of a pod cgroup made with the systemd driver (the last path
    /// component, e.g. `kubepods-pod1-crust<id>.slice`): what runc's `slice:prefix:name`
    /// cgroupsPath wants. None with cgroupfs.
    pub fn slice(&self) -> Option<&str> {
        self.path
            .rsplit('/')
            .next()
            .filter(|leaf| leaf.ends_with(".slice"))
    }
}

/// Creates the pod cgroup in every hierarchy, applying `resources` (pod overhead + limits).
/// On error, what was created is removed again.
pub fn create(
    h: &Hierarchies,
    path: &str,
    resources: Option<&PodResources>,
) -> std::io::Result<PodCgroup> {
    let mut cg = PodCgroup {
        path: path.to_string(),
        created: Vec::new(),
    };
    let result = (|| {
        for (mount, _) in &h.mounts {
            let mut dir = mount.clone();
            for comp in path.split('/').filter(|c| !c.is_empty()) {
                let parent = dir.clone();
                dir.push(comp);
                match std::fs::create_dir(&dir) {
                    Ok(()) => {
                        cg.created.push(dir.clone());
                        if !h.unified && h.has(mount, "cpuset") {
                            inherit_cpuset(&parent, &dir)?;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(e),
                }
            }
            if let Some(r) = resources {
                apply(h, mount, &dir, r)?;
            }
        }
        Ok(())
    })();
    match result {
        Ok(()) => Ok(cg),
        Err(e) => {
            let _ = remove(&cg);
            Err(e)
        }
    }
}

/// A v1 cpuset cgroup accepts no task until cpus and mems are set: copy the parent's.
fn inherit_cpuset(parent: &Path, dir: &Path) -> std::io::Result<()> {
    for f in ["cpuset.cpus", "cpuset.mems"] {
        let cur = std::fs::read_to_string(dir.join(f)).unwrap_or_default();
        if cur.trim().is_empty() {
            let p = std::fs::read_to_string(parent.join(f)).unwrap_or_default();
            if !p.trim().is_empty() {
                std::fs::write(dir.join(f), p.trim())?;
            }
        }
    }
    Ok(())
}

fn write_if_present(dir: &Path, file: &str, value: &str) -> std::io::Result<()> {
    let p = dir.join(file);
    if p.exists() {
        std::fs::write(&p, value).map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("writing {value:?} to {}: {e}", p.display()),
            )
        })?;
    }
    Ok(())
}

/// CRI cpu shares (2..262144) to cgroup v2 cpu.weight (1..10000), as runc converts.
pub fn shares_to_weight(shares: i64) -> i64 {
    if shares <= 0 {
        return 0;
    }
    1 + ((shares.clamp(2, 262144) - 2) * 9999) / 262142
}

fn apply(h: &Hierarchies, mount: &Path, dir: &Path, r: &PodResources) -> std::io::Result<()> {
    if h.unified {
        if r.cpu_shares > 0 {
            write_if_present(
                dir,
                "cpu.weight",
                &shares_to_weight(r.cpu_shares).to_string(),
            )?;
        }
        if r.cpu_quota != 0 || r.cpu_period != 0 {
            let quota = if r.cpu_quota > 0 {
                r.cpu_quota.to_string()
            } else {
                "max".to_string()
            };
            let period = if r.cpu_period > 0 {
                r.cpu_period
            } else {
                100_000
            };
            write_if_present(dir, "cpu.max", &format!("{quota} {period}"))?;
        }
        if r.memory_limit_in_bytes > 0 {
            write_if_present(dir, "memory.max", &r.memory_limit_in_bytes.to_string())?;
        }
        if !r.cpuset_cpus.is_empty() {
            write_if_present(dir, "cpuset.cpus", &r.cpuset_cpus)?;
        }
        if !r.cpuset_mems.is_empty() {
            write_if_present(dir, "cpuset.mems", &r.cpuset_mems)?;
        }
        return Ok(());
    }
    if h.has(mount, "cpu") {
        if r.cpu_shares > 0 {
            write_if_present(dir, "cpu.shares", &r.cpu_shares.to_string())?;
        }
        if r.cpu_period > 0 {
            write_if_present(dir, "cpu.cfs_period_us", &r.cpu_period.to_string())?;
        }
        if r.cpu_quota != 0 {
            write_if_present(dir, "cpu.cfs_quota_us", &r.cpu_quota.to_string())?;
        }
    }
    if h.has(mount, "memory") && r.memory_limit_in_bytes > 0 {
        write_if_present(
            dir,
            "memory.limit_in_bytes",
            &r.memory_limit_in_bytes.to_string(),
        )?;
    }
    if h.has(mount, "cpuset") {
        if !r.cpuset_cpus.is_empty() {
            write_if_present(dir, "cpuset.cpus", &r.cpuset_cpus)?;
        }
        if !r.cpuset_mems.is_empty() {
            write_if_present(dir, "cpuset.mems", &r.cpuset_mems)?;
        }
    }
    Ok(())
}

/// Pod overhead plus pod resources, as one set of limits for the pod cgroup.
pub fn pod_limits(
    overhead: Option<&PodResources>,
    resources: Option<&PodResources>,
) -> Option<PodResources> {
    if overhead.is_none() && resources.is_none() {
        return None;
    }
    let o = overhead.cloned().unwrap_or_default();
    let r = resources.cloned().unwrap_or_default();
    let period = if r.cpu_period > 0 {
        r.cpu_period
    } else {
        o.cpu_period
    };
    // Quotas are per period: scale the overhead's quota to the resources' period.
    let quota = match (o.cpu_quota > 0, r.cpu_quota > 0) {
        (_, false) => 0, // no limit on the pod's own CPU: no limit at all
        (false, true) => r.cpu_quota,
        (true, true) => {
            let op = if o.cpu_period > 0 {
                o.cpu_period
            } else {
                100_000
            };
            let rp = if period > 0 { period } else { 100_000 };
            r.cpu_quota + o.cpu_quota * rp / op
        }
    };
    Some(PodResources {
        cpu_period: period,
        cpu_quota: quota,
        cpu_shares: if r.cpu_shares > 0 || o.cpu_shares > 0 {
            r.cpu_shares + o.cpu_shares
        } else {
            0
        },
        memory_limit_in_bytes: if r.memory_limit_in_bytes > 0 {
            r.memory_limit_in_bytes + o.memory_limit_in_bytes.max(0)
        } else {
            0
        },
        cpuset_cpus: r.cpuset_cpus,
        cpuset_mems: r.cpuset_mems,
    })
}

/// Moves a process into the pod cgroup in every hierarchy.
pub fn add_process(h: &Hierarchies, path: &str, pid: i32) -> std::io::Result<()> {
    for (mount, _) in &h.mounts {
        let dir = mount.join(path.trim_start_matches('/'));
        std::fs::write(dir.join("cgroup.procs"), pid.to_string())?;
    }
    Ok(())
}

/// The processes directly in cgroup `path` in any hierarchy (each once; none when the
/// cgroup is gone everywhere).
pub fn procs(h: &Hierarchies, path: &str) -> Vec<i32> {
    let mut pids: Vec<i32> = h
        .mounts
        .iter()
        .flat_map(|(mount, _)| {
            let procs = mount
                .join(path.trim_start_matches('/'))
                .join("cgroup.procs");
            std::fs::read_to_string(procs)
                .unwrap_or_default()
                .lines()
                .filter_map(|l| l.trim().parse::<i32>().ok())
                .collect::<Vec<_>>()
        })
        .collect();
    pids.sort_unstable();
    pids.dedup();
    pids
}

/// SIGKILLs every process directly in the pod cgroup (crust's own infra process; containers
/// live in cgroups of their own).
pub fn kill_all(h: &Hierarchies, path: &str) {
    for pid in procs(h, path).into_iter().filter(|p| *p > 1) {
        // SAFETY: kill has no memory preconditions; the pid is in a cgroup crust made.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
    }
}

/// Removes the directories crust created, deepest first. Missing ones are fine. The pod's own
/// cgroup is retried briefly while its last processes leave (EBUSY); a shared parent crust made
/// (`/crust`) that still holds other pods is left in place.
pub fn remove(cg: &PodCgroup) -> std::io::Result<()> {
    let leaf = cg.path.trim_matches('/');
    let mut first_err = None;
    for dir in cg.created.iter().rev() {
        let is_leaf = dir.to_string_lossy().ends_with(&format!("/{leaf}"));
        match remove_dir(dir, is_leaf) {
            Ok(()) => {}
            // A parent crust made that still holds other pods.
            Err(e)
                if !is_leaf && matches!(e.raw_os_error(), Some(libc::EBUSY | libc::ENOTEMPTY)) => {}
            Err(e) => {
                first_err.get_or_insert(std::io::Error::new(
                    e.kind(),
                    format!("removing cgroup {}: {e}", dir.display()),
                ));
            }
        }
    }
    // runc also makes the container cgroups under the pod's path in the named
    // v1 hierarchies (name=systemd) and removes only the containers' own; the
    // pod's directory there is crust's to remove.
    remove_everywhere(leaf);
    first_err.map_or(Ok(()), Err)
}

/// Removes the (empty) cgroup `rel` in every mounted hierarchy: the v1
/// controllers, the named ones (name=systemd) and a v2 mount, where runc may
/// have made it. Absent or busy directories are left as they are.
pub fn remove_everywhere(rel: &str) {
    let rel = rel.trim_matches('/');
    if rel.is_empty() {
        return;
    }
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for (mount, _, _) in crate::hierarchy::cgroup_mounts(&mountinfo) {
        let dir = mount.join(rel);
        if let Err(e) = remove_dir(&dir, true) {
            tracing::warn!(dir = %dir.display(), error = %e, "removing cgroup");
        }
    }
}

/// Removes an empty cgroup directory; absent is fine. With `wait_busy`, EBUSY is retried
/// for up to half a second: a cgroup stays busy for a moment after its last process died.
fn remove_dir(dir: &Path, wait_busy: bool) -> std::io::Result<()> {
    for tries in 0.. {
        match std::fs::remove_dir(dir) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) if wait_busy && e.raw_os_error() == Some(libc::EBUSY) && tries < 50 => {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            other => return other,
        }
    }
    unreachable!("the loop returns")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::path::{CgroupDriver, expand_slice, pod_cgroup_path};

    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn cgroupfs_paths() {
        assert_eq!(
            pod_cgroup_path(CgroupDriver::Cgroupfs, "", ID).unwrap(),
            format!("/crust/{ID}")
        );
        assert_eq!(
            pod_cgroup_path(CgroupDriver::Cgroupfs, "/kubepods/burstable/pod12/", ID).unwrap(),
            format!("/kubepods/burstable/pod12/crust-{ID}")
        );
        assert!(pod_cgroup_path(CgroupDriver::Cgroupfs, "kubepods", ID).is_err());
        assert!(pod_cgroup_path(CgroupDriver::Cgroupfs, "/kubepods/../etc", ID).is_err());
        assert!(pod_cgroup_path(CgroupDriver::Cgroupfs, "/a", "../x").is_err());
    }

    #[test]
    fn systemd_paths() {
        assert_eq!(
            expand_slice("kubepods-besteffort-pod12.slice").unwrap(),
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod12.slice"
        );
        assert_eq!(expand_slice("-.slice").unwrap(), "/");
        assert!(expand_slice("/kubepods").is_err());
        assert!(expand_slice("a--b.slice").is_err());
        let path = pod_cgroup_path(CgroupDriver::Systemd, "kubepods-pod1.slice", ID).unwrap();
        assert_eq!(
            path,
            format!("/kubepods.slice/kubepods-pod1.slice/kubepods-pod1-crust{ID}.slice")
        );
        let cg = PodCgroup {
            path,
            created: vec![],
        };
        assert_eq!(
            cg.slice(),
            Some(format!("kubepods-pod1-crust{ID}.slice").as_str())
        );
        assert_eq!(
            pod_cgroup_path(CgroupDriver::Systemd, "", ID).unwrap(),
            format!("/crust.slice/crust-{ID}.slice")
        );
        assert_eq!(
            pod_cgroup_path(CgroupDriver::Systemd, "-.slice", ID).unwrap(),
            format!("/crust{ID}.slice")
        );
        assert!(pod_cgroup_path(CgroupDriver::Systemd, "/kubepods", ID).is_err());
        let cg = PodCgroup {
            path: format!("/kubepods/crust-{ID}"),
            created: vec![],
        };
        assert_eq!(cg.slice(), None);
    }

    fn fake_v1(root: &Path) -> Hierarchies {
        let mem = root.join("memory");
        let cpuset = root.join("cpuset");
        std::fs::create_dir_all(&mem).unwrap();
        std::fs::create_dir_all(cpuset.join("kubepods")).unwrap();
        std::fs::write(cpuset.join("kubepods/cpuset.cpus"), "0-1\n").unwrap();
        std::fs::write(cpuset.join("kubepods/cpuset.mems"), "0\n").unwrap();
        Hierarchies {
            unified: false,
            mounts: vec![
                (mem, vec!["memory".into()]),
                (cpuset, vec!["cpuset".into()]),
            ],
        }
    }

    #[test]
    fn create_and_remove_touch_only_what_crust_made() {
        let d = tempfile::tempdir().unwrap();
        let h = fake_v1(d.path());
        let path = format!("/kubepods/crust-{ID}");
        let cg = create(&h, &path, None).unwrap();
        // kubepods existed in cpuset, not in memory.
        assert_eq!(
            cg.created,
            vec![
                d.path().join("memory/kubepods"),
                d.path().join(format!("memory/kubepods/crust-{ID}")),
                d.path().join(format!("cpuset/kubepods/crust-{ID}")),
            ]
        );
        let pod_cpuset = d.path().join(format!("cpuset/kubepods/crust-{ID}"));
        assert_eq!(
            std::fs::read_to_string(pod_cpuset.join("cpuset.cpus")).unwrap(),
            "0-1"
        );
        // Files the kernel would make; fake dirs need them gone before rmdir.
        std::fs::remove_file(pod_cpuset.join("cpuset.cpus")).unwrap();
        std::fs::remove_file(pod_cpuset.join("cpuset.mems")).unwrap();
        remove(&cg).unwrap();
        assert!(!d.path().join("memory/kubepods").exists());
        assert!(d.path().join("cpuset/kubepods/cpuset.cpus").exists());
        // Removing twice is fine.
        remove(&cg).unwrap();
    }

    #[test]
    fn a_shared_parent_with_other_pods_stays() {
        let d = tempfile::tempdir().unwrap();
        let h = Hierarchies {
            unified: true,
            mounts: vec![(d.path().to_path_buf(), vec![])],
        };
        let a = create(&h, &format!("/crust/{ID}"), None).unwrap();
        let other = "f".repeat(64);
        let b = create(&h, &format!("/crust/{other}"), None).unwrap();
        assert_eq!(a.created.len(), 2);
        assert_eq!(b.created.len(), 1);
        remove(&a).unwrap();
        assert!(d.path().join("crust").join(&other).exists());
        remove(&b).unwrap();
        assert!(d.path().join("crust").exists());
    }

    #[test]
    fn limits_are_written_where_the_kernel_offers_them() {
        let d = tempfile::tempdir().unwrap();
        let h = fake_v1(d.path());
        let path = format!("/crust/{ID}");
        // Pre-create the pod dir with the limit file as the kernel would.
        let pod_mem = d.path().join("memory/crust").join(ID);
        std::fs::create_dir_all(&pod_mem).unwrap();
        std::fs::write(pod_mem.join("memory.limit_in_bytes"), "max").unwrap();
        let r = PodResources {
            memory_limit_in_bytes: 128 << 20,
            ..Default::default()
        };
        let cg = create(&h, &path, Some(&r)).unwrap();
        assert_eq!(
            std::fs::read_to_string(pod_mem.join("memory.limit_in_bytes")).unwrap(),
            (128u64 << 20).to_string()
        );
        // The memory dirs existed already: crust created only the cpuset ones.
        assert!(
            cg.created
                .iter()
                .all(|p| p.starts_with(d.path().join("cpuset")))
        );
    }

    #[test]
    fn v2_limits_use_the_unified_files() {
        let d = tempfile::tempdir().unwrap();
        let h = Hierarchies {
            unified: true,
            mounts: vec![(d.path().to_path_buf(), vec!["cpu".into(), "memory".into()])],
        };
        let pod = d.path().join("crust").join(ID);
        std::fs::create_dir_all(&pod).unwrap();
        for f in ["cpu.weight", "cpu.max", "memory.max"] {
            std::fs::write(pod.join(f), "").unwrap();
        }
        let r = PodResources {
            cpu_shares: 1024,
            cpu_quota: 50_000,
            cpu_period: 100_000,
            memory_limit_in_bytes: 1 << 30,
            ..Default::default()
        };
        create(&h, &format!("/crust/{ID}"), Some(&r)).unwrap();
        let read = |f: &str| std::fs::read_to_string(pod.join(f)).unwrap();
        assert_eq!(read("cpu.weight"), "39");
        assert_eq!(read("cpu.max"), "50000 100000");
        assert_eq!(read("memory.max"), (1u64 << 30).to_string());
        // Files the kernel does not offer (no cpuset controller) are not made up.
        assert!(!pod.join("cpuset.cpus").exists());
    }

    #[test]
    fn overhead_adds_to_resources() {
        let o = PodResources {
            cpu_period: 100_000,
            cpu_quota: 10_000,
            cpu_shares: 10,
            memory_limit_in_bytes: 10 << 20,
            ..Default::default()
        };
        let r = PodResources {
            cpu_period: 50_000,
            cpu_quota: 50_000,
            cpu_shares: 1024,
            memory_limit_in_bytes: 100 << 20,
            ..Default::default()
        };
        let l = pod_limits(Some(&o), Some(&r)).unwrap();
        assert_eq!(l.cpu_quota, 55_000);
        assert_eq!(l.cpu_period, 50_000);
        assert_eq!(l.cpu_shares, 1034);
        assert_eq!(l.memory_limit_in_bytes, 110 << 20);
        // Overhead alone never limits memory of an unlimited pod.
        let l = pod_limits(Some(&o), None).unwrap();
        assert_eq!(l.memory_limit_in_bytes, 0);
        assert!(pod_limits(None, None).is_none());
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(262144), 10000);
        assert_eq!(shares_to_weight(1024), 39);
    }
}

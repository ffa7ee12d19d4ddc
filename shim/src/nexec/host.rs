//! What the node says about a running container, gathered before fork: the namespaces
//! and cgroups of its init process (opened as file descriptors), its `/etc/passwd`, the
//! kernel's last capability.

use std::{
    ffi::CString,
    fs,
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        linux::fs::MetadataExt,
    },
    path::{Path, PathBuf},
};

/// Namespace kinds in the order runc joins them (`configs.NamespaceTypes`; the user
/// namespace, which would come first, sends the exec to runc instead).
const NAMESPACES: &[(&str, libc::c_int)] = &[
    ("ipc", libc::CLONE_NEWIPC),
    ("uts", libc::CLONE_NEWUTS),
    ("net", libc::CLONE_NEWNET),
    ("pid", libc::CLONE_NEWPID),
    ("mnt", libc::CLONE_NEWNS),
    ("cgroup", libc::CLONE_NEWCGROUP),
    ("time", 0x80), // CLONE_NEWTIME
];

fn err(what: impl std::fmt::Display, e: impl std::fmt::Display) -> String {
    format!("{what}: {e}")
}

/// The namespaces of `pid` that differ from the shim's own, opened, in join order.
pub fn namespaces(pid: u32) -> Result<Vec<(OwnedFd, libc::c_int)>, String> {
    let ino = |p: &str| fs::metadata(p).map(|m| m.st_ino());
    let user = format!("/proc/{pid}/ns/user");
    if ino(&user).map_err(|e| err(&user, e))? != ino("/proc/self/ns/user").unwrap_or(0) {
        return Err("the container's init is in another user namespace".into());
    }
    let mut out = Vec::new();
    for &(name, flag) in NAMESPACES {
        let theirs = format!("/proc/{pid}/ns/{name}");
        let Ok(their_ino) = ino(&theirs) else {
            if name == "time" {
                continue; // a kernel without time namespaces
            }
            return Err(format!("{theirs}: not readable"));
        };
        if ino(&format!("/proc/self/ns/{name}")).ok() == Some(their_ino) {
            continue;
        }
        let f = fs::File::open(&theirs).map_err(|e| err(&theirs, e))?;
        // The namespace must still be the one just compared (no pid reuse in between).
        if f.metadata().map(|m| m.st_ino()).ok() != Some(their_ino) {
            return Err(format!("{theirs} changed while opened"));
        }
        out.push((OwnedFd::from(f), flag));
    }
    Ok(out)
}

/// cgroup v1 mount options that are not controllers (`release_agent=` and such are
/// dropped as options with a value).
const V1_FLAGS: &[&str] = &[
    "rw",
    "ro",
    "xattr",
    "noprefix",
    "clone_children",
    "cpuset_v2_mode",
    "favordynmods",
];

/// One cgroup hierarchy mounted on the node.
#[derive(Debug, PartialEq)]
struct Hierarchy {
    /// `memory`, `cpu,cpuacct`, `name=systemd`; empty for cgroup2.
    controllers: Vec<String>,
    root: String,
    mount_point: PathBuf,
}

fn hierarchies(mountinfo: &str) -> Vec<Hierarchy> {
    mountinfo
        .lines()
        .filter_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            let pre: Vec<&str> = pre.split(' ').collect();
            let mut post = post.split(' ');
            let fstype = post.next()?;
            let _source = post.next()?;
            let opts = post.next().unwrap_or_default();
            let controllers = match fstype {
                "cgroup2" => Vec::new(),
                "cgroup" => opts
                    .split(',')
                    .filter(|o| !V1_FLAGS.contains(o))
                    .filter(|o| !o.contains('=') || o.starts_with("name="))
                    .map(str::to_string)
                    .collect(),
                _ => return None,
            };
            Some(Hierarchy {
                controllers,
                root: pre.get(3)?.to_string(),
                mount_point: PathBuf::from(pre.get(4)?),
            })
        })
        .collect()
}

fn dir_in(h: &[Hierarchy], ctrls: &str, path: &str) -> Option<PathBuf> {
    let want: Vec<&str> = ctrls.split(',').filter(|c| !c.is_empty()).collect();
    h.iter()
        .filter(|m| {
            m.controllers.len() == want.len()
                && want.iter().all(|c| m.controllers.iter().any(|x| x == c))
        })
        .find_map(|m| {
            let rel = if m.root == "/" {
                path
            } else {
                path.strip_prefix(m.root.as_str())
                    .filter(|r| r.is_empty() || r.starts_with('/'))?
            };
            Some(m.mount_point.join(rel.trim_start_matches('/')))
        })
}

/// The `cgroup.procs` files of the hierarchies in which `theirs` (a `/proc/PID/cgroup`
/// text) differs from `ours`, given the node's `mountinfo`.
fn procs_files(theirs: &str, ours: &str, mountinfo: &str) -> Result<Vec<PathBuf>, String> {
    let h = hierarchies(mountinfo);
    let key = |l: &str| l.split_once(':').map(|(_, rest)| rest.to_string());
    let ours: Vec<String> = ours.lines().filter_map(key).collect();
    let mut out = Vec::new();
    for line in theirs.lines().filter_map(key) {
        if ours.contains(&line) {
            continue; // the same cgroup: the child is there already
        }
        let Some((ctrls, path)) = line.split_once(':') else {
            continue;
        };
        let dir = dir_in(&h, ctrls, path)
            .ok_or_else(|| format!("cgroup {ctrls}:{path} is not mounted on the node"))?;
        out.push(dir.join("cgroup.procs"));
    }
    Ok(out)
}

/// The `cgroup.procs` files (opened for writing) of the cgroups of `pid` the shim is
/// not in: the child writes itself into each.
pub fn cgroups(pid: u32) -> Result<Vec<OwnedFd>, String> {
    let read = |p: &str| fs::read_to_string(p).map_err(|e| err(p, e));
    let files = procs_files(
        &read(&format!("/proc/{pid}/cgroup"))?,
        &read("/proc/self/cgroup")?,
        &read("/proc/self/mountinfo")?,
    )?;
    files
        .iter()
        .map(|f| {
            fs::OpenOptions::new()
                .write(true)
                .open(f)
                .map(OwnedFd::from)
                .map_err(|e| err(f.display(), e))
        })
        .collect()
}

/// `/etc/passwd` of the container's root, resolved inside that root (a symlink in the
/// image cannot lead to the node's files).
pub fn passwd(pid: u32) -> Option<String> {
    #[repr(C)]
    struct OpenHow {
        flags: u64,
        mode: u64,
        resolve: u64,
    }
    const RESOLVE_IN_ROOT: u64 = 0x10;
    let root = fs::File::open(format!("/proc/{pid}/root")).ok()?;
    let how = OpenHow {
        flags: (libc::O_RDONLY | libc::O_CLOEXEC) as u64,
        mode: 0,
        resolve: RESOLVE_IN_ROOT,
    };
    let name = CString::new("etc/passwd").ok()?;
    // SAFETY: openat2 with a valid dirfd, NUL-terminated path and open_how of the size given.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            root.as_raw_fd(),
            name.as_ptr(),
            &how as *const OpenHow,
            std::mem::size_of::<OpenHow>(),
        )
    };
    if fd < 0 {
        return None;
    }
    // SAFETY: the kernel just returned this descriptor to us.
    let f = fs::File::from(unsafe { OwnedFd::from_raw_fd(fd as i32) });
    let mut text = String::new();
    use std::io::Read;
    f.take(1 << 20).read_to_string(&mut text).ok()?;
    Some(text)
}

/// `/proc/sys/kernel/cap_last_cap`.
pub fn last_cap() -> Result<u32, String> {
    let p = Path::new("/proc/sys/kernel/cap_last_cap");
    fs::read_to_string(p)
        .map_err(|e| err(p.display(), e))?
        .trim()
        .parse()
        .map_err(|e| err(p.display(), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
25 1 0:22 / /sys rw - sysfs sysfs rw
30 25 0:26 / /sys/fs/cgroup ro - tmpfs tmpfs ro,mode=755
31 30 0:27 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw,nsdelegate
32 30 0:28 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,xattr,name=systemd
33 30 0:29 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
34 30 0:30 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct
35 30 0:31 / /sys/fs/cgroup/cpuset rw - cgroup cgroup rw,cpuset,clone_children
";

    #[test]
    fn every_hierarchy_the_init_is_elsewhere_in_is_joined() {
        let theirs = "5:cpuset:/crust/c1\n4:cpu,cpuacct:/crust/c1\n3:memory:/crust/c1\n\
                      2:name=systemd:/\n0::/\n";
        let ours = "5:cpuset:/\n4:cpu,cpuacct:/\n3:memory:/shim\n2:name=systemd:/\n0::/\n";
        let files = procs_files(theirs, ours, MOUNTINFO).unwrap();
        assert_eq!(
            files,
            [
                "/sys/fs/cgroup/cpuset/crust/c1/cgroup.procs",
                "/sys/fs/cgroup/cpu,cpuacct/crust/c1/cgroup.procs",
                "/sys/fs/cgroup/memory/crust/c1/cgroup.procs",
            ]
            .map(PathBuf::from)
        );
        let v2 = procs_files("0::/pods/a\n", "0::/\n", MOUNTINFO).unwrap();
        assert_eq!(
            v2,
            [PathBuf::from("/sys/fs/cgroup/unified/pods/a/cgroup.procs")]
        );
    }

    #[test]
    fn an_unmounted_hierarchy_is_refused_not_skipped() {
        let e = procs_files("7:pids:/crust/c1\n", "7:pids:/\n", MOUNTINFO).unwrap_err();
        assert!(e.contains("pids:/crust/c1"), "{e}");
    }

    #[test]
    fn a_mount_of_a_subtree_maps_paths_below_its_root() {
        let mi = "40 30 0:29 /kubepods /mnt/mem rw - cgroup cgroup rw,memory\n";
        assert_eq!(
            dir_in(&hierarchies(mi), "memory", "/kubepods/pod1"),
            Some(PathBuf::from("/mnt/mem/pod1"))
        );
        assert_eq!(dir_in(&hierarchies(mi), "memory", "/kubepodsX/pod1"), None);
    }
}

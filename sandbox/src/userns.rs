//! User namespaces for pods (`hostUsers: false`): the mappings kubelet asks for, their
//! rules, the pod's user namespace with the namespaces it owns, and the kernel probe.
//!
//! A multi-threaded process (crustd) may neither `unshare(CLONE_NEWUSER)` nor `setns` into a
//! user namespace, so the pod's namespaces are made by a child cloned straight into a new user
//! namespace (and, in POD pid mode, a new PID namespace whose PID 1 it is). crustd writes the
//! child's `uid_map`/`gid_map`; only then does the child unshare net/ipc/uts — so the user
//! namespace owns them, as sysfs, /proc and the container's root need — sets the hostname, brings
//! `lo` up and writes the sysctls. crustd pins `/proc/<child>/ns/{user,net,ipc,uts,pid}`. In
//! POD pid mode the child stays as the pod's infra process; otherwise it exits once pinned.
//! Between clone and exit the child only makes raw system calls (no allocation, no locks).

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::namespaces::{NamespaceRequest, PodNamespaces};

/// One line of a uid or gid map: `length` ids from `container_id` inside are `host_id`… outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdMapping {
    pub container_id: u32,
    pub host_id: u32,
    pub length: u32,
}

/// A pod's user namespace (CRI `UserNamespace` in POD mode).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserNamespace {
    pub uids: Vec<IdMapping>,
    pub gids: Vec<IdMapping>,
}

/// The kernel takes at most this many lines in a map (since 4.15).
const MAX_LINES: usize = 340;

impl UserNamespace {
    /// The maps of a CRI `UserNamespace` or `Mount`.
    pub fn from_cri(uids: &[k8s_cri::v1::IdMapping], gids: &[k8s_cri::v1::IdMapping]) -> Self {
        let conv = |v: &[k8s_cri::v1::IdMapping]| {
            v.iter()
                .map(|m| IdMapping {
                    container_id: m.container_id,
                    host_id: m.host_id,
                    length: m.length,
                })
                .collect()
        };
        UserNamespace {
            uids: conv(uids),
            gids: conv(gids),
        }
    }

    /// The host uid and gid that container id 0 (the pod's root) is.
    pub fn host_root(&self) -> (u32, u32) {
        (host_of(&self.uids, 0), host_of(&self.gids, 0))
    }

    /// Checks both maps; the message names the map (`uids` or `gids`) and the line.
    pub fn validate(&self) -> Result<(), String> {
        validate_map("uids", &self.uids)?;
        validate_map("gids", &self.gids)
    }
}

fn host_of(map: &[IdMapping], id: u32) -> u32 {
    map.iter()
        .find(|m| id >= m.container_id && id - m.container_id < m.length)
        .map(|m| m.host_id + (id - m.container_id))
        .unwrap_or(u32::MAX)
}

fn validate_map(name: &str, map: &[IdMapping]) -> Result<(), String> {
    if map.is_empty() {
        return Err(format!(
            "{name}: no mapping (POD mode needs uid and gid mappings)"
        ));
    }
    if map.len() > MAX_LINES {
        return Err(format!(
            "{name}: {} mappings, the kernel takes at most {MAX_LINES}",
            map.len()
        ));
    }
    let end = |start: u32, len: u32| u64::from(start) + u64::from(len);
    for (i, m) in map.iter().enumerate() {
        if m.length == 0 {
            return Err(format!("{name}[{i}]: length is 0"));
        }
        // u32::MAX (-1) is no id: a range may not reach it.
        if end(m.container_id, m.length) > u64::from(u32::MAX)
            || end(m.host_id, m.length) > u64::from(u32::MAX)
        {
            return Err(format!(
                "{name}[{i}]: {} ids from container id {} / host id {} run past the id space",
                m.length, m.container_id, m.host_id
            ));
        }
        for (j, o) in map.iter().enumerate().take(i) {
            let overlap =
                |a: u32, b: u32| u64::from(a) < end(b, o.length) && u64::from(b) < end(a, m.length);
            if overlap(m.container_id, o.container_id) {
                return Err(format!(
                    "{name}[{i}]: container ids overlap those of {name}[{j}]"
                ));
            }
            if overlap(m.host_id, o.host_id) {
                return Err(format!(
                    "{name}[{i}]: host ids overlap those of {name}[{j}]"
                ));
            }
        }
    }
    if host_of(map, 0) == u32::MAX {
        return Err(format!(
            "{name}: container id 0 is not mapped (the pod's root must be)"
        ));
    }
    Ok(())
}

/// The text of `/proc/<pid>/uid_map` for a map.
pub fn map_text(map: &[IdMapping]) -> String {
    map.iter()
        .map(|m| format!("{} {} {}\n", m.container_id, m.host_id, m.length))
        .collect()
}

fn errno(what: &str) -> io::Error {
    let e = io::Error::last_os_error();
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: fds is a valid array of two ints.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(errno("pipe2"));
    }
    // SAFETY: pipe2 returned two fresh descriptors we now own.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// What the child reports: 0 when ready, else the failed step (1-based; from 5 on, sysctl
/// `step - 5`) and errno.
const STEPS: [&str; 4] = [
    "waiting for the id maps",
    "unshare(net/ipc/uts) in the user namespace",
    "sethostname",
    "bringing lo up",
];

/// Everything the child needs, prepared before the clone (no allocation after it).
struct ChildPlan {
    unshare_flags: libc::c_int,
    hostname: Vec<u8>,
    sysctls: Vec<(CString, Vec<u8>)>,
    net: bool,
    infra: Option<crate::namespaces::InfraPlan>,
}

/// A child cloned into a new user namespace (and PID namespace), not yet reaped.
struct Child {
    pid: i32,
    reaped: bool,
}

impl Child {
    fn kill(&mut self) {
        if self.reaped {
            return;
        }
        // SAFETY: our own child, not yet reaped, so the pid is still ours.
        unsafe {
            libc::kill(self.pid, libc::SIGKILL);
            libc::waitpid(self.pid, std::ptr::null_mut(), 0);
        }
        self.reaped = true;
    }
}

/// Creates the pod's user namespace with its net/ipc/uts (and pid) namespaces, pinned under
/// `req.dir`. On error nothing is left: the child is killed and every pin released.
pub(crate) fn create(req: &NamespaceRequest, userns: &UserNamespace) -> io::Result<PodNamespaces> {
    let mut ns = PodNamespaces::default();
    match create_in(req, userns, &mut ns) {
        Ok(()) => Ok(ns),
        Err(e) => {
            crate::namespaces::destroy(&ns);
            Err(e)
        }
    }
}

fn create_in(
    req: &NamespaceRequest,
    userns: &UserNamespace,
    ns: &mut PodNamespaces,
) -> io::Result<()> {
    let mut flags = 0;
    for (wanted, f) in [
        (req.net, libc::CLONE_NEWNET),
        (req.ipc, libc::CLONE_NEWIPC),
        (req.uts, libc::CLONE_NEWUTS),
    ] {
        if wanted {
            flags |= f;
        }
    }
    let plan = ChildPlan {
        unshare_flags: flags,
        hostname: if req.uts {
            req.hostname.clone().into_bytes()
        } else {
            Vec::new()
        },
        sysctls: req
            .sysctls
            .iter()
            .map(|(p, v)| {
                CString::new(p.as_str())
                    .map(|c| (c, v.clone().into_bytes()))
                    .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in a sysctl"))
            })
            .collect::<io::Result<_>>()?,
        net: req.net,
        infra: if req.pid {
            Some(crate::namespaces::InfraPlan::new()?)
        } else {
            None
        },
    };
    let (go_r, go_w) = pipe()?;
    let (status_r, status_w) = pipe()?;
    let mut clone_flags = libc::CLONE_NEWUSER | libc::SIGCHLD;
    if req.pid {
        clone_flags |= libc::CLONE_NEWPID;
    }
    // SAFETY: a fork-like clone (no new stack: the child runs on a copy of ours); the child
    // runs only `child_main`, which makes raw system calls and never returns.
    let pid =
        unsafe { libc::syscall(libc::SYS_clone, clone_flags, 0usize, 0usize, 0usize, 0usize) };
    if pid < 0 {
        return Err(errno("clone(CLONE_NEWUSER)"));
    }
    if pid == 0 {
        // SAFETY: the child closes its copies of crustd's ends, so it sees crustd close them.
        unsafe {
            libc::close(go_w.as_raw_fd());
            libc::close(status_r.as_raw_fd());
        }
        child_main(&plan, go_r.as_raw_fd(), status_w.as_raw_fd());
    }
    let mut child = Child {
        pid: pid as i32,
        reaped: false,
    };
    drop(go_r);
    drop(status_w);
    let result = parent_side(req, userns, ns, &mut child, go_w, status_r);
    if result.is_err() {
        child.kill();
    }
    result
}

fn parent_side(
    req: &NamespaceRequest,
    userns: &UserNamespace,
    ns: &mut PodNamespaces,
    child: &mut Child,
    go_w: OwnedFd,
    status_r: OwnedFd,
) -> io::Result<()> {
    let pid = child.pid;
    for (file, map) in [("uid_map", &userns.uids), ("gid_map", &userns.gids)] {
        let path = format!("/proc/{pid}/{file}");
        std::fs::write(&path, map_text(map))
            .map_err(|e| io::Error::new(e.kind(), format!("writing {path}: {e}")))?;
    }
    let mut go = std::fs::File::from(go_w);
    io::Write::write_all(&mut go, b"g")?;
    let mut status = [0u8; 8];
    let mut read = std::fs::File::from(status_r);
    io::Read::read_exact(&mut read, &mut status)
        .map_err(|e| io::Error::new(e.kind(), format!("the namespace child died: {e}")))?;
    let step = u32::from_ne_bytes(status[..4].try_into().unwrap_or_default()) as usize;
    let code = i32::from_ne_bytes(status[4..].try_into().unwrap_or_default());
    if step != 0 {
        let e = io::Error::from_raw_os_error(code);
        let what = match STEPS.get(step - 1) {
            Some(what) => what.to_string(),
            None => match req.sysctls.get(step - 1 - STEPS.len()) {
                Some((path, value)) => format!("writing {value:?} to {path}"),
                None => "setting up the namespaces".into(),
            },
        };
        return Err(io::Error::new(e.kind(), format!("{what}: {e}")));
    }
    let pin = |kind: &str| -> io::Result<std::path::PathBuf> {
        let target = req.dir.join(kind);
        crate::namespaces::pin(Path::new(&format!("/proc/{pid}/ns/{kind}")), &target)?;
        Ok(target)
    };
    ns.user = Some(pin("user")?);
    for (kind, wanted) in [("net", req.net), ("ipc", req.ipc), ("uts", req.uts)] {
        if wanted {
            let p = pin(kind)?;
            match kind {
                "net" => ns.net = Some(p),
                "ipc" => ns.ipc = Some(p),
                _ => ns.uts = Some(p),
            }
        }
    }
    if req.pid {
        ns.infra_pid = Some(pid);
        ns.infra_start_time = crate::namespaces::start_time(pid);
        ns.pid = Some(pin("pid")?);
        // The infra process stays: it is PID 1 of the pod, reaped at stop (kill_infra).
        child.reaped = true;
    } else {
        // Closing `go` tells the child it may exit.
        drop(go);
        // SAFETY: our own child.
        unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
        child.reaped = true;
    }
    Ok(())
}

/// The child: waits for its maps, makes the namespaces and reports. Never returns.
fn child_main(plan: &ChildPlan, go: i32, status: i32) -> ! {
    let report = |step: u32, code: i32| {
        let mut b = [0u8; 8];
        b[..4].copy_from_slice(&step.to_ne_bytes());
        b[4..].copy_from_slice(&code.to_ne_bytes());
        // SAFETY: writing a stack buffer to our pipe.
        unsafe { libc::write(status, b.as_ptr().cast(), b.len()) };
    };
    let fail = |step: u32| -> ! {
        report(step, io::Error::last_os_error().raw_os_error().unwrap_or(0));
        // SAFETY: leaving the child without running any of the parent's exit handlers.
        unsafe { libc::_exit(1) }
    };
    let mut b = 0u8;
    // SAFETY: reading one byte into a stack variable.
    if unsafe { libc::read(go, (&mut b as *mut u8).cast(), 1) } != 1 {
        fail(1);
    }
    // SAFETY: raw system calls on prepared, NUL-terminated buffers.
    unsafe {
        if plan.unshare_flags != 0 && libc::unshare(plan.unshare_flags) != 0 {
            fail(2);
        }
        if !plan.hostname.is_empty()
            && libc::sethostname(plan.hostname.as_ptr().cast(), plan.hostname.len()) != 0
        {
            fail(3);
        }
    }
    if plan.net && crate::namespaces::loopback_up_raw() != 0 {
        fail(4);
    }
    for (i, (path, value)) in plan.sysctls.iter().enumerate() {
        // SAFETY: path is NUL-terminated, value a live buffer; the fd is closed below.
        unsafe {
            let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 || libc::write(fd, value.as_ptr().cast(), value.len()) < 0 {
                fail(STEPS.len() as u32 + 1 + i as u32);
            }
            libc::close(fd);
        }
    }
    report(0, 0);
    match &plan.infra {
        // SAFETY: we are the single-threaded child; infra_main only makes system calls.
        Some(infra) => unsafe { crate::namespaces::infra_main(infra) },
        None => {
            // Wait until crustd has pinned the namespaces and closes the pipe.
            // SAFETY: reading into a stack variable, then leaving.
            unsafe {
                while libc::read(go, (&mut b as *mut u8).cast(), 1) > 0 {}
                libc::_exit(0)
            }
        }
    }
}

/// Whether pods of `handler` can have a user namespace: the kernel (`supported`, over the
/// state and image filesystems) and the handler's OCI runtime both give it.
pub fn handler_supports(
    handler: &crate::RuntimeHandler,
    paths: &crate::Paths,
) -> Result<(), String> {
    supported(&[&paths.state_dir, &paths.root_dir])?;
    if !crate::features::runtime_user_namespaces(handler) {
        return Err(format!(
            "{} does not list the user namespace in its features",
            handler.oci_runtime().display()
        ));
    }
    Ok(())
}

/// RunPodSandbox's node-side checks of a POD-mode user namespace.
pub(crate) fn check_pod(
    userns: &UserNamespace,
    ns: &crate::pod::spec::NamespaceOptions,
    config: &crate::Config,
    handler: &str,
    paths: &crate::Paths,
) -> crate::Result<()> {
    use crate::pod::spec::NamespaceMode;
    userns
        .validate()
        .map_err(|e| crate::Error::InvalidArgument(format!("user namespace: {e}")))?;
    if ns.network == NamespaceMode::Node
        || ns.ipc == NamespaceMode::Node
        || ns.pid == NamespaceMode::Node
    {
        return Err(crate::Error::InvalidArgument(
            "a pod with its own user namespace cannot use the host's network, IPC or PID namespace"
                .into(),
        ));
    }
    let (_, h) = config.handler(handler).ok_or_else(|| {
        crate::Error::InvalidArgument(format!("unknown runtime handler {handler:?}"))
    })?;
    handler_supports(h, paths).map_err(|e| {
        crate::Error::FailedPrecondition(format!("user namespaces are not available: {e}"))
    })
}

/// Whether user namespaces with idmapped mounts work here: a user namespace can be made and
/// an idmapped clone of each directory (the state and image filesystems) be set up. Asked once.
pub fn supported(dirs: &[&Path]) -> Result<(), String> {
    static PROBE: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    PROBE.get_or_init(|| probe(dirs)).clone()
}

fn probe(dirs: &[&Path]) -> Result<(), String> {
    let map = vec![IdMapping {
        container_id: 0,
        host_id: 1 << 30,
        length: 65536,
    }];
    let userns = UserNamespace {
        uids: map.clone(),
        gids: map,
    };
    let fd = new_userns_fd(&userns).map_err(|e| format!("user namespace: {e}"))?;
    for dir in dirs {
        let d = dir
            .ancestors()
            .find(|a| a.exists())
            .unwrap_or(Path::new("/"));
        crate::idmap::detached_clone(d, &fd)
            .map(drop)
            .map_err(|e| format!("idmapped mount of {}: {e}", d.display()))?;
    }
    Ok(())
}

/// Opens a pinned user namespace (for `mount_setattr`).
pub fn open(pin: &Path) -> io::Result<OwnedFd> {
    let f = std::fs::File::open(pin)
        .map_err(|e| io::Error::new(e.kind(), format!("opening {}: {e}", pin.display())))?;
    Ok(f.into())
}

/// A new user namespace with `userns`'s maps, held by the returned descriptor alone (the
/// child that made it is gone): for idmapped mounts whose maps are no pod's.
pub(crate) fn new_userns_fd(userns: &UserNamespace) -> io::Result<OwnedFd> {
    let (go_r, go_w) = pipe()?;
    // SAFETY: fork-like clone; the child only blocks in read(2) and exits.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone,
            libc::CLONE_NEWUSER | libc::SIGCHLD,
            0usize,
            0usize,
            0usize,
            0usize,
        )
    };
    if pid < 0 {
        return Err(errno("clone(CLONE_NEWUSER)"));
    }
    if pid == 0 {
        let mut b = 0u8;
        // SAFETY: block until the parent closes the pipe (not our copy of its end), then leave.
        unsafe {
            libc::close(go_w.as_raw_fd());
            while libc::read(go_r.as_raw_fd(), (&mut b as *mut u8).cast(), 1) > 0 {}
            libc::_exit(0)
        }
    }
    drop(go_r);
    let mut child = Child {
        pid: pid as i32,
        reaped: false,
    };
    let opened = (|| {
        for (file, map) in [("uid_map", &userns.uids), ("gid_map", &userns.gids)] {
            std::fs::write(format!("/proc/{pid}/{file}"), map_text(map))?;
        }
        open(Path::new(&format!("/proc/{pid}/ns/user")))
    })();
    drop(go_w);
    child.kill();
    opened
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(c: u32, h: u32, l: u32) -> IdMapping {
        IdMapping {
            container_id: c,
            host_id: h,
            length: l,
        }
    }

    fn ns(uids: Vec<IdMapping>, gids: Vec<IdMapping>) -> UserNamespace {
        UserNamespace { uids, gids }
    }

    #[test]
    fn kubelets_mapping_is_valid_and_root_is_its_host_id() {
        let u = ns(vec![m(0, 65536 * 3, 65536)], vec![m(0, 65536 * 3, 65536)]);
        assert_eq!(u.validate(), Ok(()));
        assert_eq!(u.host_root(), (196608, 196608));
        assert_eq!(map_text(&u.uids), "0 196608 65536\n");
        let split = ns(vec![m(1, 2000, 10), m(0, 1000, 1)], vec![m(0, 5, 1)]);
        assert_eq!(split.validate(), Ok(()));
        assert_eq!(split.host_root(), (1000, 5));
    }

    #[test]
    fn malformed_overlapping_or_rootless_mappings_are_refused() {
        let ok = vec![m(0, 100000, 65536)];
        let cases = [
            (ns(vec![], ok.clone()), "uids: no mapping"),
            (ns(ok.clone(), vec![]), "gids: no mapping"),
            (ns(vec![m(0, 1000, 0)], ok.clone()), "length is 0"),
            (
                ns(ok.clone(), vec![m(0, u32::MAX - 10, 65536)]),
                "past the id space",
            ),
            (
                ns(vec![m(0, 1000, 10), m(5, 5000, 10)], ok.clone()),
                "container ids overlap",
            ),
            (
                ns(vec![m(0, 1000, 10), m(10, 1005, 10)], ok.clone()),
                "host ids overlap",
            ),
            (
                ns(vec![m(1, 1000, 10)], ok.clone()),
                "container id 0 is not mapped",
            ),
            (ns(ok.clone(), vec![m(0, 1, 1); 341]), "at most 340"),
        ];
        for (u, want) in cases {
            let e = u.validate().unwrap_err();
            assert!(e.contains(want), "{u:?}: {e}");
        }
    }

    #[test]
    fn a_pods_user_namespace_owns_its_namespaces_and_is_released() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: needs root");
            return;
        }
        use std::os::unix::fs::MetadataExt;
        let d = tempfile::tempdir().unwrap();
        let userns = ns(vec![m(0, 3_000_000, 65536)], vec![m(0, 3_000_000, 65536)]);
        for pid in [true, false] {
            let req = NamespaceRequest {
                dir: d.path().join(format!("ns-{pid}")),
                net: true,
                ipc: true,
                uts: true,
                pid,
                hostname: "userns-pod".into(),
                sysctls: vec![(
                    "/proc/sys/net/ipv4/ip_unprivileged_port_start".into(),
                    "0".into(),
                )],
                userns: Some(userns.clone()),
            };
            let pods = crate::namespaces::create(&req).unwrap();
            let user = pods.user.clone().unwrap();
            assert!(crate::namespaces::is_mounted(&user));
            assert_ne!(
                std::fs::metadata(&user).unwrap().ino(),
                std::fs::metadata("/proc/self/ns/user").unwrap().ino()
            );
            // The network, IPC and UTS namespaces belong to the new user namespace.
            for owned in [&pods.net, &pods.ipc, &pods.uts] {
                let f = std::fs::File::open(owned.as_ref().unwrap()).unwrap();
                const NS_GET_USERNS: libc::c_ulong = 0xb701;
                // SAFETY: an ioctl on a namespace file we hold; it returns a new fd or -1.
                let owner = unsafe { libc::ioctl(f.as_raw_fd(), NS_GET_USERNS) };
                assert!(owner >= 0, "{}", io::Error::last_os_error());
                // SAFETY: the ioctl returned a descriptor we now own.
                let owner = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(owner) });
                assert_eq!(
                    owner.metadata().unwrap().ino(),
                    std::fs::metadata(&user).unwrap().ino()
                );
            }
            match pods.infra_pid {
                Some(infra) => {
                    let map = std::fs::read_to_string(format!("/proc/{infra}/uid_map")).unwrap();
                    let fields: Vec<&str> = map.split_whitespace().collect();
                    assert_eq!(fields, ["0", "3000000", "65536"]);
                }
                None => assert!(!pid),
            }
            crate::namespaces::destroy(&pods);
            assert!(!crate::namespaces::is_mounted(&user));
            assert!(!user.exists());
        }
        // A map the kernel refuses (host ids crustd may not map: none here, so use an
        // overlapping one past validation) fails cleanly: nothing pinned remains.
        let req = NamespaceRequest {
            dir: d.path().join("bad"),
            net: true,
            userns: Some(ns(
                vec![m(0, 1000, 10), m(0, 2000, 10)],
                vec![m(0, 1000, 10)],
            )),
            ..Default::default()
        };
        let e = crate::namespaces::create(&req).unwrap_err();
        assert!(e.to_string().contains("uid_map"), "{e}");
        assert_eq!(std::fs::read_dir(d.path().join("bad")).unwrap().count(), 0);
        // A step the child fails is named (here the sysctl) and nothing stays either.
        let req = NamespaceRequest {
            dir: d.path().join("bad-sysctl"),
            net: true,
            pid: true,
            sysctls: vec![("/proc/sys/net/ipv4/no_such_sysctl".into(), "1".into())],
            userns: Some(userns.clone()),
            ..Default::default()
        };
        let e = crate::namespaces::create(&req).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("writing \"1\" to /proc/sys/net/ipv4/no_such_sysctl: "),
            "{e}"
        );
        assert_eq!(
            std::fs::read_dir(d.path().join("bad-sysctl"))
                .unwrap()
                .count(),
            0
        );
    }
}

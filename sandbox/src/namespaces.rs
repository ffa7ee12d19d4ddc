//! A pod's namespaces without a pause container.
//!
//! A short-lived helper thread unshares the namespaces the pod owns (net, ipc, uts; pid in POD
//! mode), sets the hostname, brings `lo` up, applies the namespaced sysctls, and bind-mounts
//! `/proc/thread-self/ns/*` onto files under `<pod dir>/ns/`. The bind mounts keep the namespaces
//! alive after the thread is gone; containers join them by path. unshare() on a thread changes
//! only that thread, so the rest of crustd stays where it was.
//!
//! A PID namespace needs a living init, so in POD mode the thread also forks a tiny infra process
//! (PID 1 of the pod) that only reaps orphans until it is killed at stop.

use std::ffi::CString;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// What to create.
#[derive(Debug, Clone, Default)]
pub struct NamespaceRequest {
    pub dir: PathBuf,
    pub net: bool,
    pub ipc: bool,
    pub uts: bool,
    pub pid: bool,
    /// Set in the new UTS namespace.
    pub hostname: String,
    /// (path under /proc/sys, value), written from inside the new namespaces.
    pub sysctls: Vec<(String, String)>,
    /// A user namespace with these maps owning the others (`crate::userns`).
    pub userns: Option<crate::userns::UserNamespace>,
}

/// The pinned namespaces of a pod; `None` means the host's.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodNamespaces {
    /// The pod's own user namespace (POD mode); absent for older records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<PathBuf>,
    pub net: Option<PathBuf>,
    pub ipc: Option<PathBuf>,
    pub uts: Option<PathBuf>,
    pub pid: Option<PathBuf>,
    /// The infra process (PID namespace holder), with its start time to tell it from a reused pid.
    pub infra_pid: Option<i32>,
    pub infra_start_time: Option<u64>,
}

fn errno(what: &str) -> io::Error {
    let e = io::Error::last_os_error();
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

/// Creates the namespaces. On error everything made so far is undone.
pub fn create(req: &NamespaceRequest) -> io::Result<PodNamespaces> {
    crust_state::private::create_dir(&req.dir)?;
    if let Some(userns) = &req.userns {
        return crate::userns::create(req, userns);
    }
    let req2 = req.clone();
    std::thread::Builder::new()
        .name("crust-pod-ns".into())
        .spawn(move || {
            let mut ns = PodNamespaces::default();
            match in_helper_thread(&req2, &mut ns) {
                Ok(()) => Ok(ns),
                Err(e) => {
                    destroy(&ns);
                    Err(e)
                }
            }
        })?
        .join()
        .map_err(|_| io::Error::other("namespace helper thread panicked"))?
}

fn in_helper_thread(req: &NamespaceRequest, ns: &mut PodNamespaces) -> io::Result<()> {
    let mut flags = 0;
    if req.net {
        flags |= libc::CLONE_NEWNET;
    }
    if req.ipc {
        flags |= libc::CLONE_NEWIPC;
    }
    if req.uts {
        flags |= libc::CLONE_NEWUTS;
    }
    if req.pid {
        flags |= libc::CLONE_NEWPID;
    }
    if flags == 0 {
        return Ok(());
    }
    // SAFETY: unshare affects only this (helper) thread's namespaces.
    if unsafe { libc::unshare(flags) } != 0 {
        return Err(errno("unshare"));
    }
    if req.uts && !req.hostname.is_empty() {
        // SAFETY: pointer and length describe a live byte slice.
        let r = unsafe { libc::sethostname(req.hostname.as_ptr().cast(), req.hostname.len()) };
        if r != 0 {
            return Err(errno("sethostname"));
        }
    }
    if req.net {
        loopback_up()?;
    }
    for (path, value) in &req.sysctls {
        std::fs::write(path, value)
            .map_err(|e| io::Error::new(e.kind(), format!("sysctl {path}: {e}")))?;
    }
    for (kind, wanted, slot) in [
        ("net", req.net, &mut ns.net),
        ("ipc", req.ipc, &mut ns.ipc),
        ("uts", req.uts, &mut ns.uts),
    ] {
        if wanted {
            let target = req.dir.join(kind);
            pin(Path::new(&format!("/proc/thread-self/ns/{kind}")), &target)?;
            *slot = Some(target);
        }
    }
    if req.pid {
        let pid = spawn_infra()?;
        ns.infra_pid = Some(pid);
        ns.infra_start_time = start_time(pid);
        let target = req.dir.join("pid");
        pin(Path::new(&format!("/proc/{pid}/ns/pid")), &target)?;
        ns.pid = Some(target);
    }
    Ok(())
}

pub(crate) fn pin(source: &Path, target: &Path) -> io::Result<()> {
    std::fs::File::create(target)?;
    let src = cstr(source)?;
    let dst = cstr(target)?;
    // SAFETY: valid NUL-terminated paths; a bind mount with no fs type or data.
    let r = unsafe {
        libc::mount(
            src.as_ptr(),
            dst.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND,
            std::ptr::null(),
        )
    };
    if r != 0 {
        let e = errno(&format!(
            "bind mount {} on {}",
            source.display(),
            target.display()
        ));
        let _ = std::fs::remove_file(target);
        return Err(e);
    }
    Ok(())
}

fn cstr(p: &Path) -> io::Result<CString> {
    use std::os::unix::ffi::OsStrExt;
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path has a NUL byte"))
}

/// Brings `lo` up in the current thread's network namespace.
fn loopback_up() -> io::Result<()> {
    match loopback_up_raw() {
        0 => Ok(()),
        e => {
            let e = io::Error::from_raw_os_error(e);
            Err(io::Error::new(e.kind(), format!("bringing lo up: {e}")))
        }
    }
}

/// `loopback_up` with raw system calls only (safe in a child after fork): 0 or the errno.
pub(crate) fn loopback_up_raw() -> i32 {
    let err = || {
        io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO)
    };
    // SAFETY: plain socket/ioctl calls on a zeroed ifreq naming "lo"; the fd is closed below.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return err();
        }
        let mut ifr: libc::ifreq = std::mem::zeroed();
        for (i, b) in b"lo".iter().enumerate() {
            ifr.ifr_name[i] = *b as libc::c_char;
        }
        let mut r = libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut ifr);
        if r == 0 {
            ifr.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            r = libc::ioctl(fd, libc::SIOCSIFFLAGS, &ifr);
        }
        let e = if r != 0 { err() } else { 0 };
        libc::close(fd);
        e
    }
}

/// What the infra process needs, prepared before the fork (nothing is allocated after it).
pub(crate) struct InfraPlan {
    devnull: std::fs::File,
    args: Option<(usize, usize)>,
}

impl InfraPlan {
    pub(crate) fn new() -> io::Result<InfraPlan> {
        Ok(InfraPlan {
            devnull: std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/null")?,
            // The child is a copy of crustd, command line included: in POD mode every
            // container would read crustd's path and config path in /proc/1/cmdline. The
            // child overwrites it.
            args: own_arg_area(),
        })
    }
}

/// Forks the pod's infra process: PID 1 of the new PID namespace, reaping orphans forever.
fn spawn_infra() -> io::Result<i32> {
    let plan = InfraPlan::new()?;
    // SAFETY: after fork the child runs only async-signal-safe syscalls (no allocation, no
    // locks), as required in a multi-threaded parent.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(errno("fork infra"));
    }
    if pid == 0 {
        // SAFETY: see above; the child never returns.
        unsafe { infra_main(&plan) }
    }
    Ok(pid)
}

/// The infra process's life: detached from crustd's session and descriptors, named
/// `crust-pod-init`, reaping orphans until killed.
///
/// # Safety
/// Only in a freshly forked (single-threaded) child: it makes raw system calls alone.
pub(crate) unsafe fn infra_main(plan: &InfraPlan) -> ! {
    use std::os::fd::AsRawFd;
    let null_fd = plan.devnull.as_raw_fd();
    // SAFETY: the caller guarantees a forked child; raw syscalls on our own memory.
    unsafe {
        libc::setsid();
        libc::dup2(null_fd, 0);
        libc::dup2(null_fd, 1);
        libc::dup2(null_fd, 2);
        // Drop every inherited descriptor (crustd's sockets, the state store's file).
        libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
        // SIGCHLD stays blocked so that it is kept pending for sigwaitinfo: unblocked, its
        // default disposition discards it and a wait could never learn of an orphan
        // reparented here after the last reap (it would stay a zombie for the pod's life).
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGCHLD);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
        libc::prctl(
            libc::PR_SET_NAME,
            c"crust-pod-init".as_ptr() as libc::c_ulong,
            0,
            0,
            0,
        );
        if let Some((start, len)) = plan.args {
            let name = c"crust-pod-init".to_bytes_with_nul();
            libc::memset(start as *mut libc::c_void, 0, len);
            libc::memcpy(
                start as *mut libc::c_void,
                name.as_ptr() as *const libc::c_void,
                name.len().min(len),
            );
            // A last byte that is not NUL tells the kernel the area was rewritten
            // (setproctitle): cmdline then ends at the first NUL, not at the area's end.
            if len > name.len() {
                *((start + len - 1) as *mut u8) = b' ';
            }
        }
        loop {
            // Reap every exited child, then sleep until the next one exits (a SIGCHLD
            // raised in between stays pending, so none is missed).
            while libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) > 0 {}
            libc::sigwaitinfo(&set, std::ptr::null_mut());
        }
    }
}

/// Where this process's command line lies in its memory (`arg_start`, its length), from
/// /proc/self/stat: what /proc/<pid>/cmdline shows.
fn own_arg_area() -> Option<(usize, usize)> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    arg_area(&stat)
}

fn arg_area(stat: &str) -> Option<(usize, usize)> {
    // Fields 48 and 49: arg_start, arg_end.
    let mut rest = stat_fields(stat)?.skip(45);
    let start: usize = rest.next()?.parse().ok()?;
    let end: usize = rest.next()?.parse().ok()?;
    (start > 0 && end > start).then(|| (start, end - start))
}

/// The fields of a `/proc/<pid>/stat` line from the 3rd (the state) on. The command
/// name before them may contain spaces and ')': they start after the last ')'.
fn stat_fields(stat: &str) -> Option<std::str::SplitWhitespace<'_>> {
    Some(stat.rsplit_once(')')?.1.split_whitespace())
}

/// A process's start time (clock ticks since boot), to recognise it after a pid was reused.
pub fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat_fields(&stat)?.nth(19)?.parse().ok()
}

/// Whether the process with this pid is the one that started at `start` and has not exited
/// (a zombie counts as gone).
pub fn running(pid: i32, start: Option<u64>) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let Some(mut fields) = stat_fields(&stat) else {
        return false;
    };
    let state = fields.next().unwrap_or("X");
    let started = fields.nth(18).and_then(|t| t.parse::<u64>().ok());
    !matches!(state, "Z" | "X" | "x") && start.is_some() && started == start
}

/// Kills the infra process if it is still the one crust started, and reaps it when it is our
/// child.
pub fn kill_infra(ns: &PodNamespaces) {
    let Some(pid) = ns.infra_pid else { return };
    if pid <= 1 || start_time(pid) != ns.infra_start_time || ns.infra_start_time.is_none() {
        return;
    }
    // SAFETY: plain kill/waitpid on a pid verified above.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
        // Ours only while the crustd that forked it runs; otherwise ECHILD, and init reaps it.
        libc::waitpid(pid, std::ptr::null_mut(), 0);
    }
}

/// Unmounts a pin (or any mount) lazily; not mounted is fine.
pub fn unmount(target: &Path) -> io::Result<()> {
    let t = cstr(target)?;
    // SAFETY: valid NUL-terminated path.
    let r = unsafe { libc::umount2(t.as_ptr(), libc::MNT_DETACH) };
    if r != 0 {
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINVAL) | Some(libc::ENOENT) => {}
            _ => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("unmount {}: {e}", target.display()),
                ));
            }
        }
    }
    Ok(())
}

/// Unmounts (detaching) every mount point at or below `dir`, deepest first; each is tried.
/// An error names a mount that stayed: then nothing below `dir` may be deleted.
pub fn unmount_all_below(dir: &Path) -> io::Result<()> {
    let Ok(mi) = crate::mountinfo::read() else {
        return Ok(());
    };
    let mut points: Vec<PathBuf> = mi
        .lines()
        .filter_map(crate::mountinfo::mount_point)
        .filter(|p| p.starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    points.dedup();
    let mut result = Ok(());
    for p in points {
        if let Err(e) = unmount(&p) {
            result = Err(e);
        }
    }
    result
}

/// Kills the infra process and releases every pin. Safe to call again.
pub fn destroy(ns: &PodNamespaces) {
    kill_infra(ns);
    for p in [&ns.net, &ns.ipc, &ns.uts, &ns.pid, &ns.user]
        .into_iter()
        .flatten()
    {
        if let Err(e) = unmount(p) {
            tracing::warn!(path = %p.display(), error = %e, "unpinning namespace");
        }
        let _ = std::fs::remove_file(p);
    }
}

/// Mounts the pod's /dev/shm: a tmpfs of `size` bytes.
pub fn mount_shm(target: &Path, size: u64) -> io::Result<()> {
    std::fs::create_dir_all(target)?;
    let t = cstr(target)?;
    let data = CString::new(format!("mode=1777,size={size}")).unwrap_or_default();
    // SAFETY: valid NUL-terminated strings.
    let r = unsafe {
        libc::mount(
            c"shm".as_ptr(),
            t.as_ptr(),
            c"tmpfs".as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            data.as_ptr().cast(),
        )
    };
    if r != 0 {
        return Err(errno(&format!("mount tmpfs on {}", target.display())));
    }
    Ok(())
}

/// Whether `path` is a mount point (by /proc/self/mountinfo).
pub fn is_mounted(path: &Path) -> bool {
    let Ok(mi) = crate::mountinfo::read() else {
        return false;
    };
    mi.lines()
        .any(|l| crate::mountinfo::mount_point(l).as_deref() == Some(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> bool {
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() == 0 }
    }

    #[test]
    fn the_arg_area_is_where_the_command_line_is() {
        let (start, len) = own_arg_area().expect("arg area");
        let cmdline = std::fs::read("/proc/self/cmdline").expect("cmdline");
        // SAFETY: the kernel says our argument strings lie there, in our own stack.
        let mem = unsafe { std::slice::from_raw_parts(start as *const u8, len) };
        assert_eq!(mem, cmdline.as_slice());
        // A command name with ") " in it does not shift the fields.
        let fake = format!("42 (a) b) S {}1000 1016 0 0 0 0\n", "0 ".repeat(44));
        assert_eq!(arg_area(&fake), Some((1000, 16)));
        assert_eq!(arg_area("42 (x) S 1 2"), None);
    }

    fn ns_inode(path: &Path) -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(path).unwrap().ino()
    }

    #[test]
    fn start_time_of_self() {
        let me = std::process::id() as i32;
        assert!(start_time(me).is_some());
        assert!(start_time(i32::MAX).is_none());
        assert!(running(me, start_time(me)));
        assert!(!running(me, start_time(me).map(|t| t + 1)));
        assert!(!running(i32::MAX, Some(1)));
    }

    #[test]
    fn a_zombie_is_not_running() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id() as i32;
        let start = start_time(pid);
        // Not reaped yet: a zombie once it exits.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while running(pid, start) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(!running(pid, start));
        child.wait().unwrap();
    }

    #[test]
    fn pinned_namespaces_outlive_the_thread_and_are_released() {
        if !root() {
            eprintln!("skipped: needs root");
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let req = NamespaceRequest {
            dir: d.path().join("ns"),
            net: true,
            ipc: true,
            uts: true,
            pid: true,
            hostname: "unit-pod".into(),
            sysctls: vec![(
                "/proc/sys/net/ipv4/ip_unprivileged_port_start".into(),
                "0".into(),
            )],
            userns: None,
        };
        let ns = create(&req).unwrap();
        let net = ns.net.clone().unwrap();
        assert!(is_mounted(&net));
        assert_ne!(ns_inode(&net), ns_inode(Path::new("/proc/self/ns/net")));
        assert_ne!(
            ns_inode(ns.uts.as_ref().unwrap()),
            ns_inode(Path::new("/proc/self/ns/uts"))
        );
        let infra = ns.infra_pid.unwrap();
        assert_eq!(
            ns_inode(Path::new(&format!("/proc/{infra}/ns/net"))),
            ns_inode(&net)
        );
        destroy(&ns);
        assert!(!is_mounted(&net));
        assert!(!net.exists());
        assert!(start_time(infra).is_none(), "infra process still there");
        destroy(&ns);
    }
}

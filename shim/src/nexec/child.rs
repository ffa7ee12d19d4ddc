//! The forked side of a native exec: raw syscalls only, no allocation, no locks (the shim
//! that forked may have had other threads). Everything is prepared in [`Prepared`].
//!
//! The order is runc's (`nsexec.c`, `setns_init_linux.go`, `finalizeNamespace`):
//!
//! ```text
//! intermediate: not dumpable → signals default, unblocked → stdio on 0-2, every other fd
//!   close-on-exec → oom_score_adj → join cgroups → setns ipc,uts,net,pid,mnt,cgroup,time
//!   → fork (a pid namespace takes effect for children), report the pid, exit
//! process: setsid → session keyring → pty (opened in the container's /dev/ptmx, master
//!   sent to the shim) → no_new_privs → umask → rlimits → chdir as root → drop bounding set
//!   → keep caps → chown stdio → setgroups/setgid/setuid → chdir as the user if needed →
//!   cwd inside the root? → clear keep caps → capset → ambient → execve ($PATH order)
//! ```
//!
//! A failure is written to the report pipe as (stage, errno); the pipe is close-on-exec,
//! so the shim reads EOF with no failure once `execve` succeeded.

use std::{ffi::CString, os::fd::RawFd};

use libc::{c_char, c_int, c_long};

use super::plan::Plan;

/// A step of the child, named in the error the shim reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Stage {
    Stdio = 1,
    OomScoreAdj,
    Cgroup,
    Setns,
    Fork,
    Setsid,
    Keyring,
    Console,
    NoNewPrivs,
    Rlimit,
    Chdir,
    Bounding,
    KeepCaps,
    User,
    Cwd,
    Capset,
    Ambient,
    Exec,
}

impl Stage {
    /// Every stage, in the order of the enum.
    const ALL: [Stage; 18] = {
        use Stage::*;
        [
            Stdio,
            OomScoreAdj,
            Cgroup,
            Setns,
            Fork,
            Setsid,
            Keyring,
            Console,
            NoNewPrivs,
            Rlimit,
            Chdir,
            Bounding,
            KeepCaps,
            User,
            Cwd,
            Capset,
            Ambient,
            Exec,
        ]
    };

    pub fn from_u32(v: u32) -> Option<Stage> {
        Self::ALL.into_iter().find(|s| *s as u32 == v)
    }
}

/// What the intermediate or the process writes to the report pipe.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct Report {
    /// 1: `value` is the process's pid; 2: `stage` failed with errno `value`.
    pub kind: u32,
    pub stage: u32,
    pub value: i32,
}

pub const REPORT_PID: u32 = 1;
pub const REPORT_FAILED: u32 = 2;

/// Everything the child uses, made before fork.
pub struct Prepared<'a> {
    pub plan: &'a Plan,
    pub argv: Vec<*const c_char>,
    pub envp: Vec<*const c_char>,
    /// The process's stdin/stdout/stderr (-1: the node's /dev/null, `devnull`).
    pub stdio: [RawFd; 3],
    pub devnull: RawFd,
    pub namespaces: Vec<(RawFd, c_int)>,
    pub cgroup_procs: Vec<RawFd>,
    pub report: RawFd,
    /// Our end of the socket the pty master goes to (-1 without a terminal).
    pub console: RawFd,
    pub last_cap: u32,
    pub oom_score_adj: Option<([u8; 16], usize)>,
}

/// `argv`/`envp` arrays for `execve` (NULL-terminated), pointing into `strings`.
pub fn pointers(strings: &[CString]) -> Vec<*const c_char> {
    strings
        .iter()
        .map(|s| s.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect()
}

/// `n` in decimal for `/proc/self/oom_score_adj`.
pub fn decimal(n: i32) -> ([u8; 16], usize) {
    let mut buf = [0u8; 16];
    let s = n.to_string();
    buf[..s.len()].copy_from_slice(s.as_bytes());
    (buf, s.len())
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

unsafe fn report(fd: RawFd, r: Report) {
    // SAFETY: writes a plain struct from the stack.
    unsafe {
        libc::write(
            fd,
            (&r as *const Report).cast(),
            std::mem::size_of::<Report>(),
        );
    }
}

/// Reports `stage` failing with the current errno and exits.
unsafe fn fail(fd: RawFd, stage: Stage) -> ! {
    let e = errno();
    // SAFETY: see `report`; `_exit` never returns.
    unsafe {
        report(
            fd,
            Report {
                kind: REPORT_FAILED,
                stage: stage as u32,
                value: e,
            },
        );
        libc::_exit(1)
    }
}

macro_rules! check {
    ($p:expr, $stage:expr, $call:expr) => {
        if ($call) < 0 {
            fail($p.report, $stage)
        }
    };
}

/// Runs in the first child, right after fork. Never returns.
///
/// # Safety
/// Call only in a freshly forked child of the shim.
pub unsafe fn intermediate(p: &Prepared) -> ! {
    unsafe {
        libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0);
        for sig in 1..=64 {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::signal(sig, libc::SIG_DFL);
            }
        }
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::pthread_sigmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());

        for (target, &fd) in p.stdio.iter().enumerate() {
            let src = if fd < 0 { p.devnull } else { fd };
            check!(p, Stage::Stdio, libc::dup2(src, target as c_int));
        }
        // Nothing but stdio survives execve (CVE-2024-21626): the fds used below
        // stay usable until then.
        const CLOSE_RANGE_CLOEXEC: c_long = 1 << 2;
        check!(
            p,
            Stage::Stdio,
            libc::syscall(libc::SYS_close_range, 3, u32::MAX, CLOSE_RANGE_CLOEXEC)
        );
        if let Some((buf, len)) = &p.oom_score_adj {
            let fd = libc::open(
                c"/proc/self/oom_score_adj".as_ptr(),
                libc::O_WRONLY | libc::O_CLOEXEC,
            );
            check!(p, Stage::OomScoreAdj, fd);
            check!(
                p,
                Stage::OomScoreAdj,
                libc::write(fd, buf.as_ptr().cast(), *len)
            );
            libc::close(fd);
        }
        for &fd in &p.cgroup_procs {
            check!(p, Stage::Cgroup, libc::write(fd, c"0".as_ptr().cast(), 1));
        }
        for &(fd, flag) in &p.namespaces {
            check!(p, Stage::Setns, libc::setns(fd, flag));
        }
        let pid = libc::fork();
        check!(p, Stage::Fork, pid);
        if pid == 0 {
            process(p)
        }
        report(
            p.report,
            Report {
                kind: REPORT_PID,
                stage: 0,
                value: pid,
            },
        );
        libc::_exit(0)
    }
}

/// Opens a pty in the container's `/dev/ptmx`, hands the master to the shim and makes
/// the slave the controlling terminal on 0-2.
unsafe fn console(p: &Prepared) {
    unsafe {
        let master = libc::open(
            c"/dev/ptmx".as_ptr(),
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        );
        check!(p, Stage::Console, master);
        let unlock: c_int = 0;
        check!(
            p,
            Stage::Console,
            libc::ioctl(master, libc::TIOCSPTLCK, &unlock)
        );
        if let Some((rows, cols)) = p.plan.console_size {
            let ws = libc::winsize {
                ws_row: rows,
                ws_col: cols,
                ws_xpixel: 0,
                ws_ypixel: 0,
            };
            check!(
                p,
                Stage::Console,
                libc::ioctl(master, libc::TIOCSWINSZ, &ws)
            );
        }
        let slave = libc::ioctl(master, libc::TIOCGPTPEER, libc::O_RDWR | libc::O_NOCTTY);
        check!(p, Stage::Console, slave);
        check!(p, Stage::Console, send_fd(p.console, master));
        libc::close(master);
        for target in 0..3 {
            check!(p, Stage::Console, libc::dup2(slave, target));
        }
        libc::close(slave);
        check!(p, Stage::Console, libc::ioctl(0, libc::TIOCSCTTY, 0));
    }
}

unsafe fn send_fd(sock: RawFd, fd: RawFd) -> isize {
    unsafe {
        let mut byte = [0u8; 1];
        let mut iov = libc::iovec {
            iov_base: byte.as_mut_ptr().cast(),
            iov_len: 1,
        };
        let mut cbuf = [0u64; 4]; // CMSG_SPACE(sizeof(int)), aligned
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cbuf.as_mut_ptr().cast();
        msg.msg_controllen = libc::CMSG_SPACE(std::mem::size_of::<c_int>() as u32) as usize;
        let c = libc::CMSG_FIRSTHDR(&msg);
        (*c).cmsg_level = libc::SOL_SOCKET;
        (*c).cmsg_type = libc::SCM_RIGHTS;
        (*c).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<c_int>() as u32) as usize;
        std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<c_int>(), fd);
        libc::sendmsg(sock, &msg, 0)
    }
}

/// runc's `fixStdioPermissions`: stdio not on /dev/null and not owned by the user is
/// given to the user (EINVAL and EPERM are ignored, as runc does).
unsafe fn chown_stdio(p: &Prepared) {
    unsafe {
        let mut null: libc::stat = std::mem::zeroed();
        check!(p, Stage::User, libc::stat(c"/dev/null".as_ptr(), &mut null));
        for fd in 0..3 {
            let mut st: libc::stat = std::mem::zeroed();
            check!(p, Stage::User, libc::fstat(fd, &mut st));
            if st.st_uid == p.plan.uid || st.st_rdev == null.st_rdev {
                continue;
            }
            if libc::fchown(fd, p.plan.uid, u32::MAX) < 0 {
                let e = errno();
                if e != libc::EINVAL && e != libc::EPERM {
                    fail(p.report, Stage::User)
                }
            }
        }
    }
}

unsafe fn capset(p: &Prepared) {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: c_int,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    let c = &p.plan.caps;
    let half = |m: u64, i: usize| (m >> (32 * i)) as u32;
    let data: [Data; 2] = [0, 1].map(|i| Data {
        effective: half(c.effective, i),
        permitted: half(c.permitted, i),
        inheritable: half(c.inheritable, i),
    });
    let hdr = Header {
        version: 0x2008_0522, // _LINUX_CAPABILITY_VERSION_3
        pid: 0,
    };
    unsafe {
        check!(
            p,
            Stage::Capset,
            libc::syscall(libc::SYS_capset, &hdr, data.as_ptr())
        );
        check!(
            p,
            Stage::Ambient,
            libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_CLEAR_ALL,
                0,
                0,
                0
            )
        );
        for cap in 0..=p.last_cap {
            if c.ambient & (1 << cap) != 0 {
                check!(
                    p,
                    Stage::Ambient,
                    libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_RAISE, cap, 0, 0)
                );
            }
        }
    }
}

/// Whether the working directory is under the process's root (runc's `verifyCwd`).
unsafe fn cwd_inside(p: &Prepared) {
    let mut buf = [0u8; 4096];
    unsafe {
        let n = libc::syscall(libc::SYS_getcwd, buf.as_mut_ptr(), buf.len());
        check!(p, Stage::Cwd, n);
        if buf[0] != b'/' {
            *libc::__errno_location() = libc::ENOENT;
            fail(p.report, Stage::Cwd)
        }
    }
}

/// The process itself: in the container's namespaces and cgroups, as its own child.
unsafe fn process(p: &Prepared) -> ! {
    let plan = p.plan;
    unsafe {
        check!(p, Stage::Setsid, libc::setsid());
        if let Some(name) = &plan.keyring {
            const KEYCTL_JOIN_SESSION_KEYRING: c_long = 1;
            let r = libc::syscall(libc::SYS_keyctl, KEYCTL_JOIN_SESSION_KEYRING, name.as_ptr());
            if r < 0 && errno() != libc::ENOSYS {
                fail(p.report, Stage::Keyring)
            }
        }
        if plan.terminal {
            console(p);
        }
        if plan.no_new_privs {
            check!(
                p,
                Stage::NoNewPrivs,
                libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
            );
        }
        if let Some(m) = plan.umask {
            libc::umask(m);
        }
        for r in &plan.rlimits {
            let lim = libc::rlimit64 {
                rlim_cur: r.soft,
                rlim_max: r.hard,
            };
            check!(
                p,
                Stage::Rlimit,
                libc::syscall(
                    libc::SYS_prlimit64,
                    0,
                    r.resource,
                    &lim,
                    std::ptr::null::<u8>()
                )
            );
        }
        let mut chdir_later = false;
        if libc::chdir(plan.cwd.as_ptr()) < 0 {
            if errno() != libc::EACCES && errno() != libc::EPERM {
                fail(p.report, Stage::Chdir)
            }
            chdir_later = true;
        }
        for cap in 0..=p.last_cap {
            if plan.caps.bounding & (1 << cap) == 0 {
                check!(
                    p,
                    Stage::Bounding,
                    libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0)
                );
            }
        }
        check!(
            p,
            Stage::KeepCaps,
            libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0)
        );
        chown_stdio(p);
        check!(
            p,
            Stage::User,
            libc::syscall(libc::SYS_setgroups, plan.groups.len(), plan.groups.as_ptr())
        );
        check!(p, Stage::User, libc::syscall(libc::SYS_setgid, plan.gid));
        check!(p, Stage::User, libc::syscall(libc::SYS_setuid, plan.uid));
        if chdir_later {
            check!(p, Stage::Chdir, libc::chdir(plan.cwd.as_ptr()));
        }
        cwd_inside(p);
        check!(
            p,
            Stage::KeepCaps,
            libc::prctl(libc::PR_SET_KEEPCAPS, 0, 0, 0, 0)
        );
        capset(p);
        // `execve` each $PATH candidate; one that is missing or not executable is
        // skipped, as Go's LookPath (runc) skips it.
        let mut last = libc::ENOENT;
        for c in &plan.candidates {
            libc::execve(c.as_ptr(), p.argv.as_ptr(), p.envp.as_ptr());
            last = errno();
            if ![libc::ENOENT, libc::ENOTDIR, libc::EACCES].contains(&last) {
                break;
            }
        }
        *libc::__errno_location() = last;
        fail(p.report, Stage::Exec)
    }
}

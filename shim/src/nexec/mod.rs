//! Native exec: the shim starts an exec process in a running container itself — the
//! container's namespaces, cgroups, capabilities, user, rlimits, no_new_privs, umask,
//! pty — instead of running `runc exec` (two Go runtime start-ups, most of an exec's
//! time). Whatever it cannot apply exactly as runc 1.1 would (a seccomp filter, an LSM
//! label, a user namespace, process fields it does not know: see `plan`) goes to runc,
//! logged at debug with the reason. `CRUST_SHIM_EXEC=runc` in the shim's environment
//! sends every exec to runc.
//!
//! The process is the grandchild of a fork (`child`): the shim reaps it as subreaper
//! and reports its exit through the same exit machinery as a runc exec.

mod child;
mod host;
pub mod plan;

use std::{
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    path::Path,
    time::Duration,
};

use child::{Prepared, REPORT_FAILED, REPORT_PID, Report, Stage};
use log::debug;
use tokio::{io::AsyncReadExt, sync::oneshot};

/// Environment variable choosing the exec path: `runc` turns the native path off.
pub const EXEC_ENV: &str = "CRUST_SHIM_EXEC";

/// How long the child may take to report (it never blocks on anything but the kernel).
const REPORT_LIMIT: Duration = Duration::from_secs(10);

/// The exec to start.
pub struct Request<'a> {
    pub container_id: &'a str,
    pub bundle: &'a Path,
    pub init_pid: u32,
    pub no_new_keyring: bool,
    pub process: &'a oci_spec::runtime::Process,
    /// The process's stdio without a terminal (-1: none).
    pub stdio: [RawFd; 3],
    /// Whether the exec request asked for a terminal.
    pub terminal: bool,
}

/// A started native exec.
pub struct Started {
    pub pid: u32,
    /// The pty master, with a terminal.
    pub console: Option<OwnedFd>,
}

fn enabled() -> bool {
    std::env::var(EXEC_ENV).map_or(true, |v| v != "runc")
}

/// The plan and the opened namespaces and cgroups, or why runc must do it.
type Prepare = (plan::Plan, u32, Vec<(OwnedFd, i32)>, Vec<OwnedFd>);

fn prepare(req: &Request) -> Result<Prepare, String> {
    if !enabled() {
        return Err(format!("{EXEC_ENV}=runc"));
    }
    let config = req.bundle.join("config.json");
    let container: serde_json::Value = std::fs::read(&config)
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
        .map_err(|e| format!("{}: {e}", config.display()))?;
    let process = serde_json::to_value(req.process).map_err(|e| e.to_string())?;
    let last_cap = host::last_cap()?;
    let passwd = || host::passwd(req.init_pid);
    let ctx = plan::Context {
        container_id: req.container_id,
        no_new_keyring: req.no_new_keyring,
        last_cap,
        passwd: &passwd,
    };
    let plan = plan::build(&process, &container, &ctx).map_err(|f| f.0)?;
    if plan.terminal != req.terminal {
        return Err("process.terminal differs from the request's terminal".into());
    }
    let namespaces = host::namespaces(req.init_pid)?;
    let cgroups = host::cgroups(req.init_pid)?;
    Ok((plan, last_cap, namespaces, cgroups))
}

fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two descriptors we then own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: just created, owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn socketpair() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    let ty = libc::SOCK_STREAM | libc::SOCK_CLOEXEC;
    // SAFETY: socketpair fills two descriptors we then own.
    if unsafe { libc::socketpair(libc::AF_UNIX, ty, 0, fds.as_mut_ptr()) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: just created, owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Forks with every signal blocked in this thread (the child must not run the shim's
/// handlers before it reset them); `watch` registers the child's pid with the reaper
/// before anything can reap it.
fn fork(
    p: &Prepared,
    watch: impl FnOnce(i32) -> oneshot::Receiver<i32>,
) -> std::io::Result<(i32, oneshot::Receiver<i32>)> {
    // SAFETY: sigset/pthread_sigmask on local sets; after fork the child runs only
    // `child::intermediate`, which makes raw syscalls and never returns.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
        let pid = libc::fork();
        if pid == 0 {
            child::intermediate(p)
        }
        let e = std::io::Error::last_os_error();
        let rx = (pid > 0).then(|| watch(pid));
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
        match rx {
            Some(rx) => Ok((pid, rx)),
            None => Err(e),
        }
    }
}

/// The reports the children wrote until both closed the pipe, and whether they took
/// longer than [`REPORT_LIMIT`] (what came by then is returned).
async fn read_reports(r: OwnedFd) -> Result<(Vec<Report>, bool), String> {
    let mut rx = tokio::net::unix::pipe::Receiver::from_owned_fd(r).map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    let timed_out = match tokio::time::timeout(REPORT_LIMIT, rx.read_to_end(&mut buf)).await {
        Ok(read) => read.map(|_| false).map_err(|e| e.to_string())?,
        Err(_) => true,
    };
    let reports = buf
        .chunks_exact(std::mem::size_of::<Report>())
        .map(|c| {
            let w = |i: usize| [c[i], c[i + 1], c[i + 2], c[i + 3]];
            Report {
                kind: u32::from_ne_bytes(w(0)),
                stage: u32::from_ne_bytes(w(4)),
                value: i32::from_ne_bytes(w(8)),
            }
        })
        .collect();
    Ok((reports, timed_out))
}

/// Errors of a `$PATH` search that Go's LookPath reports as "not found".
const NOT_FOUND: [i32; 3] = [libc::ENOENT, libc::ENOTDIR, libc::EACCES];

/// The error runc gives for the same failure.
fn failure(program: &str, stage: u32, errno: i32) -> String {
    let err = std::io::Error::from_raw_os_error(errno);
    let detail = match Stage::from_u32(stage) {
        Some(Stage::Exec) if !program.contains('/') && NOT_FOUND.contains(&errno) => {
            format!("exec: \"{program}\": executable file not found in $PATH")
        }
        Some(Stage::Exec) if errno == libc::ENOENT => {
            format!("exec: \"{program}\": stat {program}: no such file or directory")
        }
        Some(Stage::Exec) => format!("exec: \"{program}\": {err}"),
        Some(s) => format!("{s:?}: {err}"),
        None => format!("stage {stage}: {err}"),
    };
    format!("exec failed: unable to start container process: {detail}")
}

/// Starts the exec natively; `Ok(None)` when it is runc's to do (logged why).
/// `watch` registers a pid with the shim's reaper.
pub async fn start(
    req: &Request<'_>,
    watch: impl FnOnce(i32) -> oneshot::Receiver<i32>,
) -> Result<Option<Started>, String> {
    let began = std::time::Instant::now();
    let (plan, last_cap, namespaces, cgroups) = match prepare(req) {
        Ok(x) => x,
        Err(why) => {
            debug!("exec in {} through runc: {why}", req.container_id);
            return Ok(None);
        }
    };
    let io = |e: std::io::Error| e.to_string();
    let devnull = OwnedFd::from(
        std::fs::File::options()
            .read(true)
            .write(true)
            .open("/dev/null")
            .map_err(io)?,
    );
    let (report_r, report_w) = pipe().map_err(io)?;
    let console = if plan.terminal {
        Some(socketpair().map_err(io)?)
    } else {
        None
    };
    let prepared_ms = began.elapsed().as_secs_f64() * 1e3;
    let exited = {
        let prepared = Prepared {
            plan: &plan,
            argv: child::pointers(&plan.argv),
            envp: child::pointers(&plan.env),
            stdio: if plan.terminal { [-1; 3] } else { req.stdio },
            devnull: devnull.as_raw_fd(),
            namespaces: namespaces
                .iter()
                .map(|(f, t)| (f.as_raw_fd(), *t))
                .collect(),
            cgroup_procs: cgroups.iter().map(AsRawFd::as_raw_fd).collect(),
            report: report_w.as_raw_fd(),
            console: console.as_ref().map_or(-1, |c| c.1.as_raw_fd()),
            last_cap,
            oom_score_adj: plan.oom_score_adj.map(child::decimal),
        };
        fork(&prepared, watch).map_err(io)?
    };
    let (intermediate, exited) = exited;
    drop(report_w);
    let console = console.map(|(ours, theirs)| {
        drop(theirs);
        ours
    });
    drop((namespaces, cgroups, devnull));
    let (reports, timed_out) = read_reports(report_r).await?;
    let pid = reports
        .iter()
        .find(|r| r.kind == REPORT_PID)
        .map(|r| r.value);
    if timed_out {
        // Stuck before execve (a cgroup write, say): nothing of it may stay behind.
        for p in std::iter::once(intermediate).chain(pid) {
            // SAFETY: kill(2) of our own child or of the process it reported.
            unsafe { libc::kill(p, libc::SIGKILL) };
        }
        return Err("the exec process did not start within 10 s".into());
    }
    let _ = exited.await;
    if let Some(f) = reports.iter().find(|r| r.kind == REPORT_FAILED) {
        return Err(failure(&plan.program, f.stage, f.value));
    }
    let pid = pid.ok_or("the exec process reported no pid")?;
    let console = match console {
        Some(sock) => Some(
            crate::io::recv_fd(std::os::fd::AsFd::as_fd(&sock))
                .map_err(|e| format!("pty master: {e}"))?,
        ),
        None => None,
    };
    debug!(
        "exec in {} natively: pid {pid} ({prepared_ms:.1} ms to prepare, {:.1} ms in all)",
        req.container_id,
        began.elapsed().as_secs_f64() * 1e3
    );
    Ok(Some(Started {
        pid: pid as u32,
        console,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_read_as_runc_writes_them() {
        let prefix = "exec failed: unable to start container process: ";
        assert_eq!(
            failure("nope", Stage::Exec as u32, libc::ENOENT),
            format!("{prefix}exec: \"nope\": executable file not found in $PATH")
        );
        // Go's LookPath skips a file it may not execute: still "not found".
        assert!(failure("nope", Stage::Exec as u32, libc::EACCES).contains("not found in $PATH"));
        assert_eq!(
            failure("/x/nope", Stage::Exec as u32, libc::ENOENT),
            format!("{prefix}exec: \"/x/nope\": stat /x/nope: no such file or directory")
        );
        assert!(
            failure("/x", Stage::Exec as u32, libc::EACCES)
                .ends_with("Permission denied (os error 13)")
        );
        assert!(failure("sh", Stage::Chdir as u32, libc::ENOENT).contains("Chdir: No such file"));
        assert!(failure("sh", 999, libc::EPERM).contains("stage 999"));
    }

    #[test]
    fn oom_score_adj_is_written_in_decimal() {
        let (buf, len) = child::decimal(-998);
        assert_eq!(&buf[..len], b"-998");
    }
}

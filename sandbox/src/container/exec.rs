//! ExecSync: an exec task with the container's own process spec (user, env, cwd,
//! capabilities) and new args, run in a task of its own (a cancelled call still cleans up).
//!
//! stdout and stderr come through FIFOs that crustd opens read-write (no wait for a writer)
//! and reads asynchronously, keeping the first 16 MiB of each and dropping the rest; once
//! the process exited the pipes are drained and closed, so a child left holding them does
//! not hold the answer; past the timeout the exec is killed and the call answers
//! DeadlineExceeded. The caller holds the sender of a oneshot the task also waits on: when
//! the ExecSync call is dropped (the client's deadline, the client gone) the exec is killed
//! the same way.

use std::sync::Arc;
use std::time::Duration;

use oci_spec::runtime::Process;
use tokio::sync::{oneshot, watch};

use super::Containers;
use super::bundle::read_spec;
use super::record::ContainerRecord;
use crate::error::{Error, Result};
use crate::shim::{Output, ShimError, TaskIo};
use crate::task::TaskRuntime;

/// ExecSync's answer.
#[derive(Debug, Clone, Default)]
pub struct ExecOutput {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub exit_code: i32,
}

/// Output an ExecSync keeps per stream; the rest is read and dropped.
pub const EXEC_OUTPUT_CAP: usize = 16 * 1024 * 1024;

/// Why an exec was killed before it exited.
enum Ended {
    /// Its own `timeout` passed.
    TimedOut,
    /// The ExecSync call was dropped.
    Abandoned,
}

/// A fresh exec id: 16 hex characters.
pub(super) fn new_exec_id() -> Result<String> {
    Ok(crate::registry::new_id()?[..16].to_string())
}

/// The container's own process (user, env, cwd, capabilities) running `args` instead.
pub(super) fn exec_process(rec: &ContainerRecord, args: Vec<String>, tty: bool) -> Result<Process> {
    let mut process = read_spec(&rec.bundle)?
        .process()
        .clone()
        .ok_or_else(|| Error::Internal(format!("container {} has no process spec", rec.id)))?;
    process.set_args(Some(args));
    process.set_terminal(Some(tty));
    Ok(process)
}

impl Containers {
    /// The running container an exec of `cmd` (not empty) goes into, and its runtime.
    pub(super) async fn exec_target(
        &self,
        id: &str,
        cmd: &[String],
    ) -> Result<(ContainerRecord, Arc<dyn TaskRuntime>)> {
        if cmd.is_empty() {
            return Err(Error::InvalidArgument("exec command is empty".into()));
        }
        self.running(id).await
    }

    /// ExecSync: runs `cmd` in the container, with its user, env and working
    /// dir; kills it after `timeout` (zero: no timeout).
    pub async fn exec_sync(
        &self,
        id: &str,
        cmd: Vec<String>,
        timeout: Duration,
    ) -> Result<ExecOutput> {
        let (rec, shim) = self.exec_target(id, &cmd).await?;
        // The exec runs in a task of its own, so that a caller going away (its
        // deadline passed, its connection closed: this future is dropped) still
        // has it cleaned up: dropping `_abandon` closes `abandoned`, and the task
        // kills the process as when its own timeout passes, then removes its
        // task in the shim and its FIFOs.
        let (_abandon, abandoned) = oneshot::channel::<()>();
        tokio::spawn(async move { exec_in(rec, shim, cmd, timeout, abandoned).await })
            .await
            .map_err(|e| Error::Internal(format!("exec task: {e}")))?
    }
}

async fn exec_in(
    rec: ContainerRecord,
    shim: Arc<dyn TaskRuntime>,
    cmd: Vec<String>,
    timeout: Duration,
    abandoned: oneshot::Receiver<()>,
) -> Result<ExecOutput> {
    let process = exec_process(&rec, cmd.clone(), false)?;
    let exec_id = new_exec_id()?;
    let dir = rec.bundle.join("exec");
    crust_state::private::create_dir(&dir).map_err(|e| Error::write("create", &dir, e))?;
    let out_path = dir.join(format!("{exec_id}.out"));
    let err_path = dir.join(format!("{exec_id}.err"));
    let (done_tx, done_rx) = watch::channel(false);
    let mut readers = Vec::new();
    for p in [&out_path, &err_path] {
        nix::unistd::mkfifo(p.as_path(), nix::sys::stat::Mode::from_bits_truncate(0o600))
            .map_err(|e| Error::Internal(format!("mkfifo {}: {e}", p.display())))?;
        // Opened read-write, so the open never waits for a writer and the
        // reader never sees an end of file: it stops when told the process exited.
        let rx = tokio::net::unix::pipe::OpenOptions::new()
            .read_write(true)
            .open_receiver(p)?;
        readers.push(tokio::spawn(collect_output(rx, done_rx.clone())));
    }
    let io = TaskIo {
        stdin: None,
        output: Output::Paths {
            stdout: Some(out_path.clone()),
            stderr: Some(err_path.clone()),
        },
        terminal: false,
    };
    let run = async {
        shim.exec(&rec.id, &exec_id, &process, &io).await?;
        shim.start(&rec.id, &exec_id).await?;
        let wait = shim.wait(&rec.id, &exec_id);
        let expiry = async {
            if timeout.is_zero() {
                std::future::pending().await
            } else {
                tokio::time::sleep(timeout).await
            }
        };
        tokio::select! {
            r = wait => Ok::<_, ShimError>(Ok(r?)),
            _ = expiry => Ok(Err(Ended::TimedOut)),
            // Resolves with an error once the caller's future is dropped.
            _ = abandoned => Ok(Err(Ended::Abandoned)),
        }
    }
    .await;
    let result = match run {
        Ok(Ok(exit)) => Ok(exit.exit_status as i32),
        Ok(Err(ended)) => {
            let _ = shim
                .kill(&rec.id, &exec_id, libc::SIGKILL as u32, false)
                .await;
            let _ = shim.wait(&rec.id, &exec_id).await;
            Err(match ended {
                Ended::TimedOut => {
                    Error::DeadlineExceeded(format!("command {cmd:?} timed out after {timeout:?}"))
                }
                Ended::Abandoned => {
                    tracing::info!(container = %rec.id, exec = %exec_id, "exec killed: its caller went away");
                    Error::DeadlineExceeded(format!("command {cmd:?}: the caller went away"))
                }
            })
        }
        Err(e) => Err(Error::from(e)),
    };
    let _ = shim.delete(&rec.id, &exec_id).await;
    let _ = done_tx.send(true);
    let mut outputs = Vec::new();
    for r in readers {
        outputs.push(r.await.unwrap_or_default());
    }
    let _ = std::fs::remove_file(&out_path);
    let _ = std::fs::remove_file(&err_path);
    let exit_code = result?;
    let stderr = outputs.pop().unwrap_or_default();
    let stdout = outputs.pop().unwrap_or_default();
    Ok(ExecOutput {
        stdout,
        stderr,
        exit_code,
    })
}

/// Reads an exec's output FIFO, keeping the first [`EXEC_OUTPUT_CAP`] bytes
/// and reading (and dropping) the rest so the process never blocks on a full
/// pipe. Once `done` says the process exited, what is left in the pipe is
/// taken and the reader stops, even if a child the command left behind still
/// holds the pipe open.
async fn collect_output(
    rx: tokio::net::unix::pipe::Receiver,
    mut done: watch::Receiver<bool>,
) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let keep = |out: &mut Vec<u8>, bytes: &[u8]| {
        let room = EXEC_OUTPUT_CAP.saturating_sub(out.len());
        out.extend_from_slice(&bytes[..bytes.len().min(room)]);
    };
    loop {
        tokio::select! {
            biased;
            ready = rx.readable() => {
                if ready.is_err() {
                    break;
                }
                match rx.try_read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => keep(&mut out, &buf[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(_) => break,
                }
            }
            _ = done.wait_for(|d| *d) => {
                while let Ok(n) = rx.try_read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    keep(&mut out, &buf[..n]);
                }
                break;
            }
        }
    }
    out
}

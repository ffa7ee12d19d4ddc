//! Exec with live stdio, for the streaming server (`crictl exec -it`, `kubectl exec`):
//! the process runs through the pod's shim like an ExecSync, with FIFOs in the
//! bundle's `exec/` directory that crustd writes (stdin) and reads (stdout,
//! stderr; with a TTY, the terminal's output is stdout).
//!
//! The output FIFOs are opened read-write, so they never report an end of file;
//! the shim reports the exit only once it has copied all output into them, so after
//! [`ExecHandle::wait`] the readers return what is left and then 0.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::net::unix::pipe;
use tokio::sync::{OnceCell, watch};

use super::Containers;
use super::exec::{exec_process, new_exec_id};
use crate::error::{Error, Result};
use crate::shim::{Output, TaskIo};
use crate::task::TaskRuntime;

/// Which stdio a streamed exec has.
#[derive(Debug, Clone, Copy, Default)]
pub struct StreamOptions {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
    /// The terminal's size (columns, rows) to start with.
    pub size: Option<(u16, u16)>,
}

/// A started exec: its stdio and its handle.
pub struct ExecStream {
    pub stdin: Option<pipe::Sender>,
    pub stdout: Option<OutputReader>,
    pub stderr: Option<OutputReader>,
    pub handle: Arc<ExecHandle>,
}

/// The exec's lifecycle in the shim.
pub struct ExecHandle {
    shim: Arc<dyn TaskRuntime>,
    container: String,
    exec_id: String,
    fifos: Vec<PathBuf>,
    done: watch::Sender<bool>,
    exit: OnceCell<std::result::Result<i32, String>>,
}

impl ExecHandle {
    /// Waits for the process to end (once; later calls get the same answer), then
    /// lets the readers finish and removes the exec from the shim and its FIFOs.
    pub async fn wait(&self) -> std::result::Result<i32, String> {
        self.exit
            .get_or_init(|| async {
                let r = self
                    .shim
                    .wait(&self.container, &self.exec_id)
                    .await
                    .map(|e| e.exit_status as i32)
                    .map_err(|e| e.to_string());
                self.done.send_replace(true);
                let _ = self.shim.delete(&self.container, &self.exec_id).await;
                for f in &self.fifos {
                    let _ = std::fs::remove_file(f);
                }
                r
            })
            .await
            .clone()
    }

    /// SIGKILL to the process (its client went away).
    pub async fn kill(&self) {
        let _ = self
            .shim
            .kill(&self.container, &self.exec_id, libc::SIGKILL as u32, false)
            .await;
    }

    pub async fn resize(&self, width: u16, height: u16) -> Result<()> {
        self.shim
            .resize_pty(
                &self.container,
                &self.exec_id,
                u32::from(width),
                u32::from(height),
            )
            .await?;
        Ok(())
    }

    /// Closes the process's stdin: it reads an end of file.
    pub async fn close_stdin(&self) -> Result<()> {
        self.shim
            .close_stdin(&self.container, &self.exec_id)
            .await?;
        Ok(())
    }
}

/// Reads an output FIFO until the process is over and the FIFO is empty.
pub struct OutputReader {
    rx: pipe::Receiver,
    done: watch::Receiver<bool>,
}

impl OutputReader {
    /// What the process wrote; 0 once it has ended and everything was read.
    pub async fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if *self.done.borrow() {
                return match self.rx.try_read(buf) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
                    r => r,
                };
            }
            tokio::select! {
                biased;
                ready = self.rx.readable() => {
                    ready?;
                    match self.rx.try_read(buf) {
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        r => return r,
                    }
                }
                changed = self.done.changed() => {
                    if changed.is_err() {
                        // The handle is gone: nothing more will come.
                        return Ok(0);
                    }
                }
            }
        }
    }
}

impl Containers {
    /// Starts `cmd` in a running container with the stdio `opts` asks for.
    pub async fn exec_stream(
        &self,
        id: &str,
        cmd: Vec<String>,
        opts: StreamOptions,
    ) -> Result<ExecStream> {
        let (rec, shim) = self.exec_target(id, &cmd).await?;
        let mut process = exec_process(&rec, cmd, opts.tty)?;
        if let (true, Some((width, height))) = (opts.tty, opts.size) {
            // runc makes the exec's pty this size before the process starts.
            let size = oci_spec::runtime::BoxBuilder::default()
                .width(u64::from(width))
                .height(u64::from(height))
                .build()
                .map_err(|e| Error::Internal(format!("console size: {e}")))?;
            process.set_console_size(Some(size));
        }
        let exec_id = new_exec_id()?;
        let dir = rec.bundle.join("exec");
        crust_state::private::create_dir(&dir).map_err(|e| Error::write("create", &dir, e))?;
        let fifo = |suffix: &str, wanted: bool| -> Result<Option<PathBuf>> {
            if !wanted {
                return Ok(None);
            }
            let p = dir.join(format!("{exec_id}.{suffix}"));
            nix::unistd::mkfifo(p.as_path(), nix::sys::stat::Mode::from_bits_truncate(0o600))
                .map_err(|e| Error::Internal(format!("mkfifo {}: {e}", p.display())))?;
            Ok(Some(p))
        };
        let in_path = fifo("in", opts.stdin)?;
        let out_path = fifo("out", opts.stdout)?;
        let err_path = fifo("err", opts.stderr && !opts.tty)?;
        let fifos: Vec<PathBuf> = [&in_path, &out_path, &err_path]
            .into_iter()
            .flatten()
            .cloned()
            .collect();
        let (done_tx, done_rx) = watch::channel(false);
        let handle = Arc::new(ExecHandle {
            shim: shim.clone(),
            container: rec.id.clone(),
            exec_id: exec_id.clone(),
            fifos,
            done: done_tx,
            exit: OnceCell::new(),
        });
        let opened = (|| -> io::Result<_> {
            let reader = |p: &Option<PathBuf>| -> io::Result<Option<OutputReader>> {
                p.as_ref()
                    .map(|p| {
                        Ok(OutputReader {
                            rx: pipe::OpenOptions::new().read_write(true).open_receiver(p)?,
                            done: done_rx.clone(),
                        })
                    })
                    .transpose()
            };
            let stdin = in_path
                .as_ref()
                .map(|p| pipe::OpenOptions::new().read_write(true).open_sender(p))
                .transpose()?;
            Ok((stdin, reader(&out_path)?, reader(&err_path)?))
        })();
        let cleanup = |h: &ExecHandle| {
            for f in &h.fifos {
                let _ = std::fs::remove_file(f);
            }
        };
        let (stdin, stdout, stderr) = match opened {
            Ok(o) => o,
            Err(e) => {
                cleanup(&handle);
                return Err(e.into());
            }
        };
        let io = TaskIo {
            stdin: in_path.clone(),
            output: Output::Paths {
                stdout: out_path.clone(),
                stderr: err_path.clone(),
            },
            terminal: opts.tty,
        };
        let started = async {
            shim.exec(&rec.id, &exec_id, &process, &io).await?;
            shim.start(&rec.id, &exec_id).await
        }
        .await;
        if let Err(e) = started {
            let _ = shim.delete(&rec.id, &exec_id).await;
            cleanup(&handle);
            return Err(Error::from(e));
        }
        Ok(ExecStream {
            stdin,
            stdout,
            stderr,
            handle,
        })
    }
}

/// Used by the streaming server to check a request before handing out its URL.
pub async fn require_running(c: &Containers, id: &str) -> Result<String> {
    let (rec, _shim) = c.running(id).await?;
    Ok(rec.id)
}

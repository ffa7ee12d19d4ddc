//! Stdio of container processes.
//!
//! Each of stdin/stdout/stderr in a create or exec request is one of:
//! - `""`: nothing (`/dev/null`);
//! - stdout `file:///abs/path.log`: CRI log mode — the shim reads the process's stdout
//!   and stderr through pipes and writes both into that file in the CRI log format
//!   (stderr must then be empty or the same URI);
//! - any other absolute path (a FIFO or a file): stdout/stderr are opened read-write
//!   and handed to the process directly; stdin is a FIFO the shim reads from and copies
//!   into a pipe to the process, so `CloseIO` can close the process's stdin.
//!
//! With `terminal`, runc hands the shim the pty master over a console socket; its output
//! goes where stdout goes (CRI log stream `stdout`), stdin is copied into it.

use std::{
    fs::OpenOptions,
    io,
    os::{
        fd::{AsFd, AsRawFd, OwnedFd},
        unix::fs::{FileTypeExt, OpenOptionsExt},
    },
    path::{Path, PathBuf},
    process::Stdio,
    sync::{Arc, Mutex},
    time::Duration,
};

use async_trait::async_trait;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::unix::pipe,
    sync::oneshot,
    task::JoinHandle,
};

use crust_crilog::{LogFile, Stream, copy_to_log};

pub use crust_shim_protocol::CRI_LOG_SCHEME;

/// The stdio a create/exec request asked for.
#[derive(Debug, Clone, Default)]
pub struct StdioSpec {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
}

impl StdioSpec {
    /// The CRI log path, when stdout is a `file://` URI.
    pub fn cri_log_path(&self) -> Option<PathBuf> {
        self.stdout.strip_prefix(CRI_LOG_SCHEME).map(PathBuf::from)
    }
}

/// The file descriptors runc passes on to the process.
#[derive(Debug, Default)]
pub struct ChildIo {
    stdin: Mutex<Option<OwnedFd>>,
    stdout: Mutex<Option<OwnedFd>>,
    stderr: Mutex<Option<OwnedFd>>,
}

impl ChildIo {
    /// The raw descriptors (-1 for none), for a process the shim starts itself.
    pub fn raw_fds(&self) -> [std::os::fd::RawFd; 3] {
        [&self.stdin, &self.stdout, &self.stderr].map(|slot| {
            slot.lock()
                .unwrap_or_else(|p| p.into_inner())
                .as_ref()
                .map_or(-1, AsRawFd::as_raw_fd)
        })
    }
}

fn stdio_of(slot: &Mutex<Option<OwnedFd>>) -> io::Result<Stdio> {
    match slot.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
        Some(fd) => Ok(Stdio::from(fd.try_clone()?)),
        None => Ok(Stdio::null()),
    }
}

#[async_trait]
impl runc::Io for ChildIo {
    async fn set(&self, cmd: &mut runc::Command) -> io::Result<()> {
        cmd.stdin(stdio_of(&self.stdin)?);
        cmd.stdout(stdio_of(&self.stdout)?);
        cmd.stderr(stdio_of(&self.stderr)?);
        Ok(())
    }

    async fn close_after_start(&self) {
        for slot in [&self.stdin, &self.stdout, &self.stderr] {
            slot.lock().unwrap_or_else(|p| p.into_inner()).take();
        }
    }
}

/// The shim's side of a process's stdio.
#[derive(Debug, Default)]
pub struct ShimIo {
    /// Dropping or firing it closes the process's stdin.
    pub stdin_close: Option<oneshot::Sender<()>>,
    /// Output copiers; finished once the process and its children closed their output.
    pub copiers: Vec<JoinHandle<()>>,
    /// The CRI log file, for reopening.
    pub log: Option<Arc<Mutex<LogFile>>>,
    /// The pty master, for resizing.
    pub console: Option<Arc<OwnedFd>>,
}

impl ShimIo {
    /// Waits (at most `limit`) until the output has been copied out.
    pub async fn drain(&mut self, limit: Duration) {
        let copiers = std::mem::take(&mut self.copiers);
        let all = async {
            for c in copiers {
                let _ = c.await;
            }
        };
        let _ = tokio::time::timeout(limit, all).await;
    }

    pub fn close_stdin(&mut self) {
        if let Some(tx) = self.stdin_close.take() {
            let _ = tx.send(());
        }
    }

    pub fn reopen_log(&self) -> io::Result<bool> {
        match &self.log {
            Some(log) => {
                log.lock().unwrap_or_else(|p| p.into_inner()).reopen()?;
                Ok(true)
            }
            None => Ok(false),
        }
    }
}

fn pipe_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(io::Error::from)?;
    Ok((r, w))
}

/// Opens a stdout/stderr destination path for the process to write to directly.
fn open_output(path: &Path) -> io::Result<OwnedFd> {
    let is_fifo = std::fs::metadata(path)
        .map(|m| m.file_type().is_fifo())
        .unwrap_or(false);
    let mut o = OpenOptions::new();
    if is_fifo {
        // Read-write never blocks waiting for a reader.
        o.read(true).write(true);
    } else {
        o.append(true).create(true).mode(0o640);
    }
    Ok(o.custom_flags(libc::O_CLOEXEC).open(path)?.into())
}

/// Opens the stdin FIFO read-write: no block waiting for a writer, no EOF when one leaves.
fn open_stdin_fifo(path: &Path) -> io::Result<pipe::Receiver> {
    pipe::OpenOptions::new()
        .read_write(true)
        .open_receiver(path)
}

async fn copy_stdin(
    mut from: pipe::Receiver,
    mut to: impl tokio::io::AsyncWrite + Unpin,
    mut close: oneshot::Receiver<()>,
) {
    let mut buf = vec![0u8; 8192];
    loop {
        tokio::select! {
            _ = &mut close => {
                // What was written before CloseIO still belongs to the process:
                // the writer finished writing before it asked to close. Read with
                // read(2) itself: tokio's try_read answers WouldBlock without reading
                // while the FIFO's readiness has not come through epoll yet, which
                // lost data written just before the close.
                while let Some(n) = read_now(&from, &mut buf) {
                    if to.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
                break;
            }
            r = from.read(&mut buf) => match r {
                Ok(0) | Err(_) => break,
                Ok(n) => if to.write_all(&buf[..n]).await.is_err() { break },
            },
        }
    }
}

/// What the (non-blocking) FIFO holds right now, read by read(2): None when it is
/// empty, at end of file or on an error.
fn read_now(from: &pipe::Receiver, buf: &mut [u8]) -> Option<usize> {
    use std::os::fd::AsFd;
    loop {
        match nix::unistd::read(from.as_fd(), buf) {
            Ok(0) => return None,
            Ok(n) => return Some(n),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return None,
        }
    }
}

/// Sets up stdio for a process without a terminal: returns what runc hands the process
/// and the shim's side (copiers already running).
pub fn prepare(spec: &StdioSpec) -> io::Result<(ChildIo, ShimIo)> {
    let child = ChildIo::default();
    let mut shim = ShimIo::default();

    if !spec.stdin.is_empty() {
        let fifo = open_stdin_fifo(Path::new(&spec.stdin))?;
        let (r, w) = pipe_pair()?;
        let w = pipe::Sender::from_owned_fd(w)?;
        let (tx, rx) = oneshot::channel();
        tokio::spawn(copy_stdin(fifo, w, rx));
        shim.stdin_close = Some(tx);
        *child.stdin.lock().unwrap_or_else(|p| p.into_inner()) = Some(r);
    }

    if let Some(path) = spec.cri_log_path() {
        let log = Arc::new(Mutex::new(LogFile::open(path)?));
        for (stream, slot) in [
            (Stream::Stdout, &child.stdout),
            (Stream::Stderr, &child.stderr),
        ] {
            let (r, w) = pipe_pair()?;
            let r = pipe::Receiver::from_owned_fd(r)?;
            shim.copiers
                .push(tokio::spawn(copy_to_log(r, stream, log.clone())));
            *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(w);
        }
        shim.log = Some(log);
    } else {
        if !spec.stdout.is_empty() {
            *child.stdout.lock().unwrap_or_else(|p| p.into_inner()) =
                Some(open_output(Path::new(&spec.stdout))?);
        }
        if !spec.stderr.is_empty() {
            *child.stderr.lock().unwrap_or_else(|p| p.into_inner()) =
                Some(open_output(Path::new(&spec.stderr))?);
        }
    }
    Ok((child, shim))
}

/// A listening console socket for `runc --console-socket`.
pub struct ConsoleSocket {
    pub path: PathBuf,
    listener: tokio::net::UnixListener,
    _dir: tempfile::TempDir,
}

impl ConsoleSocket {
    pub fn new() -> io::Result<Self> {
        let dir = tempfile::Builder::new().prefix("crust-pty").tempdir()?;
        let path = dir.path().join("pty.sock");
        let listener = tokio::net::UnixListener::bind(&path)?;
        Ok(ConsoleSocket {
            path,
            listener,
            _dir: dir,
        })
    }

    /// Receives the pty master runc sends once the process is created.
    pub async fn receive(self) -> io::Result<OwnedFd> {
        let (stream, _) = self.listener.accept().await?;
        loop {
            stream.readable().await?;
            match stream.try_io(tokio::io::Interest::READABLE, || recv_fd(stream.as_fd())) {
                Ok(fd) => return Ok(fd),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

pub fn recv_fd(sock: std::os::fd::BorrowedFd<'_>) -> io::Result<OwnedFd> {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
    use std::os::fd::FromRawFd;
    let mut buf = [0u8; 4096];
    let mut iov = [io::IoSliceMut::new(&mut buf)];
    let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let msg = recvmsg::<()>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(io::Error::from)?;
    for c in msg.cmsgs().map_err(io::Error::from)? {
        if let ControlMessageOwned::ScmRights(fds) = c
            && let Some(&fd) = fds.first()
        {
            // SAFETY: the kernel just installed this descriptor for us.
            return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
        }
    }
    Err(io::Error::other("console socket message carried no fd"))
}

/// Wires a received pty master: output to the log (or the stdout path), stdin into it.
pub fn attach_console(spec: &StdioSpec, master: OwnedFd, shim: &mut ShimIo) -> io::Result<()> {
    let master = Arc::new(master);
    let dup = |m: &OwnedFd| -> io::Result<std::fs::File> { Ok(m.try_clone()?.into()) };
    set_nonblocking(&master)?;
    if !spec.stdin.is_empty() {
        let fifo = open_stdin_fifo(Path::new(&spec.stdin))?;
        let w = AsyncFdReader::new(dup(&master)?)?;
        let (tx, rx) = oneshot::channel();
        tokio::spawn(copy_stdin(fifo, w, rx));
        shim.stdin_close = Some(tx);
    }
    let reader = AsyncFdReader::new(dup(&master)?)?;
    if let Some(path) = spec.cri_log_path() {
        let log = Arc::new(Mutex::new(LogFile::open(path)?));
        shim.copiers.push(tokio::spawn(copy_to_log(
            reader,
            Stream::Stdout,
            log.clone(),
        )));
        shim.log = Some(log);
    } else if !spec.stdout.is_empty() {
        let out = std::fs::File::from(open_output(Path::new(&spec.stdout))?);
        shim.copiers.push(tokio::spawn(async move {
            use std::io::Write;
            let (mut reader, mut out) = (reader, out);
            let mut buf = vec![0u8; 8192];
            // Local file or FIFO opened read-write: short blocking writes are fine here.
            while let Ok(n) = reader.read(&mut buf).await {
                if n == 0 || out.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }));
    }
    shim.console = Some(master);
    Ok(())
}

fn set_nonblocking(fd: &OwnedFd) -> io::Result<()> {
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    let flags = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL).map_err(io::Error::from)?);
    fcntl(fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK)).map_err(io::Error::from)?;
    Ok(())
}

/// Sets the pty window size.
pub fn resize(console: &OwnedFd, width: u32, height: u32) -> io::Result<()> {
    let ws = libc::winsize {
        ws_row: height as u16,
        ws_col: width as u16,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a winsize from the pointer we pass.
    let r = unsafe { libc::ioctl(console.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Non-blocking reads and writes of a pty master through the reactor.
struct AsyncFdReader(tokio::io::unix::AsyncFd<std::fs::File>);

impl AsyncFdReader {
    fn new(f: std::fs::File) -> io::Result<Self> {
        // SAFETY: the AsyncFd owns the file, so the descriptor stays open while registered.
        Ok(AsyncFdReader(unsafe {
            tokio::io::unix::AsyncFd::register(f)?
        }))
    }
}

impl tokio::io::AsyncRead for AsyncFdReader {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        use std::io::Read;
        loop {
            let mut guard = std::task::ready!(self.0.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            match guard.try_io(|inner| inner.get_ref().read(unfilled)) {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return std::task::Poll::Ready(Ok(()));
                }
                Ok(Err(e)) => return std::task::Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

impl tokio::io::AsyncWrite for AsyncFdReader {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        use std::io::Write;
        loop {
            let mut guard = std::task::ready!(self.0.poll_write_ready(cx))?;
            match guard.try_io(|inner| inner.get_ref().write(buf)) {
                Ok(r) => return std::task::Poll::Ready(r),
                Err(_would_block) => continue,
            }
        }
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

//! Attach (`crictl attach`, `kubectl attach`, `kubectl run -i`): the container's own
//! output as it comes, and its stdin.
//!
//! The output is read from the container's CRI log, which the shim writes every
//! line of: a [`LogFollower`] starts at the log's end and returns the text of each
//! new entry (a rotated log, ReopenContainerLog, is followed to the new file). So
//! attaching costs the shim nothing, the log keeps every line while someone is
//! attached, and any number of clients can attach. Stdin goes into the container's
//! stdin FIFO (made at start when the config asks for stdin); with `stdin_once` the
//! first attach that ends closes it for the container.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use std::sync::Arc;

use super::{Containers, STDIN_FIFO};
use crate::error::{Error, Result};
use crate::task::TaskRuntime;

/// A running container to attach to.
pub struct AttachTarget {
    pub id: String,
    /// Its CRI log, when it has one.
    pub log_path: Option<PathBuf>,
    /// Its stdin FIFO, when it was created with stdin.
    pub stdin_fifo: Option<PathBuf>,
    pub tty: bool,
    pub stdin_once: bool,
    shim: Arc<dyn TaskRuntime>,
}

impl Containers {
    /// The running container `id` (or unique prefix) for an attach.
    pub async fn attach_target(&self, id: &str) -> Result<AttachTarget> {
        let (rec, shim) = self.running(id).await?;
        Ok(AttachTarget {
            stdin_fifo: rec.config.stdin.then(|| rec.bundle.join(STDIN_FIFO)),
            log_path: rec.log_path.clone(),
            tty: rec.config.tty,
            stdin_once: rec.config.stdin_once,
            id: rec.id,
            shim,
        })
    }
}

impl AttachTarget {
    /// Waits for the container's process to end: its exit code.
    pub async fn wait(&self) -> Result<i32> {
        Ok(self.shim.wait(&self.id, "").await?.exit_status as i32)
    }

    pub async fn resize(&self, width: u16, height: u16) -> Result<()> {
        self.shim
            .resize_pty(&self.id, "", u32::from(width), u32::from(height))
            .await?;
        Ok(())
    }

    /// Closes the container's stdin (`stdin_once`).
    pub async fn close_stdin(&self) -> Result<()> {
        self.shim.close_stdin(&self.id, "").await?;
        Ok(())
    }
}

/// Follows a CRI log from where it ends now, returning the text of new entries of
/// the streams asked for (a full entry's text with its newline, a partial one's
/// without).
pub struct LogFollower {
    path: PathBuf,
    file: Option<File>,
    ino: u64,
    offset: u64,
    stdout: bool,
    stderr: bool,
    /// The start of a line whose newline has not been written yet.
    line: Vec<u8>,
}

impl LogFollower {
    /// Starts at the current end of `path` (or its start once it exists).
    pub fn new(path: PathBuf, stdout: bool, stderr: bool) -> LogFollower {
        let mut f = LogFollower {
            path,
            file: None,
            ino: 0,
            offset: 0,
            stdout,
            stderr,
            line: Vec::new(),
        };
        if let Ok(file) = File::open(&f.path)
            && let Ok(md) = file.metadata()
        {
            f.ino = md.ino();
            f.offset = md.len();
            f.file = Some(file);
        }
        f
    }

    /// Appends the text of the entries written since the last call to `out`.
    pub fn poll(&mut self, out: &mut Vec<u8>) -> io::Result<()> {
        if self.file.is_some() {
            self.read_rest(out)?;
        }
        // Rotated (a new file at the path) or truncated: go on with the new one.
        match std::fs::metadata(&self.path) {
            Ok(md) if self.file.is_none() || md.ino() != self.ino || md.len() < self.offset => {
                let file = File::open(&self.path)?;
                self.ino = md.ino();
                self.offset = 0;
                self.line.clear();
                self.file = Some(file);
                self.read_rest(out)
            }
            _ => Ok(()),
        }
    }

    fn read_rest(&mut self, out: &mut Vec<u8>) -> io::Result<()> {
        let Some(file) = self.file.as_mut() else {
            return Ok(());
        };
        file.seek(SeekFrom::Start(self.offset))?;
        let mut new = Vec::new();
        self.offset += file.read_to_end(&mut new)? as u64;
        self.line.extend_from_slice(&new);
        let mut start = 0;
        while let Some(nl) = self.line[start..].iter().position(|&b| b == b'\n') {
            let entry = &self.line[start..start + nl];
            if let Some((stream, partial, text)) = crust_crilog::parse_entry(entry) {
                let wanted = match stream {
                    crust_crilog::Stream::Stdout => self.stdout,
                    crust_crilog::Stream::Stderr => self.stderr,
                };
                if wanted {
                    out.extend_from_slice(text);
                    if !partial {
                        out.push(b'\n');
                    }
                }
            }
            start += nl + 1;
        }
        self.line.drain(..start);
        Ok(())
    }
}

/// Wakes a follower when its log may have grown: an inotify watch on the log's
/// directory (writes to the file, and a rotated file created or moved in).
pub struct LogChanges {
    fd: tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>,
}

impl LogChanges {
    /// Watches the directory of `log`. An error when inotify is unavailable (no
    /// instances or watches left): the caller then polls.
    pub fn new(log: &std::path::Path) -> io::Result<LogChanges> {
        use std::os::fd::FromRawFd;
        use std::os::unix::ffi::OsStrExt;
        let dir = log
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(std::path::Path::new("."));
        let dir = std::ffi::CString::new(dir.as_os_str().as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in log path"))?;
        // SAFETY: plain syscalls; the fd is owned right after it is made.
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
        let mask = libc::IN_MODIFY | libc::IN_CREATE | libc::IN_MOVED_TO | libc::IN_CLOSE_WRITE;
        // SAFETY: valid fd and NUL-terminated path.
        if unsafe {
            libc::inotify_add_watch(std::os::fd::AsRawFd::as_raw_fd(&fd), dir.as_ptr(), mask)
        } < 0
        {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: an OwnedFd, owned by the AsyncFd until it drops: open and the same all along.
        let fd = unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE)
        }
        .map_err(io::Error::from)?;
        Ok(LogChanges { fd })
    }

    /// Returns once something changed in the log's directory since the last call (at
    /// once when it already has), the events read and dropped.
    pub async fn changed(&self) -> io::Result<()> {
        loop {
            let mut ready = self.fd.readable().await?;
            let mut buf = [0u8; 4096];
            let mut got = false;
            loop {
                // SAFETY: reads into a buffer of its own size.
                let n = unsafe {
                    libc::read(
                        std::os::fd::AsRawFd::as_raw_fd(self.fd.get_ref()),
                        buf.as_mut_ptr().cast(),
                        buf.len(),
                    )
                };
                if n > 0 {
                    got = true;
                    continue;
                }
                let e = io::Error::last_os_error();
                if n < 0 && e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                if n < 0 && e.kind() != io::ErrorKind::WouldBlock {
                    return Err(e);
                }
                break;
            }
            ready.clear_ready();
            if got {
                return Ok(());
            }
        }
    }
}

/// The error for an attach to a container without a CRI log.
pub fn no_log(id: &str) -> Error {
    Error::FailedPrecondition(format!(
        "container {id} has no CRI log (no log_path): its output cannot be attached to"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crust_crilog::{Stream, format_entry};
    use std::io::Write;
    use std::time::SystemTime;

    fn append(path: &std::path::Path, stream: Stream, partial: bool, text: &[u8]) {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        f.write_all(&format_entry(SystemTime::now(), stream, partial, text))
            .unwrap();
    }

    #[test]
    fn follows_new_entries_of_its_streams_across_a_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("0.log");
        append(&log, Stream::Stdout, false, b"before the attach");
        let mut f = LogFollower::new(log.clone(), true, false);
        let mut out = Vec::new();
        f.poll(&mut out).unwrap();
        assert!(out.is_empty(), "starts at the end");
        append(&log, Stream::Stdout, true, b"par");
        append(&log, Stream::Stderr, false, b"not wanted");
        append(&log, Stream::Stdout, false, b"tial");
        // Half a line: only the whole ones come out.
        std::fs::OpenOptions::new()
            .append(true)
            .open(&log)
            .unwrap()
            .write_all(b"2026-12-02T00:00:00Z stdout F cut")
            .unwrap();
        f.poll(&mut out).unwrap();
        assert_eq!(out, b"partial\n");
        std::fs::OpenOptions::new()
            .append(true)
            .open(&log)
            .unwrap()
            .write_all(b" here\n")
            .unwrap();
        out.clear();
        f.poll(&mut out).unwrap();
        assert_eq!(out, b"cut here\n");
        // kubelet rotates: the file is renamed and a new one made.
        std::fs::rename(&log, dir.path().join("0.log.1")).unwrap();
        append(&log, Stream::Stdout, false, b"after rotation");
        out.clear();
        f.poll(&mut out).unwrap();
        assert_eq!(out, b"after rotation\n");
    }

    #[tokio::test]
    async fn changes_wake_on_a_write_and_on_a_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        append(&path, Stream::Stdout, false, b"before");
        let changes = LogChanges::new(&path).unwrap();
        let mut f = LogFollower::new(path.clone(), true, true);
        let soon = std::time::Duration::from_secs(5);
        // Nothing yet: no wake within a short while.
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(100), changes.changed())
                .await
                .is_err()
        );
        append(&path, Stream::Stdout, false, b"one");
        tokio::time::timeout(soon, changes.changed())
            .await
            .unwrap()
            .unwrap();
        let mut out = Vec::new();
        f.poll(&mut out).unwrap();
        assert_eq!(out, b"one\n");
        // Rotation: a new file moved in at the path.
        let next = dir.path().join("0.log.new");
        append(&next, Stream::Stderr, false, b"two");
        std::fs::rename(&next, &path).unwrap();
        tokio::time::timeout(soon, changes.changed())
            .await
            .unwrap()
            .unwrap();
        out.clear();
        f.poll(&mut out).unwrap();
        assert_eq!(out, b"two\n");
    }
}

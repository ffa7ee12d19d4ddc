//! crustd's side of a containerd-style shim's output (see [`super::ShimFlavour`]).
//!
//! Such a shim copies a container's stdout/stderr into FIFOs and writes no CRI log (in
//! containerd, the CRI plugin copies the FIFOs into the log). crustd does the same here with
//! the shared CRI log writer (`crust-crilog`): `<bundle>/io/stdout` and `io/stderr` are made
//! before the task is created, read by a copier per stream until the shim closes its end.
//!
//! A FIFO reads as ended while no writer has it open, and the shim opens its end in the
//! background of `Create`: until the container's init has exited, the copier keeps a writer
//! of its own (the *placeholder*), so only the shim's close ends the copy. After a crustd
//! restart the FIFOs are opened again ([`follow`] without placeholder); output written while
//! crustd was down waits in the pipe (a full pipe blocks the container, as with containerd).
//!
//! The shim's own log (`<pod dir>/log`, a FIFO its logger blocks on until someone reads it)
//! is followed the same way into `<pod dir>/shim.log`.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex};

use crust_crilog::{LogFile, Stream, copy_to_log};
use tokio::net::unix::pipe;

use super::ShimClient;

/// The CRI log files crustd writes, by container id (for ReopenContainerLog).
static LOGS: LazyLock<Mutex<HashMap<String, Arc<Mutex<LogFile>>>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

fn logs() -> std::sync::MutexGuard<'static, HashMap<String, Arc<Mutex<LogFile>>>> {
    LOGS.lock().unwrap_or_else(|p| p.into_inner())
}

/// The FIFO paths of a container's output in its bundle: stdout, and stderr unless a tty.
pub(super) fn fifo_paths(bundle: &Path, terminal: bool) -> (PathBuf, Option<PathBuf>) {
    let dir = bundle.join("io");
    (dir.join("stdout"), (!terminal).then(|| dir.join("stderr")))
}

fn mkfifo(path: &Path) -> io::Result<()> {
    match nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o600)) {
        Ok(()) | Err(nix::errno::Errno::EEXIST) => Ok(()),
        Err(e) => Err(io::Error::from(e)),
    }
}

/// Opens a FIFO for reading without waiting for a writer, and (with `placeholder`) a writer
/// of crustd's own that keeps it from reading as ended until dropped.
fn open_fifo(path: &Path, placeholder: bool) -> io::Result<(pipe::Receiver, Option<pipe::Sender>)> {
    let rx = pipe::OpenOptions::new().open_receiver(path)?;
    let tx = if placeholder {
        Some(pipe::OpenOptions::new().open_sender(path)?)
    } else {
        None
    };
    Ok((rx, tx))
}

/// The placeholder writers of a container's output FIFOs, held until its init exited.
pub(super) struct Placeholders {
    /// Only held: dropping them is what counts.
    _writers: Vec<pipe::Sender>,
}

impl Placeholders {
    /// Once the task exists in the shim: drops the placeholders when the shim reports the
    /// init's exit (or the task or shim is gone), after which the shim's own end decides
    /// when the output ends. Dropping `self` instead (the create failed) ends the copy now.
    pub(super) fn release_after_exit(self, client: &ShimClient, id: &str) {
        let (client, id) = (client.clone(), id.to_string());
        tokio::spawn(async move {
            let _ = client.wait(&id, "").await;
            drop(self);
        });
    }
}

/// Makes the output FIFOs of container `id` and starts copying them into `log_path`.
/// Returns the FIFO paths for the create request and the placeholders.
pub(super) fn start(
    id: &str,
    bundle: &Path,
    log_path: &Path,
    terminal: bool,
) -> io::Result<(PathBuf, Option<PathBuf>, Placeholders)> {
    let (out, err) = fifo_paths(bundle, terminal);
    crust_state::private::create_dir(&bundle.join("io"))?;
    for p in std::iter::once(&out).chain(err.as_ref()) {
        mkfifo(p)?;
    }
    let placeholders = spawn(id, log_path, &out, err.as_deref(), true)?;
    Ok((out, err, placeholders))
}

/// After a crustd restart: copies the output of a container whose FIFOs exist and that no
/// copier follows yet. Anything else is a no-op.
pub(super) fn follow(id: &str, bundle: &Path, log_path: &Path) {
    if logs().contains_key(id) {
        return;
    }
    let stderr = bundle.join("io/stderr");
    let (out, err) = fifo_paths(bundle, !stderr.exists());
    if !out.exists() {
        return;
    }
    if let Err(e) = spawn(id, log_path, &out, err.as_deref(), false) {
        tracing::warn!(container = %id, error = %e, "following the container's output");
    }
}

fn spawn(
    id: &str,
    log_path: &Path,
    out: &Path,
    err: Option<&Path>,
    placeholder: bool,
) -> io::Result<Placeholders> {
    let log = Arc::new(Mutex::new(LogFile::open(log_path)?));
    let mut copies = Vec::new();
    let mut placeholders = Vec::new();
    for (stream, path) in [(Stream::Stdout, Some(out)), (Stream::Stderr, err)] {
        let Some(path) = path else { continue };
        let (rx, tx) = open_fifo(path, placeholder)?;
        placeholders.extend(tx);
        copies.push(tokio::spawn(copy_to_log(rx, stream, log.clone())));
    }
    logs().insert(id.to_string(), log.clone());
    let id = id.to_string();
    tokio::spawn(async move {
        for c in copies {
            let _ = c.await;
        }
        let mut logs = logs();
        if logs.get(&id).is_some_and(|l| Arc::ptr_eq(l, &log)) {
            logs.remove(&id);
        }
    });
    Ok(Placeholders {
        _writers: placeholders,
    })
}

/// Reopens the CRI log crustd writes for container `id` (ReopenContainerLog). `None` when
/// crustd writes no log for it.
pub(super) fn reopen(id: &str) -> Option<io::Result<()>> {
    let log = logs().get(id).cloned()?;
    let r = log.lock().unwrap_or_else(|p| p.into_inner()).reopen();
    Some(r)
}

/// Makes the shim's `log` FIFO in `pod_dir` and copies what the shim logs into
/// `pod_dir/shim.log` until the shim closes it. Returns the placeholder writer (keep it
/// until the shim answered, so the copy does not end before the shim opened its end).
pub(super) fn follow_shim_log(
    pod_dir: &Path,
    placeholder: bool,
) -> io::Result<Option<pipe::Sender>> {
    let fifo = pod_dir.join("log");
    mkfifo(&fifo)?;
    let (mut rx, tx) = open_fifo(&fifo, placeholder)?;
    let target = pod_dir.join("shim.log");
    tokio::spawn(async move {
        let file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&target)
            .await;
        match file {
            Ok(mut f) => {
                let _ = tokio::io::copy(&mut rx, &mut f).await;
            }
            Err(e) => {
                tracing::warn!(path = %target.display(), error = %e, "shim log");
                // Keep reading so the shim never blocks on its log.
                let _ = tokio::io::copy(&mut rx, &mut tokio::io::sink()).await;
            }
        }
    });
    Ok(tx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_fifo_with_a_placeholder_ends_only_when_every_writer_closed() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("f");
        mkfifo(&path).unwrap();
        mkfifo(&path).unwrap(); // twice is fine
        let (rx, tx) = open_fifo(&path, true).unwrap();
        let log_path = d.path().join("c.log");
        let log = Arc::new(Mutex::new(LogFile::open(&log_path).unwrap()));
        let copy = tokio::spawn(copy_to_log(rx, Stream::Stdout, log));
        // The "shim" opens, writes and closes; the placeholder keeps the copy going.
        let mut w = pipe::OpenOptions::new().open_sender(&path).unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut w, b"hello\npart")
            .await
            .unwrap();
        drop(w);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!copy.is_finished());
        drop(tx);
        tokio::time::timeout(std::time::Duration::from_secs(5), copy)
            .await
            .unwrap()
            .unwrap();
        let text = std::fs::read_to_string(&log_path).unwrap();
        let lines: Vec<&str> = text.lines().map(|l| l.split_once(' ').unwrap().1).collect();
        assert_eq!(lines, ["stdout F hello", "stdout F part"]);
    }

    #[test]
    fn fifo_paths_per_terminal() {
        let (o, e) = fifo_paths(Path::new("/b"), false);
        assert_eq!(o, Path::new("/b/io/stdout"));
        assert_eq!(e.as_deref(), Some(Path::new("/b/io/stderr")));
        assert_eq!(fifo_paths(Path::new("/b"), true).1, None);
    }
}

//! The CRI container log format, shared by the writers of container logs: crust-shim
//! (which writes its containers' logs itself) and crustd (which copies the stdout/stderr
//! FIFOs of a foreign shim v2, e.g. containerd-shim-runc-v2, into the log).
//!
//! Every entry is one line: `<RFC3339Nano time> <stdout|stderr> <F|P> <text>\n`.
//! A line longer than [`MAX_LINE`] bytes is split into `P` (partial) entries of
//! [`MAX_LINE`] bytes followed by one `F` (full) entry with the rest. When a
//! stream ends with text that has no trailing newline, that text is written as
//! an `F` entry (containerd does the same).

use std::{
    fs::{File, OpenOptions},
    io::{self, Write},
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{SystemTime, UNIX_EPOCH},
};

/// Longest text in one entry (containerd's default `max_container_log_line_size`).
pub const MAX_LINE: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// Formats a time as RFC 3339 in UTC with nine fractional digits,
/// e.g. `2024-05-01T10:11:12.000000123Z` (parses as Go's RFC3339Nano).
pub fn rfc3339_nano(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, day) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60,
        d.subsec_nanos()
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// One complete log entry, newline-terminated.
pub fn format_entry(time: SystemTime, stream: Stream, partial: bool, text: &[u8]) -> Vec<u8> {
    let ts = rfc3339_nano(time);
    let mut out = Vec::with_capacity(ts.len() + text.len() + 12);
    out.extend_from_slice(ts.as_bytes());
    out.push(b' ');
    out.extend_from_slice(stream.as_str().as_bytes());
    out.extend_from_slice(if partial { b" P " } else { b" F " });
    out.extend_from_slice(text);
    out.push(b'\n');
    out
}

/// The parts of one entry (a line of a CRI log without its newline), as
/// [`format_entry`] writes them: stream, whether it is partial, and the text.
/// `None` for a line that is not an entry.
pub fn parse_entry(line: &[u8]) -> Option<(Stream, bool, &[u8])> {
    let mut parts = line.splitn(4, |&b| b == b' ');
    let _time = parts.next().filter(|t| !t.is_empty())?;
    let stream = match parts.next()? {
        b"stdout" => Stream::Stdout,
        b"stderr" => Stream::Stderr,
        _ => return None,
    };
    let partial = match parts.next()? {
        b"P" => true,
        b"F" => false,
        _ => return None,
    };
    Some((stream, partial, parts.next().unwrap_or_default()))
}

/// Cuts one stream's bytes into log entries.
#[derive(Debug)]
pub struct LineSplitter {
    stream: Stream,
    buf: Vec<u8>,
}

impl LineSplitter {
    pub fn new(stream: Stream) -> Self {
        LineSplitter {
            stream,
            buf: Vec::new(),
        }
    }

    /// Feeds bytes; `emit(stream, partial, text)` is called for every finished entry.
    pub fn push(&mut self, data: &[u8], emit: &mut impl FnMut(Stream, bool, &[u8])) {
        self.buf.extend_from_slice(data);
        let mut start = 0;
        loop {
            let pending = &self.buf[start..];
            // A newline within the first MAX_LINE+1 bytes ends a full entry.
            let window = &pending[..pending.len().min(MAX_LINE + 1)];
            if let Some(i) = window.iter().position(|&b| b == b'\n') {
                emit(self.stream, false, &pending[..i]);
                start += i + 1;
            } else if pending.len() > MAX_LINE {
                emit(self.stream, true, &pending[..MAX_LINE]);
                start += MAX_LINE;
            } else {
                break;
            }
        }
        self.buf.drain(..start);
    }

    /// The stream ended: a pending partial line becomes a full entry.
    pub fn finish(&mut self, emit: &mut impl FnMut(Stream, bool, &[u8])) {
        if !self.buf.is_empty() {
            emit(self.stream, false, &self.buf);
            self.buf.clear();
        }
    }
}

/// The container's log file; shared by its stdout and stderr copiers, reopenable.
#[derive(Debug)]
pub struct LogFile {
    path: PathBuf,
    file: Option<File>,
}

fn open_log(path: &Path) -> io::Result<File> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
}

impl LogFile {
    pub fn open(path: impl Into<PathBuf>) -> io::Result<Self> {
        let path = path.into();
        let file = open_log(&path)?;
        Ok(LogFile {
            path,
            file: Some(file),
        })
    }

    /// Closes the file and opens `path` again (after the kubelet renamed it for rotation).
    pub fn reopen(&mut self) -> io::Result<()> {
        self.file = None;
        self.file = Some(open_log(&self.path)?);
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes one entry with a single `write` so stdout and stderr entries never interleave.
    pub fn write_entry(&mut self, stream: Stream, partial: bool, text: &[u8]) -> io::Result<()> {
        let entry = format_entry(SystemTime::now(), stream, partial, text);
        match self.file.as_mut() {
            Some(f) => f.write_all(&entry),
            None => Ok(()),
        }
    }
}

/// Copies one output stream into the CRI log until EOF (or a read error such as EIO on a
/// pty master whose slave side is gone); a last line without newline is written as `F`.
/// Failed writes are logged once per copier, not per entry.
pub async fn copy_to_log(
    mut from: impl tokio::io::AsyncRead + Unpin,
    stream: Stream,
    log: Arc<Mutex<LogFile>>,
) {
    use tokio::io::AsyncReadExt;
    let mut split = LineSplitter::new(stream);
    let mut buf = vec![0u8; 16 * 1024];
    let mut warned = false;
    let mut emit = |s: Stream, partial: bool, text: &[u8]| {
        let mut f = log.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = f.write_entry(s, partial, text)
            && !warned
        {
            warned = true;
            log::warn!("write to container log {}: {e}", f.path().display());
        }
    };
    loop {
        match from.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => split.push(&buf[..n], &mut emit),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
    }
    split.finish(&mut emit);
}

#[cfg(test)]
mod fuzz;

#[cfg(test)]
mod entry_tests {
    use super::*;

    #[test]
    fn entries_parse_back() {
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(1_700_000_000_123);
        for (stream, partial, text) in [
            (Stream::Stdout, false, &b"hello world"[..]),
            (Stream::Stderr, true, b"  spaces  kept "),
            (Stream::Stdout, false, b""),
        ] {
            let e = format_entry(t, stream, partial, text);
            let line = &e[..e.len() - 1];
            assert_eq!(parse_entry(line), Some((stream, partial, text)));
        }
        assert_eq!(parse_entry(b"garbage"), None);
        assert_eq!(parse_entry(b"2020 stdin F x"), None);
        assert_eq!(parse_entry(b"2020 stdout X x"), None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(s: &mut LineSplitter, data: &[u8], out: &mut Vec<(Stream, bool, Vec<u8>)>) {
        s.push(data, &mut |st, p, t| out.push((st, p, t.to_vec())));
    }

    #[test]
    fn time_format_is_rfc3339_nano_utc() {
        let t = UNIX_EPOCH + std::time::Duration::new(1_700_000_000, 5);
        assert_eq!(rfc3339_nano(t), "2023-11-14T22:13:20.000000005Z");
        assert_eq!(rfc3339_nano(UNIX_EPOCH), "1970-01-01T00:00:00.000000000Z");
        let leap = UNIX_EPOCH + std::time::Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(rfc3339_nano(leap), "2000-02-29T00:00:00.000000000Z");
    }

    #[test]
    fn entry_format() {
        let t = UNIX_EPOCH + std::time::Duration::new(1_700_000_000, 123_456_789);
        let e = format_entry(t, Stream::Stderr, false, b"hello world");
        assert_eq!(
            String::from_utf8(e).unwrap(),
            "2023-11-14T22:13:20.123456789Z stderr F hello world\n"
        );
        let e = format_entry(t, Stream::Stdout, true, b"");
        assert_eq!(
            String::from_utf8(e).unwrap(),
            "2023-11-14T22:13:20.123456789Z stdout P \n"
        );
    }

    #[test]
    fn lines_across_chunks() {
        let mut s = LineSplitter::new(Stream::Stdout);
        let mut out = Vec::new();
        collect(&mut s, b"ab", &mut out);
        assert!(out.is_empty());
        collect(&mut s, b"c\n\nde\nf", &mut out);
        assert_eq!(
            out,
            vec![
                (Stream::Stdout, false, b"abc".to_vec()),
                (Stream::Stdout, false, b"".to_vec()),
                (Stream::Stdout, false, b"de".to_vec()),
            ]
        );
        out.clear();
        s.finish(&mut |st, p, t| out.push((st, p, t.to_vec())));
        assert_eq!(out, vec![(Stream::Stdout, false, b"f".to_vec())]);
        out.clear();
        s.finish(&mut |st, p, t| out.push((st, p, t.to_vec())));
        assert!(out.is_empty(), "finish twice emits nothing");
    }

    #[test]
    fn long_line_split_into_partials() {
        let mut s = LineSplitter::new(Stream::Stderr);
        let mut out = Vec::new();
        let mut line = vec![b'x'; MAX_LINE * 2 + 10];
        line.push(b'\n');
        // Feed in odd-sized chunks.
        for chunk in line.chunks(1000) {
            collect(&mut s, chunk, &mut out);
        }
        assert_eq!(out.len(), 3);
        assert!(out[0].1 && out[1].1 && !out[2].1);
        assert_eq!(out[0].2.len(), MAX_LINE);
        assert_eq!(out[1].2.len(), MAX_LINE);
        assert_eq!(out[2].2.len(), 10);
    }

    #[test]
    fn line_of_exactly_max_is_one_full_entry() {
        let mut s = LineSplitter::new(Stream::Stdout);
        let mut out = Vec::new();
        collect(&mut s, &vec![b'y'; MAX_LINE], &mut out);
        assert!(out.is_empty());
        collect(&mut s, b"\nz\n", &mut out);
        assert_eq!(out.len(), 2);
        assert_eq!((out[0].1, out[0].2.len()), (false, MAX_LINE));
        assert_eq!(out[1].2, b"z");
    }

    #[test]
    fn long_partial_last_line_on_close() {
        let mut s = LineSplitter::new(Stream::Stdout);
        let mut out = Vec::new();
        collect(&mut s, &vec![b'q'; MAX_LINE + 5], &mut out);
        assert_eq!(out.len(), 1);
        assert!(out[0].1);
        s.finish(&mut |st, p, t| out.push((st, p, t.to_vec())));
        assert_eq!(out.len(), 2);
        assert_eq!((out[1].1, out[1].2.len()), (false, 5));
    }

    #[tokio::test]
    async fn copies_a_stream_into_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.log");
        let log = Arc::new(Mutex::new(LogFile::open(&path).unwrap()));
        let input: &[u8] = b"one\ntwo\nlast";
        copy_to_log(input, Stream::Stderr, log).await;
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().map(|l| l.split_once(' ').unwrap().1).collect();
        assert_eq!(lines, ["stderr F one", "stderr F two", "stderr F last"]);
    }

    #[test]
    fn log_file_writes_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/c.log");
        let mut f = LogFile::open(&path).unwrap();
        f.write_entry(Stream::Stdout, false, b"one").unwrap();
        let rotated = dir.path().join("sub/c.log.1");
        std::fs::rename(&path, &rotated).unwrap();
        f.write_entry(Stream::Stdout, false, b"two").unwrap();
        f.reopen().unwrap();
        f.write_entry(Stream::Stderr, true, b"three").unwrap();
        let old = std::fs::read_to_string(&rotated).unwrap();
        let new = std::fs::read_to_string(&path).unwrap();
        assert!(old.ends_with(" stdout F two\n"), "{old}");
        assert_eq!(old.lines().count(), 2);
        assert_eq!(new.lines().count(), 1);
        assert!(new.ends_with(" stderr P three\n"), "{new}");
    }
}

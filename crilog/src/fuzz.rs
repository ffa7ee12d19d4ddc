//! Property-based fuzzing of the CRI log format (docs/testing.md, "Fuzzing"):
//! the line splitter on arbitrary bytes in arbitrary chunks, and entries read back
//! by a reader written here to the format's definition (crust only writes logs;
//! kubelet reads them).
//!
//! `PROPTEST_CASES` overrides the bounded CI number of cases, e.g.
//! `PROPTEST_CASES=100000 cargo test -p crust-crilog --lib fuzz`. Failures are not
//! persisted: each becomes a plain regression test.

use super::*;
use proptest::prelude::*;
use proptest::test_runner::Config;
use std::time::Duration;

fn config(cases: u32) -> Config {
    Config {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(cases),
        failure_persistence: None,
        ..Config::default()
    }
}

/// Days since 1970-01-01 of a civil date (Hinnant's `days_from_civil`), to check
/// `civil_from_days` against.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// One entry read back: (seconds, nanoseconds, stream, partial, text).
fn parse_entry(line: &[u8]) -> Option<(u64, u32, Stream, bool, &[u8])> {
    let line = line.strip_suffix(b"\n")?;
    let sp = line.iter().position(|&b| b == b' ')?;
    let ts = std::str::from_utf8(&line[..sp]).ok()?;
    let rest = &line[sp + 1..];
    let (stream, rest) = if let Some(r) = rest.strip_prefix(b"stdout ") {
        (Stream::Stdout, r)
    } else {
        (Stream::Stderr, rest.strip_prefix(b"stderr ")?)
    };
    let (partial, text) = match rest {
        [b'P', b' ', t @ ..] => (true, t),
        [b'F', b' ', t @ ..] => (false, t),
        _ => return None,
    };
    // YYYY-MM-DDTHH:MM:SS.NNNNNNNNNZ
    let b = ts.as_bytes();
    if b.len() != 30
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[19] != b'.'
        || b[29] != b'Z'
    {
        return None;
    }
    let num = |r: std::ops::Range<usize>| ts[r].parse::<i64>().ok();
    let days = days_from_civil(num(0..4)?, num(5..7)?, num(8..10)?);
    let secs = days * 86_400 + num(11..13)? * 3600 + num(14..16)? * 60 + num(17..19)?;
    Some((
        u64::try_from(secs).ok()?,
        num(20..29)? as u32,
        stream,
        partial,
        text,
    ))
}

/// Chunks with newlines now and then, and long runs that cross `MAX_LINE`.
fn chunks() -> impl Strategy<Value = Vec<Vec<u8>>> {
    let chunk = prop_oneof![
        4 => prop::collection::vec(prop_oneof![any::<u8>(), Just(b'\n')], 0..64),
        1 => (0..3 * MAX_LINE, any::<u8>(), any::<bool>()).prop_map(|(n, b, nl)| {
            let mut v = vec![b; n];
            if nl {
                v.push(b'\n');
            }
            v
        }),
        1 => (MAX_LINE - 2..MAX_LINE + 2).prop_map(|n| {
            let mut v = vec![b'x'; n];
            v.push(b'\n');
            v
        }),
    ];
    prop::collection::vec(chunk, 0..8)
}

proptest! {
    #![proptest_config(config(2000))]

    #[test]
    fn splitter_entries_rebuild_the_stream(chunks in chunks(), stderr in any::<bool>()) {
        let stream = if stderr { Stream::Stderr } else { Stream::Stdout };
        let mut s = LineSplitter::new(stream);
        let mut entries: Vec<(bool, Vec<u8>)> = Vec::new();
        let mut emit = |st: Stream, partial: bool, text: &[u8]| {
            assert_eq!(st, stream);
            entries.push((partial, text.to_vec()));
        };
        for c in &chunks {
            s.push(c, &mut emit);
        }
        s.finish(&mut emit);
        let input: Vec<u8> = chunks.concat();
        let mut rebuilt = Vec::new();
        for (partial, text) in &entries {
            prop_assert!(!text.contains(&b'\n'));
            prop_assert!(text.len() <= MAX_LINE);
            if *partial {
                prop_assert_eq!(text.len(), MAX_LINE);
            }
            rebuilt.extend_from_slice(text);
            if !partial {
                rebuilt.push(b'\n');
            }
        }
        // The last entry of a stream that does not end in a newline came from finish.
        if !input.ends_with(b"\n") && !input.is_empty() {
            prop_assert_eq!(rebuilt.pop(), Some(b'\n'));
        }
        prop_assert!(entries.last().is_none_or(|(p, _)| !p), "a stream ends with a full entry");
        prop_assert_eq!(rebuilt, input);
    }

    #[test]
    fn entries_read_back(
        secs in 0u64..253_402_300_800, // up to 9999-12-31
        nanos in 0u32..1_000_000_000,
        stderr in any::<bool>(),
        partial in any::<bool>(),
        text in prop::collection::vec(any::<u8>(), 0..200),
    ) {
        let t = UNIX_EPOCH + Duration::new(secs, nanos);
        let stream = if stderr { Stream::Stderr } else { Stream::Stdout };
        let line = format_entry(t, stream, partial, &text);
        let got = parse_entry(&line);
        prop_assert_eq!(got, Some((secs, nanos, stream, partial, &text[..])));
    }

    #[test]
    fn civil_dates_are_exact(days in -1_000_000i64..1_000_000) {
        let (y, m, d) = civil_from_days(days);
        prop_assert!((1..=12).contains(&m) && (1..=31).contains(&d));
        prop_assert_eq!(days_from_civil(y, i64::from(m), i64::from(d)), days);
    }

    #[test]
    fn arbitrary_times_format(secs in any::<u64>(), nanos in 0u32..1_000_000_000) {
        if let Some(t) = UNIX_EPOCH.checked_add(Duration::new(secs, nanos)) {
            let s = rfc3339_nano(t);
            prop_assert!(s.ends_with('Z'));
        }
    }
}

/// A reader that hands out its chunks one `read` at a time.
struct Chunked(std::collections::VecDeque<Vec<u8>>);

impl tokio::io::AsyncRead for Chunked {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        while let Some(mut c) = self.0.pop_front() {
            if c.is_empty() {
                continue;
            }
            let n = c.len().min(buf.remaining());
            buf.put_slice(&c[..n]);
            if n < c.len() {
                self.0.push_front(c.split_off(n));
            }
            break;
        }
        std::task::Poll::Ready(Ok(()))
    }
}

proptest! {
    #![proptest_config(config(200))]

    /// What `copy_to_log` writes reads back, entry by entry, as the stream it copied.
    #[test]
    fn copied_streams_read_back(chunks in chunks()) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.log");
        let log = Arc::new(Mutex::new(LogFile::open(&path).unwrap()));
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(copy_to_log(Chunked(chunks.clone().into()), Stream::Stderr, log));
        let text = std::fs::read(&path).unwrap();
        let input = chunks.concat();
        let mut rebuilt = Vec::new();
        for line in text.split_inclusive(|&b| b == b'\n') {
            let (_, _, stream, partial, t) = parse_entry(line).expect("an entry");
            prop_assert_eq!(stream, Stream::Stderr);
            rebuilt.extend_from_slice(t);
            if !partial {
                rebuilt.push(b'\n');
            }
        }
        if !input.is_empty() && !input.ends_with(b"\n") {
            prop_assert_eq!(rebuilt.pop(), Some(b'\n'));
        }
        prop_assert_eq!(rebuilt, input);
    }
}

//! PAX extended header records (`%d key=value\n`), as POSIX.1-2001 defines them and
//! Go's `archive/tar` reads them, including GNU's sparse-file records.

use super::bad;
use std::collections::BTreeMap;
use std::io;

pub(super) const PATH: &[u8] = b"path";
pub(super) const LINKPATH: &[u8] = b"linkpath";
pub(super) const SIZE: &[u8] = b"size";
pub(super) const UID: &[u8] = b"uid";
pub(super) const GID: &[u8] = b"gid";
pub(super) const MTIME: &[u8] = b"mtime";
pub(super) const ATIME: &[u8] = b"atime";
pub(super) const XATTR_PREFIX: &[u8] = b"SCHILY.xattr.";
pub(super) const SPARSE_MAJOR: &[u8] = b"GNU.sparse.major";
pub(super) const SPARSE_MINOR: &[u8] = b"GNU.sparse.minor";
pub(super) const SPARSE_NAME: &[u8] = b"GNU.sparse.name";
pub(super) const SPARSE_SIZE: &[u8] = b"GNU.sparse.size";
pub(super) const SPARSE_REALSIZE: &[u8] = b"GNU.sparse.realsize";
pub(super) const SPARSE_NUMBLOCKS: &[u8] = b"GNU.sparse.numblocks";
const SPARSE_OFFSET: &[u8] = b"GNU.sparse.offset";
const SPARSE_NUMBYTES: &[u8] = b"GNU.sparse.numbytes";
/// Where the repeated 0.0 offset/numbytes records are joined (as 0.1 writes them).
pub(super) const SPARSE_MAP: &[u8] = b"GNU.sparse.map";

/// The records of one extended header; a later record of a key replaces an earlier one.
pub(super) type Records = BTreeMap<Vec<u8>, Vec<u8>>;

/// Parses the data of an `x` or `g` header.
pub(super) fn parse(mut data: &[u8]) -> io::Result<Records> {
    let mut records = Records::new();
    let mut sparse: Vec<Vec<u8>> = Vec::new();
    while !data.is_empty() {
        let (key, value, rest) = record(data)?;
        data = rest;
        if key == SPARSE_OFFSET || key == SPARSE_NUMBYTES {
            // GNU sparse 0.0 repeats these two in pairs, in order.
            let want = if sparse.len().is_multiple_of(2) {
                SPARSE_OFFSET
            } else {
                SPARSE_NUMBYTES
            };
            if key != want || value.contains(&b',') {
                return Err(bad("invalid GNU sparse records in PAX header"));
            }
            sparse.push(value.to_vec());
        } else {
            records.insert(key.to_vec(), value.to_vec());
        }
    }
    if !sparse.is_empty() {
        records.insert(SPARSE_MAP.to_vec(), sparse.join(&b","[..]));
    }
    Ok(records)
}

/// One `"%d %s=%s\n"` record: its key, value and what follows it.
fn record(data: &[u8]) -> io::Result<(&[u8], &[u8], &[u8])> {
    let invalid = || bad("invalid PAX record");
    let sp = data.iter().position(|&b| b == b' ').ok_or_else(invalid)?;
    let len: usize = std::str::from_utf8(&data[..sp])
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(invalid)?;
    if len < 5 || len > data.len() || len <= sp + 1 {
        return Err(invalid());
    }
    let (rec, rest) = data.split_at(len);
    let body = &rec[sp + 1..];
    let Some((b'\n', kv)) = body.split_last() else {
        return Err(invalid());
    };
    let eq = kv.iter().position(|&b| b == b'=').ok_or_else(invalid)?;
    let (key, value) = (&kv[..eq], &kv[eq + 1..]);
    let nul_free = match key {
        PATH | LINKPATH | b"uname" | b"gname" => !value.contains(&0),
        _ => !key.contains(&0),
    };
    if key.is_empty() || !nul_free {
        return Err(invalid());
    }
    Ok((key, value, rest))
}

/// A decimal record (`size`, `uid`, …).
pub(super) fn int(value: &[u8], what: &str) -> io::Result<i64> {
    std::str::from_utf8(value)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad(format!("invalid PAX {what} record {:?}", lossy(value))))
}

/// A PAX time: seconds with an optional fraction, possibly negative. Returns
/// seconds and nanoseconds, the nanoseconds in 0..1e9 (so -1.5 is (-2, 5e8)).
pub(super) fn time(value: &[u8]) -> io::Result<(i64, u32)> {
    let invalid = || bad(format!("invalid PAX time {:?}", lossy(value)));
    let (secs, frac) = match value.iter().position(|&b| b == b'.') {
        Some(dot) => (&value[..dot], &value[dot + 1..]),
        None => (value, &[][..]),
    };
    let s = int(secs, "time").map_err(|_| invalid())?;
    if !frac.iter().all(u8::is_ascii_digit) {
        return Err(invalid());
    }
    let mut nanos: u32 = 0;
    for i in 0..9 {
        nanos = nanos * 10 + frac.get(i).map_or(0, |d| u32::from(d - b'0'));
    }
    if nanos > 0 && secs.first() == Some(&b'-') {
        // "-1.5" is 1.5 s before the epoch. Before the earliest time there is,
        // that time (Go wraps around to the latest instead).
        return Ok(match s.checked_sub(1) {
            Some(s) => (s, 1_000_000_000 - nanos),
            None => (i64::MIN, 0),
        });
    }
    Ok((s, nanos))
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A record with its length prefix, as writers compute it.
    pub(crate) fn rec(k: &str, v: &str) -> Vec<u8> {
        let body = format!(" {k}={v}\n");
        let mut len = body.len() + 1;
        while len != body.len() + len.to_string().len() {
            len = body.len() + len.to_string().len();
        }
        format!("{len}{body}").into_bytes()
    }

    #[test]
    fn records_parse_and_later_ones_win() {
        let mut data = rec("path", "a/very/long/name");
        data.extend(rec("mtime", "1700000000.5"));
        data.extend(rec("path", "second"));
        data.extend(rec("SCHILY.xattr.user.x", "v=1"));
        let r = parse(&data).unwrap();
        assert_eq!(r[PATH], b"second");
        assert_eq!(r[&b"SCHILY.xattr.user.x"[..]], b"v=1");
        assert_eq!(time(&r[MTIME]).unwrap(), (1_700_000_000, 500_000_000));
    }

    #[test]
    fn malformed_records_are_refused() {
        for bad in [
            &b"30 path=short\n"[..],
            b"x path=a\n",
            b"11 path=a\n",
            b"9 noequal\n",
            b"11 path=a\0\n",
        ] {
            assert!(parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        // A value may hold '=' and newlines; the length says where it ends.
        let r = parse(b"15 comment=a\nb\n").unwrap();
        assert_eq!(r[&b"comment"[..]], b"a\nb");
    }

    #[test]
    fn times_with_fractions_and_signs() {
        assert_eq!(time(b"12").unwrap(), (12, 0));
        assert_eq!(time(b"12.000000001").unwrap(), (12, 1));
        assert_eq!(time(b"12.1234567891").unwrap(), (12, 123_456_789));
        assert_eq!(time(b"-1.5").unwrap(), (-2, 500_000_000));
        assert_eq!(time(b"-3").unwrap(), (-3, 0));
        assert!(time(b"1.2x").is_err());
        // Found by fuzzing: the second before i64::MIN overflowed (a panic in debug
        // builds, i64::MAX in release ones).
        assert_eq!(time(b"-9223372036854775808.5").unwrap(), (i64::MIN, 0));
        assert_eq!(time(b"-9223372036854775808").unwrap(), (i64::MIN, 0));
        assert_eq!(
            time(b"-9223372036854775807.5").unwrap(),
            (i64::MIN, 500_000_000)
        );
        assert!(time(b"").is_err());
    }

    #[test]
    fn gnu_sparse_0_0_pairs_join_into_a_map() {
        let mut data = rec("GNU.sparse.offset", "0");
        data.extend(rec("GNU.sparse.numbytes", "5"));
        data.extend(rec("GNU.sparse.offset", "100"));
        data.extend(rec("GNU.sparse.numbytes", "7"));
        let r = parse(&data).unwrap();
        assert_eq!(r[SPARSE_MAP], b"0,5,100,7");
        let mut wrong = rec("GNU.sparse.numbytes", "5");
        wrong.extend(rec("GNU.sparse.offset", "0"));
        assert!(parse(&wrong).is_err());
    }
}

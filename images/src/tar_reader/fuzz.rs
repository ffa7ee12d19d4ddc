//! Property-based fuzzing of the tar reader (docs/testing.md, "Fuzzing"):
//! arbitrary bytes, and archives the `tar` crate writes, mutated or not.

use super::*;
use crate::fuzz::{config, mutate, mutations};
use proptest::prelude::*;

/// Reads the whole archive, the data of every entry in small reads. Never
/// panics, never loops: every call reads something or ends, so the calls are
/// bounded by the input's length. Errors are the reader's own kinds.
fn read_everything(bytes: &[u8]) -> io::Result<Vec<(Entry, Vec<u8>)>> {
    let mut r = Reader::new(bytes);
    let mut out = Vec::new();
    let mut buf = [0u8; 97];
    let mut calls = 0usize;
    let bound = bytes.len() + 2;
    while let Some(e) = r.next_entry()? {
        calls += 1;
        let mut data = Vec::new();
        loop {
            calls += 1;
            assert!(calls <= bound, "more reads than the input has bytes");
            let (off, n) = r.read_data(&mut buf)?;
            if n == 0 {
                break;
            }
            assert!(off + n as u64 <= e.size, "data beyond the entry's size");
            // A sparse file's fragments come in order; keep their bytes only.
            data.extend_from_slice(&buf[..n]);
        }
        out.push((e, data));
    }
    Ok(out)
}

fn check(bytes: &[u8]) {
    if let Err(e) = read_everything(bytes) {
        assert!(
            matches!(
                e.kind(),
                io::ErrorKind::InvalidData | io::ErrorKind::UnexpectedEof
            ),
            "unexpected error kind: {e:?}"
        );
    }
}

#[derive(Debug, Clone)]
enum E {
    File(String, Vec<u8>),
    Dir(String),
    Symlink(String, String),
}

fn entry() -> impl Strategy<Value = E> {
    let name = "[a-z]{1,12}(/[a-zA-Z0-9_-][a-zA-Z0-9._-]{0,39}){0,4}";
    prop_oneof![
        (name, prop::collection::vec(any::<u8>(), 0..1500)).prop_map(|(n, d)| E::File(n, d)),
        name.prop_map(E::Dir),
        (name, "(\\.\\./|/)?[a-z]{1,10}(/[a-z][a-z.]{0,9}){0,8}")
            .prop_map(|(n, t)| E::Symlink(n, t)),
    ]
}

/// An archive written by the `tar` crate: GNU or ustar headers, GNU long names
/// and PAX records where a name is too long.
fn archive(entries: &[E], gnu: bool) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = if gnu {
            tar::Header::new_gnu()
        } else {
            tar::Header::new_ustar()
        };
        h.set_mtime(1_700_000_000);
        h.set_uid(1000);
        h.set_gid(1000);
        match e {
            E::File(n, d) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(0o644);
                h.set_size(d.len() as u64);
                b.append_data(&mut h, n, &d[..]).unwrap();
            }
            E::Dir(n) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                h.set_size(0);
                b.append_data(&mut h, n, io::empty()).unwrap();
            }
            E::Symlink(n, t) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_mode(0o777);
                h.set_size(0);
                b.append_link(&mut h, n, t).unwrap();
            }
        }
    }
    b.into_inner().unwrap()
}

proptest! {
    #![proptest_config(config(1500))]

    #[test]
    fn arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..4096)) {
        check(&bytes);
    }

    /// Blocks that pass the checksum reach the field parsers.
    #[test]
    fn arbitrary_sealed_headers(
        blocks in prop::collection::vec(prop::collection::vec(any::<u8>(), 512), 1..5),
        magic in 0..3u8,
        flags in prop::collection::vec(
            prop::option::of(prop::sample::select(&b"0125SxgLK\0"[..])),
            4,
        ),
        sizes in prop::collection::vec(prop::option::of(0u64..2048), 4),
    ) {
        let mut bytes = Vec::new();
        for (i, b) in blocks.into_iter().enumerate() {
            let mut b: [u8; BLOCK] = b.try_into().unwrap();
            if let Some(f) = flags[i] {
                b[156] = f;
            }
            if let Some(size) = sizes[i] {
                b[124..136].copy_from_slice(format!("{size:011o}\0").as_bytes());
            }
            match magic {
                0 => b[257..265].copy_from_slice(b"ustar\x0000"),
                1 => b[257..265].copy_from_slice(b"ustar  \0"),
                _ => {}
            }
            b[148..156].copy_from_slice(b"        ");
            let sum: u32 = b.iter().map(|&x| u32::from(x)).sum();
            b[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
            bytes.extend_from_slice(&b);
        }
        check(&bytes);
    }

    #[test]
    fn valid_archives_round_trip(
        entries in prop::collection::vec(entry(), 0..6),
        gnu in any::<bool>(),
    ) {
        let bytes = archive(&entries, gnu);
        let read = read_everything(&bytes).unwrap();
        prop_assert_eq!(read.len(), entries.len());
        for ((got, data), want) in read.iter().zip(&entries) {
            match want {
                E::File(n, d) => {
                    prop_assert_eq!((got.kind, &got.name[..]), (Kind::Regular, n.as_bytes()));
                    prop_assert_eq!(got.size, d.len() as u64);
                    prop_assert_eq!(data, d);
                    prop_assert_eq!(got.mode, 0o644);
                }
                E::Dir(n) => {
                    prop_assert_eq!(got.kind, Kind::Directory);
                    prop_assert_eq!(got.name.strip_suffix(b"/").unwrap_or(&got.name), n.as_bytes());
                }
                E::Symlink(n, t) => {
                    prop_assert_eq!((got.kind, &got.name[..]), (Kind::Symlink, n.as_bytes()));
                    prop_assert_eq!(&got.link[..], t.as_bytes());
                }
            }
            prop_assert_eq!((got.uid, got.gid, got.mtime), (1000, 1000, (1_700_000_000, 0)));
        }
    }

    #[test]
    fn mutated_archives(
        entries in prop::collection::vec(entry(), 1..5),
        gnu in any::<bool>(),
        (flips, cut) in mutations(),
    ) {
        check(&mutate(archive(&entries, gnu), &flips, cut));
    }

    /// PAX records of every key the reader knows, with arbitrary values.
    #[test]
    fn arbitrary_pax_records(
        records in prop::collection::vec(
            (
                prop_oneof![
                    Just("path"), Just("linkpath"), Just("size"), Just("uid"), Just("gid"),
                    Just("mtime"), Just("atime"), Just("SCHILY.xattr.user.a"),
                    Just("GNU.sparse.major"), Just("GNU.sparse.minor"), Just("GNU.sparse.name"),
                    Just("GNU.sparse.size"), Just("GNU.sparse.realsize"),
                    Just("GNU.sparse.numblocks"), Just("GNU.sparse.offset"),
                    Just("GNU.sparse.numbytes"), Just("GNU.sparse.map"),
                ],
                prop_oneof![
                    "-?[0-9]{0,20}(\\.[0-9]{0,12})?",
                    "[0-9,]{0,30}",
                    Just("-9223372036854775808.5".to_string()),
                    Just("9223372036854775807".to_string()),
                    ".{0,20}",
                ],
            ),
            0..6,
        ),
        data in prop::collection::vec(any::<u8>(), 0..1500),
        flag in prop_oneof![Just(b'0'), Just(b'S'), Just(b'5'), Just(0u8)],
    ) {
        let mut pax = Vec::new();
        for (k, v) in &records {
            pax.extend(super::pax::tests::rec(k, v));
        }
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::XHeader);
        h.set_size(pax.len() as u64);
        b.append_data(&mut h, "PaxHeader", &pax[..]).unwrap();
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::new(flag));
        h.set_size(data.len() as u64);
        b.append_data(&mut h, "file", &data[..]).unwrap();
        check(&b.into_inner().unwrap());
    }

    #[test]
    fn pax_times(
        secs in prop_oneof![any::<i64>(), Just(i64::MIN), Just(i64::MAX), -3i64..3],
        frac in "[0-9]{0,12}",
    ) {
        let text = if frac.is_empty() { secs.to_string() } else { format!("{secs}.{frac}") };
        if let Ok((s, n)) = super::pax::time(text.as_bytes()) {
            prop_assert!(n < 1_000_000_000);
            prop_assert!(s == secs || Some(s) == secs.checked_sub(1), "{} -> {}", text, s);
        }
    }

    #[test]
    fn pax_record_blocks(data in prop::collection::vec(any::<u8>(), 0..300)) {
        let _ = super::pax::parse(&data);
    }
}

/// A sparse file: its size and its data fragments (offset, bytes), in order and
/// apart.
fn sparse_file() -> impl Strategy<Value = (u64, Vec<(u64, Vec<u8>)>)> {
    prop::collection::vec(
        (0u64..600, prop::collection::vec(any::<u8>(), 0..40)),
        0..30,
    )
    .prop_flat_map(|gaps| {
        let mut at = 0;
        let frags: Vec<(u64, Vec<u8>)> = gaps
            .into_iter()
            .map(|(gap, data)| {
                let off = at + gap;
                at = off + data.len() as u64;
                (off, data)
            })
            .collect();
        // As GNU tar writes them: the map ends with an empty fragment at the end
        // of the file (a PAX 0.x map without fragments is not taken for sparse).
        (at..at + 700).prop_map(move |size| {
            let mut frags = frags.clone();
            frags.push((size, Vec::new()));
            (size, frags)
        })
    })
}

fn sealed(
    flag: u8,
    gnu: bool,
    name: &str,
    size: u64,
    extra: impl FnOnce(&mut [u8; BLOCK]),
) -> [u8; BLOCK] {
    let mut b = [0u8; BLOCK];
    b[..name.len()].copy_from_slice(name.as_bytes());
    b[100..108].copy_from_slice(b"0000644\0");
    b[108..116].copy_from_slice(b"0000000\0");
    b[116..124].copy_from_slice(b"0000000\0");
    b[124..136].copy_from_slice(format!("{size:011o}\0").as_bytes());
    b[136..148].copy_from_slice(b"14524140400\0");
    b[156] = flag;
    b[257..265].copy_from_slice(if gnu { b"ustar  \0" } else { b"ustar\x0000" });
    extra(&mut b);
    b[148..156].copy_from_slice(b"        ");
    let sum: u32 = b.iter().map(|&x| u32::from(x)).sum();
    b[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    b
}

fn octal12(field: &mut [u8], v: u64) {
    field.copy_from_slice(format!("{v:011o}\0").as_bytes());
}

fn padded(out: &mut Vec<u8>) {
    out.resize(out.len().div_ceil(BLOCK) * BLOCK, 0);
}

/// The sparse file in one of the four encodings: old GNU (`S`, with extension
/// blocks), PAX 0.0, 0.1 and 1.0; then a plain file `after`.
fn sparse_archive(size: u64, frags: &[(u64, Vec<u8>)], encoding: u8) -> Vec<u8> {
    let data: Vec<u8> = frags.iter().flat_map(|(_, d)| d.clone()).collect();
    let mut out = Vec::new();
    let pax = |out: &mut Vec<u8>, records: Vec<(String, String)>| {
        let body: Vec<u8> = records
            .iter()
            .flat_map(|(k, v)| super::pax::tests::rec(k, v))
            .collect();
        out.extend_from_slice(&sealed(b'x', false, "PaxHeader", body.len() as u64, |_| {}));
        out.extend_from_slice(&body);
        padded(out);
    };
    let n = frags.len().to_string();
    match encoding {
        0 => {
            let (head, rest) = frags.split_at(frags.len().min(4));
            out.extend_from_slice(&sealed(b'S', true, "sparse", data.len() as u64, |b| {
                for (i, (off, d)) in head.iter().enumerate() {
                    octal12(&mut b[386 + 24 * i..398 + 24 * i], *off);
                    octal12(&mut b[398 + 24 * i..410 + 24 * i], d.len() as u64);
                }
                b[482] = u8::from(!rest.is_empty());
                octal12(&mut b[483..495], size);
            }));
            let chunks: Vec<_> = rest.chunks(21).collect();
            for (c, chunk) in chunks.iter().enumerate() {
                let mut ext = [0u8; BLOCK];
                for (i, (off, d)) in chunk.iter().enumerate() {
                    octal12(&mut ext[24 * i..24 * i + 12], *off);
                    octal12(&mut ext[24 * i + 12..24 * i + 24], d.len() as u64);
                }
                ext[504] = u8::from(c + 1 < chunks.len());
                out.extend_from_slice(&ext);
            }
            out.extend_from_slice(&data);
        }
        1 | 2 => {
            let mut r = vec![
                ("GNU.sparse.size".to_string(), size.to_string()),
                ("GNU.sparse.numblocks".to_string(), n),
            ];
            if encoding == 1 {
                for (off, d) in frags {
                    r.push(("GNU.sparse.offset".into(), off.to_string()));
                    r.push(("GNU.sparse.numbytes".into(), d.len().to_string()));
                }
            } else {
                let map: Vec<String> = frags
                    .iter()
                    .flat_map(|(o, d)| [o.to_string(), d.len().to_string()])
                    .collect();
                r.push(("GNU.sparse.map".into(), map.join(",")));
            }
            pax(&mut out, r);
            out.extend_from_slice(&sealed(b'0', false, "sparse", data.len() as u64, |_| {}));
            out.extend_from_slice(&data);
        }
        _ => {
            pax(
                &mut out,
                vec![
                    ("GNU.sparse.major".into(), "1".into()),
                    ("GNU.sparse.minor".into(), "0".into()),
                    ("GNU.sparse.realsize".into(), size.to_string()),
                ],
            );
            let mut body = format!("{n}\n").into_bytes();
            for (off, d) in frags {
                body.extend_from_slice(format!("{off}\n{}\n", d.len()).as_bytes());
            }
            padded(&mut body);
            body.extend_from_slice(&data);
            out.extend_from_slice(&sealed(b'0', false, "sparse", body.len() as u64, |_| {}));
            out.extend_from_slice(&body);
        }
    }
    padded(&mut out);
    out.extend_from_slice(&sealed(b'0', false, "after", 2, |_| {}));
    out.extend_from_slice(b"ok");
    padded(&mut out);
    out.extend_from_slice(&[0; 2 * BLOCK]);
    out
}

proptest! {
    #![proptest_config(config(1500))]

    #[test]
    fn sparse_files_round_trip((size, frags) in sparse_file(), encoding in 0..4u8) {
        let bytes = sparse_archive(size, &frags, encoding);
        let mut r = Reader::new(&bytes[..]);
        let e = r.next_entry().unwrap().unwrap();
        prop_assert_eq!((&e.name[..], e.size), (&b"sparse"[..], size));
        let mut got = vec![0u8; size as usize];
        let mut want = vec![0u8; size as usize];
        for (off, d) in &frags {
            want[*off as usize..*off as usize + d.len()].copy_from_slice(d);
        }
        let mut buf = [0u8; 13];
        loop {
            let (off, n) = r.read_data(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            got[off as usize..off as usize + n].copy_from_slice(&buf[..n]);
        }
        prop_assert_eq!(got, want);
        let after = r.next_entry().unwrap().unwrap();
        prop_assert_eq!(&after.name[..], b"after");
        prop_assert!(r.next_entry().unwrap().is_none());
    }

    #[test]
    fn mutated_sparse_files(
        (size, frags) in sparse_file(),
        encoding in 0..4u8,
        (flips, cut) in mutations(),
    ) {
        check(&mutate(sparse_archive(size, &frags, encoding), &flips, cut));
    }
}

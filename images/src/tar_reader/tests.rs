//! Archives written byte by byte here (the shapes odd writers produce), and archives
//! GNU tar and Python's tarfile write on this machine.

use super::*;
use std::process::Command;

#[derive(Clone, Copy, PartialEq)]
enum Fmt {
    V7,
    Ustar,
    Gnu,
}

fn seal(b: &mut [u8; BLOCK]) {
    b[148..156].copy_from_slice(b"        ");
    let sum: u32 = b.iter().map(|&x| u32::from(x)).sum();
    b[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
}

fn octal(field: &mut [u8], v: u64) {
    let s = format!("{v:0w$o}\0", w = field.len() - 1);
    field.copy_from_slice(s.as_bytes());
}

fn block(fmt: Fmt, flag: u8, name: &str, size: u64) -> [u8; BLOCK] {
    let mut b = [0u8; BLOCK];
    b[..name.len()].copy_from_slice(name.as_bytes());
    octal(&mut b[100..108], 0o644);
    octal(&mut b[108..116], 1000);
    octal(&mut b[116..124], 1000);
    octal(&mut b[124..136], size);
    octal(&mut b[136..148], 1_700_000_000);
    b[156] = flag;
    match fmt {
        Fmt::V7 => {}
        Fmt::Ustar => {
            b[257..263].copy_from_slice(b"ustar\0");
            b[263..265].copy_from_slice(b"00");
        }
        Fmt::Gnu => {
            b[257..263].copy_from_slice(b"ustar ");
            b[263..265].copy_from_slice(b" \0");
        }
    }
    seal(&mut b);
    b
}

fn pad(out: &mut Vec<u8>) {
    out.resize(out.len().div_ceil(BLOCK) * BLOCK, 0);
}

fn put(out: &mut Vec<u8>, b: [u8; BLOCK], data: &[u8]) {
    out.extend_from_slice(&b);
    out.extend_from_slice(data);
    pad(out);
}

fn put_pax(out: &mut Vec<u8>, flag: u8, records: &[(&str, &str)]) {
    let data: Vec<u8> = records
        .iter()
        .flat_map(|(k, v)| super::pax::tests::rec(k, v))
        .collect();
    put(
        out,
        block(Fmt::Ustar, flag, "PaxHeader", data.len() as u64),
        &data,
    );
}

fn end(out: &mut Vec<u8>) {
    out.extend_from_slice(&[0; 2 * BLOCK]);
}

/// Every entry, with its data laid out at its offsets in a buffer of its size.
fn read_all(bytes: &[u8]) -> io::Result<Vec<(Entry, Vec<u8>)>> {
    let mut r = Reader::new(bytes);
    let mut out = Vec::new();
    let mut buf = [0u8; 1000];
    while let Some(e) = r.next_entry()? {
        let mut data = vec![0u8; e.size as usize];
        loop {
            let (off, n) = r.read_data(&mut buf)?;
            if n == 0 {
                break;
            }
            data[off as usize..off as usize + n].copy_from_slice(&buf[..n]);
        }
        out.push((e, data));
    }
    Ok(out)
}

fn names(entries: &[(Entry, Vec<u8>)]) -> Vec<String> {
    entries
        .iter()
        .map(|(e, _)| String::from_utf8_lossy(&e.name).into_owned())
        .collect()
}

fn two_files(fmt: Fmt) -> Vec<u8> {
    let mut out = Vec::new();
    put(&mut out, block(fmt, b'0', "a", 5), b"hello");
    put(&mut out, block(fmt, b'0', "b", 600), &[7; 600]);
    end(&mut out);
    out
}

#[test]
fn plain_archives_in_each_layout() {
    for fmt in [Fmt::V7, Fmt::Ustar, Fmt::Gnu] {
        let entries = read_all(&two_files(fmt)).unwrap();
        assert_eq!(names(&entries), ["a", "b"]);
        let (a, data) = &entries[0];
        assert_eq!(data, b"hello");
        assert_eq!(
            (a.kind, a.mode, a.uid, a.gid),
            (Kind::Regular, 0o644, 1000, 1000)
        );
        assert_eq!(a.mtime, (1_700_000_000, 0));
        assert_eq!(entries[1].1, vec![7; 600]);
    }
}

#[test]
fn archives_that_end_early_are_complete_when_every_file_is() {
    let full = two_files(Fmt::Ustar);
    let data_end = 3 * BLOCK + 600;
    let padded_end = 5 * BLOCK;
    // No end-of-archive blocks; one zero block; the last file's padding cut short
    // or missing altogether (umoci 0.4 writes those).
    for len in [padded_end, padded_end + BLOCK, data_end + 100, data_end] {
        let entries = read_all(&full[..len]).unwrap_or_else(|e| panic!("{len}: {e}"));
        assert_eq!(names(&entries), ["a", "b"], "{len}");
        assert_eq!(entries[1].1, vec![7; 600], "{len}");
    }
    // A file's data cut short is an error, and so is a header cut short.
    for len in [
        data_end - 1,
        3 * BLOCK + 1,
        2 * BLOCK + 10,
        padded_end + 100,
    ] {
        let err = read_all(&full[..len]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof, "{len}: {err}");
    }
}

#[test]
fn what_follows_the_end_of_archive_is_not_read() {
    let mut bytes = two_files(Fmt::Ustar);
    bytes.extend_from_slice(b"trailing garbage that is no header");
    let mut r = Reader::new(&bytes[..]);
    while r.next_entry().unwrap().is_some() {}
    assert_eq!(r.into_inner(), b"trailing garbage that is no header");
    // A zero block followed by a non-zero one is no end.
    let mut odd = two_files(Fmt::Ustar);
    odd.truncate(odd.len() - BLOCK);
    odd.extend_from_slice(&[1; BLOCK]);
    assert!(read_all(&odd).is_err());
}

#[test]
fn header_only_types_have_no_data_whatever_their_size() {
    let mut out = Vec::new();
    let mut dir = block(Fmt::Ustar, b'5', "d/", 0);
    octal(&mut dir[124..136], 512); // a size, but no data follows
    seal(&mut dir);
    out.extend_from_slice(&dir);
    let mut link = block(Fmt::Ustar, b'2', "l", 0);
    link[157..160].copy_from_slice(b"/x\0");
    seal(&mut link);
    out.extend_from_slice(&link);
    put(&mut out, block(Fmt::Ustar, b'0', "f", 3), b"abc");
    end(&mut out);
    let entries = read_all(&out).unwrap();
    assert_eq!(names(&entries), ["d/", "l", "f"]);
    assert_eq!(entries[0].0.kind, Kind::Directory);
    assert_eq!(
        (entries[1].0.kind, &entries[1].0.link[..]),
        (Kind::Symlink, &b"/x"[..])
    );
    assert_eq!(entries[2].1, b"abc");
}

#[test]
fn an_old_regular_type_with_a_trailing_slash_is_a_directory() {
    let mut out = Vec::new();
    put(&mut out, block(Fmt::V7, 0, "dir/", 0), b"");
    put(&mut out, block(Fmt::V7, 0, "file", 1), b"x");
    end(&mut out);
    let kinds: Vec<Kind> = read_all(&out)
        .unwrap()
        .iter()
        .map(|(e, _)| e.kind)
        .collect();
    assert_eq!(kinds, [Kind::Directory, Kind::Regular]);
}

#[test]
fn gnu_long_names_and_links() {
    let long_name = "d/".repeat(80) + "file";
    let long_link = "t/".repeat(90) + "target";
    let mut out = Vec::new();
    let mut with_nul = long_name.clone().into_bytes();
    with_nul.push(0);
    put(
        &mut out,
        block(Fmt::Gnu, b'L', "././@LongLink", with_nul.len() as u64),
        &with_nul,
    );
    put(
        &mut out,
        block(Fmt::Gnu, b'K', "././@LongLink", long_link.len() as u64),
        long_link.as_bytes(),
    );
    put(&mut out, block(Fmt::Gnu, b'2', "short", 0), b"");
    end(&mut out);
    let entries = read_all(&out).unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].0.name, long_name.as_bytes());
    assert_eq!(entries[0].0.link, long_link.as_bytes());
}

#[test]
fn pax_records_override_the_header_and_global_ones_do_not() {
    let mut out = Vec::new();
    put_pax(&mut out, b'g', &[("uid", "4242"), ("comment", "global")]);
    put_pax(
        &mut out,
        b'x',
        &[
            ("path", "pax/long/ünïcödé/name"),
            ("uid", "3000000"),
            ("gid", ""), // empty: the header's gid stays
            ("mtime", "1700000000.123456789"),
            ("atime", "1700000100.5"),
            ("size", "3"),
            ("SCHILY.xattr.user.crust", "interop"),
            ("SCHILY.xattr.security.capability", "\u{1}"),
        ],
    );
    // The header's own size is wrong; the PAX size is the truth.
    put(&mut out, block(Fmt::Ustar, b'0', "short", 0), b"xyz");
    put(&mut out, block(Fmt::Ustar, b'0', "next", 1), b"n");
    end(&mut out);
    let entries = read_all(&out).unwrap();
    assert_eq!(names(&entries), ["pax/long/ünïcödé/name", "next"]);
    let (e, data) = &entries[0];
    assert_eq!(data, b"xyz");
    assert_eq!((e.uid, e.gid), (3_000_000, 1000));
    assert_eq!(e.mtime, (1_700_000_000, 123_456_789));
    assert_eq!(e.atime, Some((1_700_000_100, 500_000_000)));
    assert_eq!(
        e.xattrs,
        [
            (b"security.capability".to_vec(), vec![1]),
            (b"user.crust".to_vec(), b"interop".to_vec())
        ]
    );
    // The global header's uid is not applied (as in Go).
    assert_eq!(entries[1].0.uid, 1000);
}

#[test]
fn base256_numbers_in_a_gnu_header() {
    let mut b = block(Fmt::Gnu, b'0', "big", 0);
    b[108..116].copy_from_slice(&[0x80, 0, 0, 0, 0, 0x2d, 0xc6, 0xc0]);
    let mut size = [0u8; 12];
    size[0] = 0x80;
    size[11] = 4;
    b[124..136].copy_from_slice(&size);
    seal(&mut b);
    let mut out = Vec::new();
    put(&mut out, b, b"data");
    end(&mut out);
    let entries = read_all(&out).unwrap();
    assert_eq!(
        (entries[0].0.uid, &entries[0].1[..]),
        (3_000_000, &b"data"[..])
    );
}

#[test]
fn devices_carry_their_numbers() {
    let mut b = block(Fmt::Ustar, b'3', "null", 0);
    octal(&mut b[329..337], 1);
    octal(&mut b[337..345], 3);
    seal(&mut b);
    let mut out = Vec::new();
    put(&mut out, b, b"");
    end(&mut out);
    let e = &read_all(&out).unwrap()[0].0;
    assert_eq!((e.kind, e.dev_major, e.dev_minor), (Kind::Char, 1, 3));
}

/// A file of 5000 bytes: "abc" at 0, "xyz" at 4000, the rest holes.
fn sparse_expected() -> Vec<u8> {
    let mut v = vec![0u8; 5000];
    v[..3].copy_from_slice(b"abc");
    v[4000..4003].copy_from_slice(b"xyz");
    v
}

#[test]
fn old_gnu_sparse_files_with_extension_blocks() {
    let mut b = block(Fmt::Gnu, b'S', "sparse", 6);
    // First pair in the header, the second in an extension block.
    octal(&mut b[386..398], 0);
    octal(&mut b[398..410], 3);
    b[482] = 1;
    octal(&mut b[483..495], 5000);
    seal(&mut b);
    let mut ext = [0u8; BLOCK];
    octal(&mut ext[0..12], 4000);
    octal(&mut ext[12..24], 3);
    let mut out = b.to_vec();
    out.extend_from_slice(&ext);
    out.extend_from_slice(b"abcxyz");
    pad(&mut out);
    end(&mut out);
    let entries = read_all(&out).unwrap();
    assert_eq!(entries[0].0.size, 5000);
    assert_eq!(entries[0].1, sparse_expected());
}

#[test]
fn pax_sparse_files_0_0_0_1_and_1_0() {
    let v00 = [
        ("GNU.sparse.size", "5000"),
        ("GNU.sparse.numblocks", "2"),
        ("GNU.sparse.offset", "0"),
        ("GNU.sparse.numbytes", "3"),
        ("GNU.sparse.offset", "4000"),
        ("GNU.sparse.numbytes", "3"),
    ];
    let v01 = [
        ("GNU.sparse.size", "5000"),
        ("GNU.sparse.numblocks", "2"),
        ("GNU.sparse.name", "real/name"),
        ("GNU.sparse.map", "0,3,4000,3"),
    ];
    let v10 = [
        ("GNU.sparse.major", "1"),
        ("GNU.sparse.minor", "0"),
        ("GNU.sparse.name", "real/name"),
        ("GNU.sparse.realsize", "5000"),
    ];
    for (records, map_in_data) in [(&v00[..], false), (&v01[..], false), (&v10[..], true)] {
        let mut data = Vec::new();
        if map_in_data {
            data.extend_from_slice(b"2\n0\n3\n4000\n3\n");
            pad(&mut data);
        }
        data.extend_from_slice(b"abcxyz");
        let mut out = Vec::new();
        put_pax(&mut out, b'x', records);
        put(
            &mut out,
            block(Fmt::Ustar, b'0', "GNUSparseFile.1/name", data.len() as u64),
            &data,
        );
        put(&mut out, block(Fmt::Ustar, b'0', "after", 2), b"ok");
        end(&mut out);
        let entries = read_all(&out).unwrap_or_else(|e| panic!("{records:?}: {e}"));
        assert_eq!(entries[0].1, sparse_expected(), "{records:?}");
        assert_eq!(entries[1].1, b"ok", "{records:?}");
        if records.iter().any(|(k, _)| *k == "GNU.sparse.name") {
            assert_eq!(entries[0].0.name, b"real/name");
        }
    }
}

#[test]
fn sparse_maps_that_do_not_fit_are_refused() {
    for map in ["0,3,4000,4", "4000,3,0,3", "0,3,4999,3"] {
        let mut out = Vec::new();
        put_pax(
            &mut out,
            b'x',
            &[
                ("GNU.sparse.size", "5000"),
                ("GNU.sparse.numblocks", "2"),
                ("GNU.sparse.map", map),
            ],
        );
        put(&mut out, block(Fmt::Ustar, b'0', "s", 6), b"abcxyz");
        end(&mut out);
        assert!(read_all(&out).is_err(), "{map}");
    }
}

#[test]
fn a_huge_special_entry_is_refused() {
    let mut out = Vec::new();
    out.extend_from_slice(&block(Fmt::Gnu, b'L', "././@LongLink", MAX_SPECIAL + 1));
    out.resize(out.len() + MAX_SPECIAL as usize + 1, b'a');
    assert_eq!(
        read_all(&out).unwrap_err().kind(),
        io::ErrorKind::InvalidData
    );
}

/// Runs GNU tar (part of every Debian system) on a tree with a sparse file, long
/// names and links, in each format and sparse version, and checks that every file
/// reads back as it is on disk.
#[test]
fn gnu_tar_archives_in_every_format_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    let long_dir = src.join("d".repeat(60)).join("e".repeat(60));
    std::fs::create_dir_all(&long_dir).unwrap();
    std::fs::write(long_dir.join("long-file"), b"long\n").unwrap();
    std::fs::write(src.join("plain"), b"plain\n").unwrap();
    std::os::unix::fs::symlink("t/".repeat(60), src.join("long-link")).unwrap();
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = std::fs::File::create(src.join("sparse")).unwrap();
        f.write_all(b"head").unwrap();
        f.seek(SeekFrom::Start(1 << 20)).unwrap();
        f.write_all(b"middle").unwrap();
        f.set_len(3 << 20).unwrap();
    }
    let on_disk = |name: &str| std::fs::read(src.join(name)).unwrap();
    let variants: &[&[&str]] = &[
        &["--format=gnu", "-S"],
        &["--format=posix", "-S", "--sparse-version=0.0"],
        &["--format=posix", "-S", "--sparse-version=0.1"],
        &["--format=posix", "-S", "--sparse-version=1.0"],
        &["--format=ustar"],
        &["--format=gnu"],
        &["-P"],
    ];
    for args in variants {
        let mut cmd = Command::new("tar");
        cmd.args(*args).arg("-cf").arg("-").arg("-C").arg(&src);
        if args.contains(&"--format=ustar") {
            cmd.args(["plain", "sparse"]); // ustar has no long link names
        } else if args.contains(&"-P") {
            cmd.args(["-C", "/"]).arg(src.join("plain"));
        } else {
            cmd.arg(".");
        }
        let out = cmd.output().expect("GNU tar runs");
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        if args.contains(&"-S") {
            // The holes are not in the archive: the sparse reading was exercised.
            assert!(out.stdout.len() < 1 << 20, "{args:?}: {}", out.stdout.len());
        }
        let entries = read_all(&out.stdout).unwrap_or_else(|e| panic!("{args:?}: {e}"));
        for (e, data) in &entries {
            let name = String::from_utf8_lossy(&e.name);
            if args.contains(&"-P") {
                assert_eq!(name, src.join("plain").to_string_lossy(), "{args:?}");
            }
            let rel = name.trim_start_matches("./");
            match e.kind {
                Kind::Regular if !args.contains(&"-P") => {
                    assert_eq!(data, &on_disk(rel), "{args:?}: {rel}")
                }
                Kind::Symlink => assert_eq!(e.link, "t/".repeat(60).as_bytes(), "{args:?}"),
                _ => {}
            }
        }
        let files = entries
            .iter()
            .filter(|(e, _)| e.kind == Kind::Regular)
            .count();
        let want = match () {
            _ if args.contains(&"-P") => 1,
            _ if args.contains(&"--format=ustar") => 2,
            _ => 3,
        };
        assert_eq!(files, want, "{args:?}: {:?}", names(&entries));
    }
}

/// Python's tarfile in its three formats, with PAX times and a big uid.
#[test]
fn python_tarfile_archives_read_back() {
    let script = r#"
import io, sys, tarfile
fmt = {"gnu": tarfile.GNU_FORMAT, "pax": tarfile.PAX_FORMAT, "ustar": tarfile.USTAR_FORMAT}[sys.argv[1]]
buf = io.BytesIO()
with tarfile.open(fileobj=buf, mode="w", format=fmt) as t:
    i = tarfile.TarInfo("dir/" + "n" * 120 if fmt != tarfile.USTAR_FORMAT else "dir/file")
    data = b"python\n"
    i.size, i.mode, i.uid, i.gid = len(data), 0o4755, 1000, 1000
    i.mtime = 1700000000.25 if fmt == tarfile.PAX_FORMAT else 1700000000
    if fmt == tarfile.PAX_FORMAT:
        i.uid = 3000000
    t.addfile(i, io.BytesIO(data))
sys.stdout.buffer.write(buf.getvalue())
"#;
    for fmt in ["gnu", "pax", "ustar"] {
        let out = Command::new("python3")
            .args(["-c", script, fmt])
            .output()
            .expect("python3 runs");
        assert!(
            out.status.success(),
            "{fmt}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let entries = read_all(&out.stdout).unwrap_or_else(|e| panic!("{fmt}: {e}"));
        assert_eq!(entries.len(), 1, "{fmt}");
        let (e, data) = &entries[0];
        assert_eq!(data, b"python\n", "{fmt}");
        assert_eq!(e.mode, 0o4755, "{fmt}");
        match fmt {
            "pax" => {
                assert_eq!(e.uid, 3_000_000);
                assert_eq!(e.mtime, (1_700_000_000, 250_000_000));
            }
            "ustar" => assert_eq!(e.name, b"dir/file"),
            _ => assert_eq!(e.name, format!("dir/{}", "n".repeat(120)).as_bytes()),
        }
    }
}

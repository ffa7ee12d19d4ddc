//! Unpacking hostile, whiteout, sparse and compressed layers built with the tar crate.

use std::io::{self, Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::entry::OPAQUE_XATTR;
use super::overlap::CHUNK;
use super::*;
use crate::error::Error;

fn header(kind: tar::EntryType, mode: u32) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(1000);
    h.set_gid(1001);
    h.set_mtime(1_600_000_000);
    h.set_size(0);
    h
}

/// Writes raw names into headers, bypassing the tar crate's own path checks, so
/// hostile paths reach the unpacker exactly as an attacker would send them.
fn raw_name(h: &mut tar::Header, name: &str) {
    let gnu = h.as_gnu_mut().expect("gnu header");
    gnu.name = [0; 100];
    gnu.name[..name.len()].copy_from_slice(name.as_bytes());
}

enum E<'a> {
    Dir(&'a str, u32),
    File(&'a str, &'a [u8], u32),
    Symlink(&'a str, &'a str),
    Hardlink(&'a str, &'a str),
}

fn build(entries: &[E<'_>]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        match e {
            E::Dir(p, m) => {
                let mut h = header(tar::EntryType::Directory, *m);
                raw_name(&mut h, p);
                h.set_cksum();
                b.append(&h, io::empty()).unwrap();
            }
            E::File(p, data, m) => {
                let mut h = header(tar::EntryType::Regular, *m);
                h.set_size(data.len() as u64);
                raw_name(&mut h, p);
                h.set_cksum();
                b.append(&h, *data).unwrap();
            }
            E::Symlink(p, t) | E::Hardlink(p, t) => {
                let kind = if matches!(e, E::Symlink(..)) {
                    tar::EntryType::Symlink
                } else {
                    tar::EntryType::Link
                };
                let mut h = header(kind, 0o777);
                raw_name(&mut h, p);
                let gnu = h.as_gnu_mut().unwrap();
                gnu.linkname = [0; 100];
                gnu.linkname[..t.len()].copy_from_slice(t.as_bytes());
                h.set_cksum();
                b.append(&h, io::empty()).unwrap();
            }
        }
    }
    b.into_inner().unwrap()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// A scratch tree: `outside/` is a sibling the hostile layers aim at, `layer/` is
/// the empty snapshot directory.
struct Scratch {
    _dir: tempfile::TempDir,
    layer: PathBuf,
    outside: PathBuf,
}

fn scratch() -> Scratch {
    let dir = tempfile::tempdir().unwrap();
    let layer = dir.path().join("layer");
    let outside = dir.path().join("outside");
    std::fs::create_dir(&layer).unwrap();
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("secret"), b"keep").unwrap();
    Scratch {
        _dir: dir,
        layer,
        outside,
    }
}

fn assert_refused(entries: &[E<'_>]) {
    let s = scratch();
    let tar = build(entries);
    let err = unpack_layer(&tar[..], &s.layer).unwrap_err();
    assert!(
        matches!(&err, Error::BadContent(m) if m.contains("refusing layer")),
        "unexpected error: {err}"
    );
    assert_eq!(std::fs::read(s.outside.join("secret")).unwrap(), b"keep");
    let names: Vec<_> = std::fs::read_dir(&s.outside)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("secret")]);
}

#[test]
fn refuses_dotdot() {
    assert_refused(&[E::File("../outside/secret", b"pwned", 0o644)]);
    assert_refused(&[E::File("a/../../outside/x", b"pwned", 0o644)]);
}

#[test]
fn sparse_files_keep_their_holes() {
    let s = scratch();
    let src = s.outside.join("src");
    std::fs::create_dir(&src).unwrap();
    let f = std::fs::File::create(src.join("sparse")).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, b"tail", 64 << 20).unwrap();
    drop(f);
    for version in ["--format=gnu", "--sparse-version=1.0"] {
        let out = std::process::Command::new("tar")
            .args(["--format=posix", "-S", version, "-cf", "-", "-C"])
            .arg(&src)
            .arg("sparse")
            .output()
            .unwrap();
        assert!(out.status.success());
        let layer = s.layer.join(version);
        std::fs::create_dir(&layer).unwrap();
        unpack_layer(&out.stdout[..], &layer).unwrap();
        let md = std::fs::metadata(layer.join("sparse")).unwrap();
        assert_eq!(md.len(), (64 << 20) + 4, "{version}");
        assert!(
            md.blocks() < 1024,
            "{version}: {} blocks written",
            md.blocks()
        );
        let data = std::fs::read(layer.join("sparse")).unwrap();
        assert!(data[..64 << 20].iter().all(|&b| b == 0));
        assert_eq!(&data[64 << 20..], b"tail");
    }
}

#[test]
fn directories_without_entries_take_their_metadata_from_the_layers_below() {
    let s = scratch();
    let tar = build(&[
        E::File("tmp/x", b"x", 0o644),
        E::File("etc/ssl/certs/ca", b"ca", 0o644),
        E::Dir("etc", 0o750),
        E::File("gone/y", b"y", 0o644),
    ]);
    let u = unpack_layer(&tar[..], &s.layer).unwrap();
    let names: Vec<_> = u
        .implicit_dirs
        .iter()
        .map(|p| p.to_str().unwrap())
        .collect();
    assert_eq!(names, ["etc/ssl", "etc/ssl/certs", "gone", "tmp"]);
    // The layers below: /tmp is 1777 and owned by 7:8, etc/ssl 0700, and
    // `gone` is a file there, so it stays as made.
    let lower = s.outside.join("lower");
    for d in ["tmp", "etc/ssl/certs"] {
        std::fs::create_dir_all(lower.join(d)).unwrap();
    }
    std::fs::set_permissions(lower.join("tmp"), std::fs::Permissions::from_mode(0o1777)).unwrap();
    std::os::unix::fs::chown(lower.join("tmp"), Some(7), Some(8)).unwrap();
    std::fs::set_permissions(
        lower.join("etc/ssl"),
        std::fs::Permissions::from_mode(0o700),
    )
    .unwrap();
    std::fs::write(lower.join("gone"), b"file").unwrap();
    let empty = s.outside.join("empty");
    std::fs::create_dir(&empty).unwrap();
    inherit_implicit_dirs(&s.layer, &u.implicit_dirs, &[empty, lower]).unwrap();
    let md = |p: &str| std::fs::symlink_metadata(s.layer.join(p)).unwrap();
    assert_eq!(md("tmp").permissions().mode() & 0o7777, 0o1777);
    assert_eq!((md("tmp").uid(), md("tmp").gid()), (7, 8));
    assert_eq!(md("etc/ssl").permissions().mode() & 0o7777, 0o700);
    assert_eq!(md("etc").permissions().mode() & 0o7777, 0o750);
    assert_eq!(md("gone").permissions().mode() & 0o7777, 0o755);
}

#[test]
fn absolute_names_land_inside_the_layer() {
    let s = scratch();
    let abs = format!("{}/x", s.outside.display());
    let tar = build(&[
        E::File(&abs, b"inside", 0o644),
        E::File("/../../up", b"root", 0o644),
        E::File("./a/../b", b"b", 0o644),
    ]);
    unpack_layer(&tar[..], &s.layer).unwrap();
    let inside = s.layer.join(abs.trim_start_matches('/'));
    assert_eq!(std::fs::read(inside).unwrap(), b"inside");
    assert_eq!(std::fs::read(s.layer.join("up")).unwrap(), b"root");
    assert_eq!(std::fs::read(s.layer.join("b")).unwrap(), b"b");
    assert!(!s.layer.join("a").exists());
    let names: Vec<_> = std::fs::read_dir(&s.outside)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("secret")]);
}

#[test]
fn refuses_write_through_symlink() {
    let s = scratch();
    let abs = s.outside.display().to_string();
    assert_refused(&[E::Symlink("evil", &abs), E::File("evil/x", b"pwned", 0o644)]);
    assert_refused(&[
        E::Symlink("evil", "../outside"),
        E::File("evil/secret", b"pwned", 0o644),
    ]);
    assert_refused(&[
        E::Dir("d", 0o755),
        E::Symlink("d/up", "../.."),
        E::File("d/up/outside/x", b"pwned", 0o644),
    ]);
}

#[test]
fn refuses_hardlink_outside() {
    assert_refused(&[E::Hardlink("h", "../outside/secret")]);
    let s = scratch();
    let abs = format!("{}/secret", s.outside.display());
    assert_refused(&[E::Hardlink("h", &abs)]);
    // through a symlinked directory inside the layer
    assert_refused(&[E::Symlink("l", "../outside"), E::Hardlink("h", "l/secret")]);
}

#[test]
fn symlink_targets_are_stored_not_followed() {
    let s = scratch();
    let tar = build(&[
        E::Dir("bin", 0o755),
        E::File("bin/busybox", b"elf", 0o4755),
        E::Symlink("bin/sh", "/bin/busybox"),
        E::Symlink("etc", "/etc"),
        E::Hardlink("bin/ls", "bin/busybox"),
    ]);
    unpack_layer(&tar[..], &s.layer).unwrap();
    let sh = s.layer.join("bin/sh");
    assert_eq!(std::fs::read_link(&sh).unwrap(), Path::new("/bin/busybox"));
    let bb = std::fs::metadata(s.layer.join("bin/busybox")).unwrap();
    assert_eq!(bb.permissions().mode() & 0o7777, 0o4755, "setuid kept");
    assert_eq!((bb.uid(), bb.gid()), (1000, 1001));
    assert_eq!(bb.mtime(), 1_600_000_000);
    assert_eq!(bb.nlink(), 2, "hard link kept");
    let ls = std::fs::metadata(s.layer.join("bin/ls")).unwrap();
    assert_eq!(ls.ino(), bb.ino());
    let bin = std::fs::metadata(s.layer.join("bin")).unwrap();
    assert_eq!(bin.mtime(), 1_600_000_000, "dir mtime set after children");
}

#[test]
fn whiteouts_and_opaque_dirs() {
    let s = scratch();
    let tar = build(&[
        E::Dir("etc", 0o755),
        E::File("etc/.wh.motd", b"", 0o644),
        E::Dir("var/cache", 0o700),
        E::File("var/cache/.wh..wh..opq", b"", 0o644),
        E::File("var/cache/new", b"n", 0o640),
        E::File(".wh..wh.plnk", b"", 0o644),
    ]);
    let u = unpack_layer(&gzip(&tar)[..], &s.layer).unwrap();
    assert_eq!(u.diff_id, crate::digest::sha256(&tar));
    assert_eq!(u.size, tar.len() as u64);
    let wh = std::fs::symlink_metadata(s.layer.join("etc/motd")).unwrap();
    assert!(wh.file_type().is_char_device());
    assert_eq!(wh.rdev(), 0);
    assert!(!s.layer.join("etc/.wh.motd").exists());
    assert!(!s.layer.join(".wh..wh.plnk").exists());
    let cache = s.layer.join("var/cache");
    let v = rustix::fs::getxattr(&cache, OPAQUE_XATTR, &mut [0u8; 8][..]).unwrap();
    assert_eq!(v, 1);
    assert!(!cache.join(".wh..wh..opq").exists());
    assert_eq!(std::fs::read(cache.join("new")).unwrap(), b"n");
    let m = std::fs::metadata(&cache).unwrap();
    assert_eq!(m.permissions().mode() & 0o777, 0o700);
    // implicit parent "var" created
    assert!(s.layer.join("var").is_dir());
}

#[test]
fn zstd_and_plain_layers() {
    let s = scratch();
    let tar = build(&[E::File("a", b"hello", 0o644)]);
    let z = zstd::encode_all(&tar[..], 1).unwrap();
    let u = unpack_layer(&z[..], &s.layer).unwrap();
    assert_eq!(u.diff_id, crate::digest::sha256(&tar));
    assert_eq!(std::fs::read(s.layer.join("a")).unwrap(), b"hello");
    let s2 = scratch();
    unpack_layer(&tar[..], &s2.layer).unwrap();
    assert_eq!(std::fs::read(s2.layer.join("a")).unwrap(), b"hello");
}

/// A tar with a file spanning many decompressed chunks, and a few small entries.
fn big_tar() -> (Vec<u8>, Vec<u8>) {
    let big: Vec<u8> = (0..(CHUNK * 5 + 123) as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let tar = build(&[
        E::Dir("bin", 0o755),
        E::File("bin/big", &big, 0o755),
        E::Symlink("bin/sh", "big"),
        E::File("etc/hostname", b"crust", 0o644),
    ]);
    (tar, big)
}

#[test]
fn overlapped_unpack_gives_what_the_single_threaded_one_gives() {
    let (tar, big) = big_tar();
    let zst = zstd::encode_all(&tar[..], 1).unwrap();
    for (name, layer) in [("gzip", gzip(&tar)), ("zstd", zst), ("plain", tar.clone())] {
        let s = scratch();
        let (u, (cursor, drained)) =
            unpack_layer_overlapped(io::Cursor::new(layer.clone()), &s.layer, |c, drained| {
                (c, drained)
            });
        let u = u.unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(u.diff_id, crate::digest::sha256(&tar), "{name}");
        assert_eq!(u.size, tar.len() as u64, "{name}");
        assert!(drained.is_ok(), "{name}");
        assert_eq!(cursor.position(), layer.len() as u64, "{name}: all read");
        assert_eq!(
            std::fs::read(s.layer.join("bin/big")).unwrap(),
            big,
            "{name}"
        );
        assert_eq!(
            std::fs::read_link(s.layer.join("bin/sh")).unwrap(),
            Path::new("big")
        );
        assert_eq!(
            std::fs::read(s.layer.join("etc/hostname")).unwrap(),
            b"crust"
        );
    }
}

#[test]
fn overlapped_unpack_refuses_a_hostile_layer_and_still_reads_the_stream_to_its_end() {
    let s = scratch();
    let (_, big) = big_tar();
    let tar = build(&[
        E::Symlink("evil", "../outside"),
        E::File("evil/secret", b"pwned", 0o644),
        E::File("after", &big, 0o644),
    ]);
    let layer = gzip(&tar);
    let (u, cursor) = unpack_layer_overlapped(io::Cursor::new(layer.clone()), &s.layer, |c, _| c);
    let err = u.unwrap_err();
    assert!(
        matches!(&err, Error::BadContent(m) if m.contains("refusing layer")),
        "{err}"
    );
    assert_eq!(std::fs::read(s.outside.join("secret")).unwrap(), b"keep");
    assert_eq!(cursor.position(), layer.len() as u64);
}

#[test]
fn overlapped_unpack_reports_corrupt_compression_and_the_reader_error() {
    let (tar, _) = big_tar();
    let mut layer = gzip(&tar);
    let mid = layer.len() / 2;
    for b in &mut layer[mid..mid + 64] {
        *b ^= 0x5a;
    }
    let s = scratch();
    let (u, ()) = unpack_layer_overlapped(&layer[..], &s.layer, |_, _| ());
    assert!(matches!(u, Err(Error::BadContent(_))), "{u:?}");

    // A download's own error comes through as itself.
    struct Cut(Vec<u8>, usize);
    impl Read for Cut {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.1 >= self.0.len() / 2 {
                return Err(io::Error::other(Error::Unavailable("link down".into())));
            }
            let n = buf.len().min(self.0.len() / 2 - self.1).min(4096);
            buf[..n].copy_from_slice(&self.0[self.1..self.1 + n]);
            self.1 += n;
            Ok(n)
        }
    }
    let s = scratch();
    let (u, drained) = unpack_layer_overlapped(Cut(gzip(&tar), 0), &s.layer, |_, drained| drained);
    assert!(
        matches!(&u, Err(Error::Unavailable(m)) if m == "link down"),
        "{u:?}"
    );
    assert!(drained.is_err());
}

#[test]
fn owners_are_kept_also_where_a_new_inode_would_get_another_group() {
    fn entry(
        b: &mut tar::Builder<Vec<u8>>,
        kind: tar::EntryType,
        p: &str,
        mode: u32,
        o: (u64, u64),
    ) {
        let mut h = header(kind, mode);
        h.set_uid(o.0);
        h.set_gid(o.1);
        raw_name(&mut h, p);
        if kind == tar::EntryType::Symlink {
            h.set_link_name("f").unwrap();
        }
        h.set_cksum();
        b.append(&h, io::empty()).unwrap();
    }
    use tar::EntryType::{Directory as D, Regular as F, Symlink as L};
    let mut b = tar::Builder::new(Vec::new());
    // A setgid directory: what is made in it takes its group unless chowned.
    entry(&mut b, D, "s", 0o2775, (0, 4242));
    entry(&mut b, F, "s/f", 0o644, (0, 0));
    entry(&mut b, L, "s/l", 0o777, (0, 0));
    entry(&mut b, D, "s/sub", 0o755, (0, 0));
    entry(&mut b, F, "r", 0o644, (0, 0));
    entry(&mut b, F, "o", 0o644, (1000, 1001));
    // A directory given again keeps its place and takes the later owner.
    entry(&mut b, D, "e", 0o755, (0, 0));
    entry(&mut b, D, "e", 0o700, (1000, 1001));
    let tar = b.into_inner().unwrap();
    let s = scratch();
    unpack_layer(&tar[..], &s.layer).unwrap();
    let owner = |p: &str| {
        let m = std::fs::symlink_metadata(s.layer.join(p)).unwrap();
        (m.uid(), m.gid())
    };
    assert_eq!(owner("s"), (0, 4242));
    assert_eq!(owner("s/f"), (0, 0));
    assert_eq!(owner("s/l"), (0, 0));
    assert_eq!(owner("s/sub"), (0, 0));
    assert_eq!(owner("r"), (0, 0));
    assert_eq!(owner("o"), (1000, 1001));
    assert_eq!(owner("e"), (1000, 1001));
    let mode = std::fs::metadata(s.layer.join("e"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o7777, 0o700);
}

#[test]
fn later_entries_replace_earlier_ones() {
    let s = scratch();
    let tar = build(&[
        E::Symlink("x", "../outside/secret"),
        E::File("x", b"mine", 0o644),
    ]);
    unpack_layer(&tar[..], &s.layer).unwrap();
    assert_eq!(std::fs::read(s.layer.join("x")).unwrap(), b"mine");
    assert_eq!(std::fs::read(s.outside.join("secret")).unwrap(), b"keep");
}

//! Two directory trees compared entry by entry: what crust unpacked (a
//! container's rootfs) against a reference unpack of the same image
//! (`e2e/tests/interop.rs`). Compared: file type, content sha256, mode with the
//! setuid/setgid/sticky bits, owner, symlink target, device numbers, `user.*`
//! xattrs (`security.*` and `trusted.*`, overlayfs's own, are not image content)
//! and hard links (which other paths share the inode). Not compared: times,
//! and the root directory itself (unpackers ignore a layer's entry for it).

use std::collections::BTreeMap;
use std::fmt;
use std::io::Read as _;
use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use sha2::{Digest as _, Sha256};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Fifo,
    Socket,
    CharDevice,
    BlockDevice,
}

/// What is compared of one path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub kind: Kind,
    /// Permission bits with setuid, setgid and sticky (`mode & 0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Hex sha256 of a regular file's content.
    pub sha256: Option<String>,
    /// A symlink's target, as stored.
    pub target: Option<PathBuf>,
    /// (major, minor) of a device.
    pub rdev: Option<(u32, u32)>,
    /// `user.*` extended attributes.
    pub xattrs: BTreeMap<String, Vec<u8>>,
    /// The other paths of the tree with this (non-directory) inode, sorted.
    pub links: Vec<PathBuf>,
}

/// Every path below a root (relative to it), with what is compared of it.
#[derive(Clone, Debug, Default)]
pub struct Tree {
    pub entries: BTreeMap<PathBuf, Entry>,
}

/// One field of one path that differs; `got` is the tree under test.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Difference {
    pub path: PathBuf,
    pub field: &'static str,
    pub reference: String,
    pub got: String,
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "/{}: {}: reference {}, got {}",
            self.path.display(),
            self.field,
            self.reference,
            self.got
        )
    }
}

impl Tree {
    /// Walks `root` without following symlinks or leaving it.
    pub fn scan(root: &Path) -> Result<Tree> {
        let mut tree = Tree::default();
        let mut inodes: BTreeMap<(u64, u64), Vec<PathBuf>> = BTreeMap::new();
        let mut dirs = vec![PathBuf::new()];
        while let Some(dir) = dirs.pop() {
            let full = root.join(&dir);
            for e in std::fs::read_dir(&full).with_context(|| format!("{}", full.display()))? {
                let rel = dir.join(e?.file_name());
                let path = root.join(&rel);
                let m = path
                    .symlink_metadata()
                    .with_context(|| format!("{}", path.display()))?;
                let entry = Entry::of(&path, &m)?;
                if entry.kind == Kind::Dir {
                    dirs.push(rel.clone());
                } else {
                    inodes
                        .entry((m.dev(), m.ino()))
                        .or_default()
                        .push(rel.clone());
                }
                tree.entries.insert(rel, entry);
            }
        }
        for group in inodes.into_values().filter(|g| g.len() > 1) {
            for p in &group {
                let mut others: Vec<PathBuf> = group.iter().filter(|o| *o != p).cloned().collect();
                others.sort();
                if let Some(e) = tree.entries.get_mut(p) {
                    e.links = others;
                }
            }
        }
        Ok(tree)
    }
}

impl Entry {
    fn of(path: &Path, m: &std::fs::Metadata) -> Result<Entry> {
        let ft = m.file_type();
        let kind = if ft.is_dir() {
            Kind::Dir
        } else if ft.is_symlink() {
            Kind::Symlink
        } else if ft.is_fifo() {
            Kind::Fifo
        } else if ft.is_socket() {
            Kind::Socket
        } else if ft.is_char_device() {
            Kind::CharDevice
        } else if ft.is_block_device() {
            Kind::BlockDevice
        } else {
            Kind::File
        };
        let sha256 = match kind {
            Kind::File => Some(file_sha256(path)?),
            _ => None,
        };
        let target = match kind {
            Kind::Symlink => Some(std::fs::read_link(path)?),
            _ => None,
        };
        let rdev = matches!(kind, Kind::CharDevice | Kind::BlockDevice)
            .then(|| (rustix::fs::major(m.rdev()), rustix::fs::minor(m.rdev())));
        Ok(Entry {
            kind,
            mode: m.mode() & 0o7777,
            uid: m.uid(),
            gid: m.gid(),
            sha256,
            target,
            rdev,
            xattrs: user_xattrs(path)?,
            links: Vec::new(),
        })
    }
}

fn file_sha256(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).with_context(|| format!("{}", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// The `user.*` xattrs of `path` itself (not a symlink's target).
fn user_xattrs(path: &Path) -> Result<BTreeMap<String, Vec<u8>>> {
    let mut out = BTreeMap::new();
    let mut names = vec![0u8; 64 * 1024];
    let n = match rustix::fs::llistxattr(path, &mut names) {
        Ok(n) => n,
        Err(rustix::io::Errno::NOTSUP) => return Ok(out),
        Err(e) => return Err(e).with_context(|| format!("listxattr {}", path.display())),
    };
    for name in names[..n].split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let name = String::from_utf8_lossy(name).into_owned();
        if !name.starts_with("user.") {
            continue;
        }
        let mut value = vec![0u8; 64 * 1024];
        let vn = rustix::fs::lgetxattr(path, name.as_str(), &mut value)
            .with_context(|| format!("getxattr {} {name}", path.display()))?;
        value.truncate(vn);
        out.insert(name, value);
    }
    Ok(out)
}

/// Every difference between `reference` and `got`, path by path, field by field.
pub fn compare(reference: &Tree, got: &Tree) -> Vec<Difference> {
    let mut out = Vec::new();
    let mut paths: Vec<&PathBuf> = reference.entries.keys().chain(got.entries.keys()).collect();
    paths.sort();
    paths.dedup();
    for path in paths {
        let diff = |field, reference: String, got: String| Difference {
            path: path.clone(),
            field,
            reference,
            got,
        };
        let (r, g) = match (reference.entries.get(path), got.entries.get(path)) {
            (Some(r), Some(g)) => (r, g),
            (r, g) => {
                let show = |e: Option<&Entry>| match e {
                    Some(e) => format!("{:?}", e.kind),
                    None => "absent".to_string(),
                };
                out.push(diff("presence", show(r), show(g)));
                continue;
            }
        };
        if r.kind != g.kind {
            // Nothing else is comparable between a file and a directory.
            out.push(diff(
                "type",
                format!("{:?}", r.kind),
                format!("{:?}", g.kind),
            ));
            continue;
        }
        let mut field = |name, a: String, b: String| {
            if a != b {
                out.push(diff(name, a, b));
            }
        };
        field("mode", format!("{:04o}", r.mode), format!("{:04o}", g.mode));
        field("uid", r.uid.to_string(), g.uid.to_string());
        field("gid", r.gid.to_string(), g.gid.to_string());
        field(
            "content sha256",
            format!("{:?}", r.sha256),
            format!("{:?}", g.sha256),
        );
        field(
            "symlink target",
            format!("{:?}", r.target),
            format!("{:?}", g.target),
        );
        field("rdev", format!("{:?}", r.rdev), format!("{:?}", g.rdev));
        field("xattrs", show_xattrs(&r.xattrs), show_xattrs(&g.xattrs));
        field(
            "hard links",
            format!("{:?}", r.links),
            format!("{:?}", g.links),
        );
    }
    out
}

fn show_xattrs(x: &BTreeMap<String, Vec<u8>>) -> String {
    let parts: Vec<String> = x
        .iter()
        .map(|(k, v)| format!("{k}={:?}", String::from_utf8_lossy(v)))
        .collect();
    format!("{{{}}}", parts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    /// A small tree: a file with a user xattr, a setuid file, a symlink, a
    /// hard link pair across directories, a fifo.
    fn make(root: &Path) {
        std::fs::create_dir(root.join("d")).unwrap();
        std::fs::write(root.join("file"), "content\n").unwrap();
        std::fs::write(root.join("setuid"), "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(root.join("setuid"), std::fs::Permissions::from_mode(0o4755))
            .unwrap();
        std::os::unix::fs::symlink("file", root.join("link")).unwrap();
        std::fs::write(root.join("a"), "linked\n").unwrap();
        std::fs::hard_link(root.join("a"), root.join("d/b")).unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            root.join("fifo"),
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o644),
            0,
        )
        .unwrap();
        rustix::fs::lsetxattr(
            root.join("file"),
            "user.crust",
            b"x",
            rustix::fs::XattrFlags::empty(),
        )
        .unwrap();
    }

    fn pair() -> (tempfile::TempDir, tempfile::TempDir) {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        make(a.path());
        make(b.path());
        (a, b)
    }

    fn fields(a: &Path, b: &Path) -> Vec<(String, &'static str)> {
        let d = compare(&Tree::scan(a).unwrap(), &Tree::scan(b).unwrap());
        d.iter()
            .map(|d| (d.path.display().to_string(), d.field))
            .collect()
    }

    #[test]
    fn equal_trees_have_no_differences() {
        let (a, b) = pair();
        let t = Tree::scan(a.path()).unwrap();
        assert_eq!(t.entries.len(), 7, "{:?}", t.entries.keys());
        assert_eq!(t.entries[Path::new("setuid")].mode, 0o4755);
        assert_eq!(t.entries[Path::new("a")].links, vec![PathBuf::from("d/b")]);
        assert_eq!(t.entries[Path::new("file")].xattrs["user.crust"], b"x");
        assert_eq!(fields(a.path(), b.path()), vec![]);
        // The root's own mode is not compared.
        std::fs::set_permissions(b.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        assert_eq!(fields(a.path(), b.path()), vec![]);
    }

    #[test]
    fn mode_content_target_xattr_links_and_presence_differences_are_named() {
        let (a, b) = pair();
        let b = b.path();
        std::fs::set_permissions(b.join("setuid"), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(b.join("file"), "other\n").unwrap();
        std::fs::remove_file(b.join("link")).unwrap();
        std::os::unix::fs::symlink("/file", b.join("link")).unwrap();
        rustix::fs::lsetxattr(
            b.join("file"),
            "user.crust",
            b"y",
            rustix::fs::XattrFlags::empty(),
        )
        .unwrap();
        // Same content, no longer the same inode.
        std::fs::remove_file(b.join("d/b")).unwrap();
        std::fs::write(b.join("d/b"), "linked\n").unwrap();
        std::fs::remove_file(b.join("fifo")).unwrap();
        std::fs::create_dir(b.join("fifo")).unwrap();
        std::fs::write(b.join("extra"), "").unwrap();
        let want = [
            ("a", "hard links"),
            ("d/b", "hard links"),
            ("extra", "presence"),
            ("fifo", "type"),
            ("file", "content sha256"),
            ("file", "xattrs"),
            ("link", "symlink target"),
            ("setuid", "mode"),
        ];
        let got = fields(a.path(), b);
        assert_eq!(
            got,
            want.iter()
                .map(|(p, f)| (p.to_string(), *f))
                .collect::<Vec<_>>()
        );
        let d = compare(&Tree::scan(a.path()).unwrap(), &Tree::scan(b).unwrap());
        let setuid = d.iter().find(|d| d.field == "mode").unwrap();
        assert_eq!(
            setuid.to_string(),
            "/setuid: mode: reference 4755, got 0755"
        );
    }

    #[test]
    fn owner_and_device_differences_are_named() {
        // chown needs root; the scanned entries carry owners either way.
        let (a, b) = pair();
        let ra = Tree::scan(a.path()).unwrap();
        let mut rb = Tree::scan(b.path()).unwrap();
        let e = rb.entries.get_mut(Path::new("file")).unwrap();
        e.uid += 1000;
        e.gid += 1000;
        let fifo = rb.entries.get_mut(Path::new("fifo")).unwrap();
        fifo.kind = Kind::CharDevice;
        let mut ra2 = ra.clone();
        let f2 = ra2.entries.get_mut(Path::new("fifo")).unwrap();
        f2.kind = Kind::CharDevice;
        f2.rdev = Some((1, 3));
        let d: Vec<String> = compare(&ra2, &rb).iter().map(|d| d.to_string()).collect();
        let (u, g) = (
            ra.entries[Path::new("file")].uid,
            ra.entries[Path::new("file")].gid,
        );
        assert_eq!(
            d,
            vec![
                "/fifo: rdev: reference Some((1, 3)), got None".to_string(),
                format!("/file: uid: reference {u}, got {}", u + 1000),
                format!("/file: gid: reference {g}, got {}", g + 1000),
            ]
        );
    }
}

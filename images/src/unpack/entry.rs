//! Writing one tar entry beneath the snapshot root: names cleaned, parents opened
//! with `openat2(RESOLVE_BENEATH)`, the last component never followed, whiteouts
//! turned into overlay's, owners, modes, xattrs and times kept.

use std::ffi::OsStr;
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use rustix::fs::{
    AtFlags, FileType, Gid, Mode, OFlags, ResolveFlags, Timespec, Timestamps, Uid, XattrFlags,
};
use rustix::io::Errno;

use crate::error::{Error, Result};
use crate::tar_reader::{self, Entry, Kind};

const WHITEOUT_PREFIX: &str = ".wh.";
const WHITEOUT_META_PREFIX: &str = ".wh..wh.";
const WHITEOUT_OPAQUE: &str = ".wh..wh..opq";
pub(super) const OPAQUE_XATTR: &str = "trusted.overlay.opaque";

/// A read error while unpacking: bad content, unless it carries our own error.
pub(super) fn bad_tar(e: io::Error) -> Error {
    // An io::Error carrying our own Error (from a tee'd download) keeps its meaning.
    if let Some(inner) = e.get_ref().and_then(|i| i.downcast_ref::<Error>()) {
        return inner.clone();
    }
    Error::BadContent(format!("reading layer: {e}"))
}

/// Writes the entries of one layer beneath its root.
pub(super) struct Unpacker<'a> {
    root: BorrowedFd<'a>,
    /// Directories made because an entry needed them, not (yet) named by one.
    implicit: std::cell::RefCell<std::collections::BTreeSet<PathBuf>>,
    /// Directories whose times are set once all their children exist.
    dirs: Vec<(PathBuf, Timestamps)>,
    buf: Vec<u8>,
    /// The parent directory of the last entry: entries of one directory come
    /// together in a tar, so most entries reuse it instead of resolving it again.
    parent: Option<Parent>,
    /// Our effective uid and gid: what a new inode gets anyway, unless its
    /// directory is setgid.
    me: (u32, u32),
}

struct Parent {
    path: PathBuf,
    fd: OwnedFd,
    /// Its group: what new inodes in it get when it is setgid (or the
    /// filesystem is mounted `grpid`).
    gid: u32,
}

impl<'a> Unpacker<'a> {
    /// An unpacker writing beneath `root`, copying data `buf_size` bytes at a time.
    pub(super) fn new(root: BorrowedFd<'a>, buf_size: usize) -> Self {
        Unpacker {
            root,
            implicit: Default::default(),
            dirs: Vec::new(),
            buf: vec![0; buf_size],
            parent: None,
            me: (
                rustix::process::geteuid().as_raw(),
                rustix::process::getegid().as_raw(),
            ),
        }
    }

    /// Directories made for entries and named by none, parents first.
    pub(super) fn into_implicit_dirs(self) -> Vec<PathBuf> {
        self.implicit.into_inner().into_iter().collect()
    }
}

fn hostile(path: impl AsRef<OsStr>, why: &str) -> Error {
    Error::BadContent(format!(
        "refusing layer: entry {:?} {why}",
        path.as_ref().to_string_lossy()
    ))
}

/// Cleans a tar name lexically, as Go's `path.Clean` does, relative to the layer
/// root: empty components and `.` go, `..` takes the previous component away, and
/// at the root of an absolute name stays there (`/../x` is `x`). A relative name
/// that climbs above the root is hostile. `None` is the root itself.
fn clean(name: &[u8]) -> Result<Option<PathBuf>> {
    let absolute = name.first() == Some(&b'/');
    let mut parts: Vec<&[u8]> = Vec::new();
    for part in name.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => {
                if parts.pop().is_none() && !absolute {
                    return Err(hostile(
                        OsStr::from_bytes(name),
                        "climbs above the layer root",
                    ));
                }
            }
            part => parts.push(part),
        }
    }
    Ok(if parts.is_empty() {
        None
    } else {
        Some(PathBuf::from(OsStr::from_bytes(&parts.join(&b'/'))))
    })
}

pub(super) fn errno_err(path: &Path, what: &str, e: Errno) -> Error {
    if e == Errno::XDEV || e == Errno::LOOP {
        hostile(path, "leads outside the layer through a link")
    } else {
        Error::Internal(format!("{what} {:?}: {e}", path.to_string_lossy()))
    }
}

impl Unpacker<'_> {
    /// The parent directory `rel` of an entry, from the cache when the last entry had
    /// the same one. The cache stays valid: an entry only ever removes or replaces
    /// something inside its own parent, and a different parent replaces the cache.
    fn take_parent(&mut self, rel: &Path) -> Result<Parent> {
        if let Some(p) = self.parent.take()
            && p.path == rel
        {
            return Ok(p);
        }
        let fd = self.open_dir(rel, OFlags::PATH)?;
        let st = rustix::fs::fstat(&fd).map_err(|e| errno_err(rel, "stat", e))?;
        Ok(Parent {
            path: rel.to_path_buf(),
            fd,
            gid: st.st_gid,
        })
    }

    /// Whether a new inode in `parent` must be chowned to get `owner`: unless
    /// `owner` is us and the directory's group is ours too, so that the new
    /// inode has our group whichever rule gives it one (ours, or the
    /// directory's when it is setgid or the filesystem is mounted `grpid`).
    fn needs_chown(&self, parent: &Parent, owner: (u32, u32)) -> bool {
        owner != self.me || parent.gid != self.me.1
    }

    /// Opens directory `rel` (relative to root), never leaving root. Missing directories
    /// are created (0755), as tar files may omit parent entries.
    fn open_dir(&self, rel: &Path, flags: OFlags) -> Result<OwnedFd> {
        let how = ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS;
        let flags = flags | OFlags::DIRECTORY | OFlags::CLOEXEC;
        let target = if rel.as_os_str().is_empty() {
            Path::new(".")
        } else {
            rel
        };
        match rustix::fs::openat2(self.root, target, flags, Mode::empty(), how) {
            Ok(fd) => return Ok(fd),
            Err(Errno::NOENT) => {}
            Err(e) => return Err(errno_err(rel, "open", e)),
        }
        let mut cur = rustix::io::dup(self.root).map_err(|e| errno_err(rel, "dup", e))?;
        let mut made = PathBuf::new();
        for comp in rel.components() {
            let Component::Normal(name) = comp else {
                return Err(hostile(rel, "is not a clean path"));
            };
            made.push(name);
            match rustix::fs::mkdirat(&cur, name, Mode::from_raw_mode(0o755)) {
                Ok(()) => {
                    self.implicit.borrow_mut().insert(made.clone());
                }
                Err(Errno::EXIST) => {}
                Err(e) => return Err(errno_err(rel, "mkdir", e)),
            }
            cur = rustix::fs::openat2(&cur, name, flags | OFlags::PATH, Mode::empty(), how)
                .map_err(|e| errno_err(rel, "open", e))?;
        }
        if flags.contains(OFlags::PATH) {
            Ok(cur)
        } else {
            rustix::fs::openat2(self.root, target, flags, Mode::empty(), how)
                .map_err(|e| errno_err(rel, "open", e))
        }
    }

    /// Removes whatever is at `name` in `dir`, unless it is a directory and `keep_dir`.
    /// Returns whether a directory was kept.
    fn clear(&self, dir: &OwnedFd, name: &OsStr, keep_dir: bool, path: &Path) -> Result<bool> {
        match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            Err(Errno::NOENT) => Ok(false),
            Err(e) => Err(errno_err(path, "stat", e)),
            Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {
                if keep_dir {
                    return Ok(true);
                }
                // A later entry replaces a directory: remove the whole tree, which lies
                // inside this layer because `dir` was opened beneath the root.
                let proc = PathBuf::from(format!("/proc/self/fd/{}", raw(dir))).join(name);
                std::fs::remove_dir_all(&proc)
                    .map_err(|e| Error::io(format!("replace directory {}", path.display()), e))?;
                Ok(false)
            }
            Ok(_) => {
                rustix::fs::unlinkat(dir, name, AtFlags::empty())
                    .map_err(|e| errno_err(path, "unlink", e))?;
                Ok(false)
            }
        }
    }

    pub(super) fn entry<R: Read>(
        &mut self,
        archive: &mut tar_reader::Reader<R>,
        e: &Entry,
    ) -> Result<()> {
        let Some(path) = clean(&e.name)? else {
            return Ok(()); // the root itself: the snapshot root keeps its own
        };
        let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
            return Ok(());
        };
        let name_str = name.to_string_lossy();

        if name_str == WHITEOUT_OPAQUE {
            let dir = self.open_dir(parent, OFlags::RDONLY)?;
            rustix::fs::fsetxattr(&dir, OPAQUE_XATTR, b"y", XattrFlags::empty())
                .map_err(|e| errno_err(&path, "set opaque xattr on", e))?;
            return Ok(());
        }
        if name_str.starts_with(WHITEOUT_META_PREFIX) {
            return Ok(()); // aufs bookkeeping (.wh..wh.plnk etc.): meaningless for overlay
        }
        let owner = (Some(Uid::from_raw(e.uid)), Some(Gid::from_raw(e.gid)));
        let cached = self.take_parent(parent)?;
        let chown_new = self.needs_chown(&cached, (e.uid, e.gid));
        let r = self.entry_in(archive, e, &cached.fd, &path, name, owner, chown_new);
        self.parent = Some(cached);
        r
    }

    /// The body of [`Self::entry`], with the entry's parent directory open as `dir`.
    /// `chown_new`: whether an inode it creates needs a chown to get `owner`.
    #[allow(clippy::too_many_arguments)]
    fn entry_in<R: Read>(
        &mut self,
        archive: &mut tar_reader::Reader<R>,
        e: &Entry,
        dir: &OwnedFd,
        path: &Path,
        name: &OsStr,
        owner: (Option<Uid>, Option<Gid>),
        chown_new: bool,
    ) -> Result<()> {
        let path = path.to_path_buf();
        let name_str = name.to_string_lossy();
        let kind = e.kind;
        let mode = e.mode;
        let times = timestamps(e);
        let nofollow = AtFlags::SYMLINK_NOFOLLOW;
        if let Some(hidden) = name_str.strip_prefix(WHITEOUT_PREFIX) {
            let hidden = OsStr::new(hidden);
            self.clear(dir, hidden, false, &path)?;
            rustix::fs::mknodat(
                dir,
                hidden,
                FileType::CharacterDevice,
                Mode::empty(),
                rustix::fs::makedev(0, 0),
            )
            .map_err(|e| errno_err(&path, "create whiteout", e))?;
            rustix::fs::chownat(dir, hidden, owner.0, owner.1, nofollow)
                .map_err(|e| errno_err(&path, "chown", e))?;
            return Ok(());
        }

        let xattrs = layer_xattrs(e);
        match kind {
            Kind::Directory => {
                let mkdir = || rustix::fs::mkdirat(dir, name, Mode::from_raw_mode(0o755));
                // Made first; only what stands in the way is looked at.
                let created = match mkdir() {
                    Ok(()) => true,
                    Err(Errno::EXIST) if self.clear(dir, name, true, &path)? => false,
                    Err(Errno::EXIST) => {
                        mkdir().map_err(|e| errno_err(&path, "mkdir", e))?;
                        true
                    }
                    Err(e) => return Err(errno_err(&path, "mkdir", e)),
                };
                let fd = rustix::fs::openat(
                    dir,
                    name,
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(|e| errno_err(&path, "open", e))?;
                if chown_new || !created {
                    rustix::fs::fchown(&fd, owner.0, owner.1)
                        .map_err(|e| errno_err(&path, "chown", e))?;
                }
                rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode))
                    .map_err(|e| errno_err(&path, "chmod", e))?;
                set_xattrs(&fd, &xattrs, &path)?;
                self.implicit.borrow_mut().remove(&path);
                self.dirs.push((path, times));
            }
            Kind::Regular => {
                let create = || {
                    rustix::fs::openat(
                        dir,
                        name,
                        OFlags::WRONLY
                            | OFlags::CREATE
                            | OFlags::EXCL
                            | OFlags::NOFOLLOW
                            | OFlags::CLOEXEC,
                        Mode::from_raw_mode(0o600),
                    )
                };
                let fd = match create() {
                    Err(Errno::EXIST) => {
                        self.clear(dir, name, false, &path)?;
                        create()
                    }
                    r => r,
                }
                .map_err(|e| errno_err(&path, "create", e))?;
                let file = std::fs::File::from(fd);
                self.write_data(archive, &file, e.size, &path)?;
                // chown before chmod: chown clears setuid/setgid bits.
                if chown_new {
                    rustix::fs::fchown(&file, owner.0, owner.1)
                        .map_err(|e| errno_err(&path, "chown", e))?;
                }
                rustix::fs::fchmod(&file, Mode::from_raw_mode(mode))
                    .map_err(|e| errno_err(&path, "chmod", e))?;
                set_xattrs(&file, &xattrs, &path)?;
                rustix::fs::futimens(&file, &times).map_err(|e| errno_err(&path, "utimes", e))?;
            }
            Kind::Symlink => {
                if e.link.is_empty() {
                    return Err(hostile(&path, "is a symlink without target"));
                }
                // The target is stored, never followed while unpacking.
                let target = OsStr::from_bytes(&e.link);
                let link = || rustix::fs::symlinkat(target, dir, name);
                match link() {
                    Err(Errno::EXIST) => {
                        self.clear(dir, name, false, &path)?;
                        link()
                    }
                    r => r,
                }
                .map_err(|e| errno_err(&path, "symlink", e))?;
                if chown_new {
                    rustix::fs::chownat(dir, name, owner.0, owner.1, nofollow)
                        .map_err(|e| errno_err(&path, "chown", e))?;
                }
                rustix::fs::utimensat(dir, name, &times, nofollow)
                    .map_err(|e| errno_err(&path, "utimes", e))?;
            }
            Kind::HardLink => {
                let target =
                    clean(&e.link)?.ok_or_else(|| hostile(&path, "is a hard link to the root"))?;
                let (Some(tparent), Some(tname)) = (target.parent(), target.file_name()) else {
                    return Err(hostile(&path, "has a bad hard link target"));
                };
                let tdir = self.open_dir(tparent, OFlags::PATH)?;
                self.clear(dir, name, false, &path)?;
                // flags 0: a hard link to a symlink links the symlink itself, never what
                // it points to, so the link cannot reach outside.
                rustix::fs::linkat(&tdir, tname, dir, name, AtFlags::empty()).map_err(|e| {
                    if e == Errno::NOENT {
                        hostile(&path, "links to a file not in this layer")
                    } else {
                        errno_err(&path, "link", e)
                    }
                })?;
            }
            Kind::Char | Kind::Block | Kind::Fifo => {
                let ftype = match kind {
                    Kind::Char => FileType::CharacterDevice,
                    Kind::Block => FileType::BlockDevice,
                    _ => FileType::Fifo,
                };
                // The reader gives a fifo no device numbers.
                let (major, minor) = (e.dev_major, e.dev_minor);
                self.clear(dir, name, false, &path)?;
                rustix::fs::mknodat(
                    dir,
                    name,
                    ftype,
                    Mode::from_raw_mode(mode),
                    rustix::fs::makedev(major, minor),
                )
                .map_err(|e| errno_err(&path, "mknod", e))?;
                rustix::fs::chownat(dir, name, owner.0, owner.1, nofollow)
                    .map_err(|e| errno_err(&path, "chown", e))?;
                rustix::fs::chmodat(dir, name, Mode::from_raw_mode(mode), AtFlags::empty())
                    .map_err(|e| errno_err(&path, "chmod", e))?;
                rustix::fs::utimensat(dir, name, &times, nofollow)
                    .map_err(|e| errno_err(&path, "utimes", e))?;
            }
            // GNU volume labels, vendor types: their data is skipped.
            Kind::Other(_) => {}
        }
        Ok(())
    }

    /// Writes a regular file's data, fragment by fragment at its offsets, so that a
    /// sparse file keeps its holes; then makes the file `size` bytes long.
    fn write_data<R: Read>(
        &mut self,
        archive: &mut tar_reader::Reader<R>,
        file: &std::fs::File,
        size: u64,
        path: &Path,
    ) -> Result<()> {
        use std::os::unix::fs::FileExt;
        let mut end = 0;
        loop {
            let (offset, n) = archive.read_data(&mut self.buf).map_err(bad_tar)?;
            if n == 0 {
                break;
            }
            file.write_all_at(&self.buf[..n], offset)
                .map_err(|e| Error::io(format!("write {}", path.display()), e))?;
            end = end.max(offset + n as u64);
        }
        if end < size {
            file.set_len(size)
                .map_err(|e| Error::io(format!("extend {}", path.display()), e))?;
        }
        Ok(())
    }

    pub(super) fn finish_dirs(&mut self) -> Result<()> {
        for (path, times) in std::mem::take(&mut self.dirs).into_iter().rev() {
            let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
                continue;
            };
            let dir = self.open_dir(parent, OFlags::PATH)?;
            match rustix::fs::utimensat(&dir, name, &times, AtFlags::SYMLINK_NOFOLLOW) {
                // A later entry may have replaced or whited out the directory.
                Ok(()) | Err(Errno::NOENT) => {}
                Err(e) => return Err(errno_err(&path, "utimes", e)),
            }
        }
        Ok(())
    }
}

/// The raw descriptor, for calls rustix does not wrap.
fn raw(fd: &OwnedFd) -> i32 {
    use std::os::fd::AsRawFd;
    fd.as_raw_fd()
}

/// The entry's extended attributes, less any a layer must not set: overlay's own
/// metadata (redirects, opaque markers) is never taken from a tar.
fn layer_xattrs(e: &Entry) -> Vec<(Vec<u8>, Vec<u8>)> {
    e.xattrs
        .iter()
        .filter(|(name, _)| !name.starts_with(b"trusted.overlay."))
        .cloned()
        .collect()
}

/// The entry's times as containerd's applier sets them: mtime as stored, atime the
/// later of the stored atime and mtime.
fn timestamps(e: &Entry) -> Timestamps {
    let ts = |(secs, nanos): tar_reader::Time| Timespec {
        tv_sec: secs,
        tv_nsec: nanos.into(),
    };
    let atime = e.atime.map_or(e.mtime, |a| a.max(e.mtime));
    Timestamps {
        last_access: ts(atime),
        last_modification: ts(e.mtime),
    }
}

/// Sets `xattrs` on `fd` (the inode at `path`).
fn set_xattrs(fd: impl AsFd, xattrs: &[(Vec<u8>, Vec<u8>)], path: &Path) -> Result<()> {
    for (name, value) in xattrs {
        rustix::fs::fsetxattr(
            fd.as_fd(),
            OsStr::from_bytes(name),
            value,
            XattrFlags::empty(),
        )
        .map_err(|e| errno_err(path, "set xattr on", e))?;
    }
    Ok(())
}

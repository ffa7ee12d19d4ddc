//! Layer unpacking: a (gzip | zstd | plain) tar stream into one empty directory, in the
//! form overlayfs expects.
//!
//! The tar stream is read by [`crate::tar_reader`], which reads what Go's `archive/tar`
//! reads. Names: a leading `/` or `./` is the layer root; `/`, `.` and `./` name the
//! root itself, and such an entry is ignored, as containerd's applier ignores it (the
//! snapshot root keeps its own mode, owner and times); names are cleaned lexically as
//! Go's `path.Clean` does (`a/../b` is `b`, `/../x` is `x`), and only a name that still
//! climbs above the root refuses the layer. Hard-link targets follow the same rules.
//! Sparse files are written with their holes.
//!
//! Safety: every parent directory is opened with `openat2(RESOLVE_BENEATH)` relative
//! to the snapshot root, so a symlink or hard link that would lead outside fails with EXDEV and
//! refuses the layer (consecutive entries of one directory share that opened parent).
//! The last path component is never followed: inodes are created with `O_EXCL |
//! O_NOFOLLOW` (or `symlinkat`/`mkdirat`, which never follow), and whatever stands in the
//! way is unlinked first. A chown is skipped only where the new inode already has the
//! owner asked for (ours, in a directory of our group). The caller deletes
//! the directory when this returns an error, so a refused layer leaves nothing.
//!
//! Whiteouts: `.wh.NAME` becomes a character device 0/0 named NAME, and `.wh..wh..opq`
//! sets `trusted.overlay.opaque=y` on its directory.

use std::ffi::OsStr;
use std::io::{self, BufRead, BufReader, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use rustix::fs::{
    AtFlags, FileType, Gid, Mode, OFlags, ResolveFlags, Timespec, Timestamps, Uid, XattrFlags,
};
use rustix::io::Errno;

use crate::digest::Digester;
use crate::error::{Error, Result};
use crate::tar_reader::{self, Entry, Kind};

const WHITEOUT_PREFIX: &str = ".wh.";
const WHITEOUT_META_PREFIX: &str = ".wh..wh.";
const WHITEOUT_OPAQUE: &str = ".wh..wh..opq";
const OPAQUE_XATTR: &str = "trusted.overlay.opaque";
const COPY_BUF: usize = 256 * 1024;

/// What unpacking a layer produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unpacked {
    /// sha256 of the uncompressed tar: must equal the config's diff id.
    pub diff_id: String,
    /// Uncompressed size in bytes.
    pub size: u64,
    /// Directories the layer holds files in but has no entry for, parents first:
    /// made 0755 here, they take their owner, mode and times from the layers below
    /// once those are known ([`inherit_implicit_dirs`]), as containerd's applier,
    /// which unpacks onto the view of the layers below, leaves them.
    pub implicit_dirs: Vec<PathBuf>,
}

/// Unpacks the layer read from `reader` into `dest`, an existing empty directory.
/// Compression is detected from the stream's first bytes.
pub fn unpack_layer(reader: impl Read, dest: &Path) -> Result<Unpacked> {
    match Decompressor::new(BufReader::with_capacity(COPY_BUF, reader)) {
        Ok(d) => unpack_tar(d, dest),
        Err(e) => Err(bad_tar(e)),
    }
}

/// Unpacks like [`unpack_layer`], with the decompression on a thread of its own that
/// feeds the unpacker: inflating and writing the files overlap on two cores instead of
/// taking turns on one. Once the compressed stream has ended, or the unpacker has
/// stopped, that thread reads `reader` to its end and runs `finish` with it and what
/// that last read gave, while the unpacker may still be writing.
pub fn unpack_layer_overlapped<R, T, F>(reader: R, dest: &Path, finish: F) -> (Result<Unpacked>, T)
where
    R: Read + Send,
    T: Send,
    F: FnOnce(R, io::Result<u64>) -> T + Send,
{
    // The reader and `finish` reach the thread through a channel, so that they stay
    // here if no thread can be started (then all of it runs on this one).
    let (work_tx, work_rx) = std::sync::mpsc::sync_channel(1);
    let (tx, rx) = std::sync::mpsc::sync_channel::<Chunk>(CHUNKS_IN_FLIGHT);
    let (spent_tx, spent_rx) = std::sync::mpsc::channel::<Vec<u8>>();
    std::thread::scope(|s| {
        let inflater = std::thread::Builder::new()
            .name("crust-inflate".into())
            .spawn_scoped(s, move || {
                let (reader, finish) = work_rx.recv().ok()?;
                let mut buffered = BufReader::with_capacity(COPY_BUF, reader);
                match Decompressor::new(&mut buffered) {
                    Ok(mut d) => loop {
                        let mut buf = spent_rx.try_recv().unwrap_or_default();
                        buf.resize(CHUNK, 0);
                        let chunk = match d.read(&mut buf) {
                            Ok(0) => Chunk::End,
                            Ok(n) => {
                                buf.truncate(n);
                                Chunk::Data(buf)
                            }
                            Err(e) => Chunk::Failed(e),
                        };
                        let last = !matches!(chunk, Chunk::Data(_));
                        // A send fails when the unpacker has stopped: it has its error.
                        if tx.send(chunk).is_err() || last {
                            break;
                        }
                    },
                    Err(e) => {
                        let _ = tx.send(Chunk::Failed(e));
                    }
                }
                drop(tx);
                let drained = io::copy(&mut buffered, &mut io::sink());
                let finish: F = finish;
                Some(finish(buffered.into_inner(), drained))
            });
        let inflater = match inflater {
            Ok(h) => h,
            Err(e) => {
                tracing::debug!("no decompression thread ({e}): unpacking on one");
                let mut reader = reader;
                let unpacked = unpack_layer(&mut reader, dest);
                let drained = io::copy(&mut reader, &mut io::sink());
                return (unpacked, finish(reader, drained));
            }
        };
        // The thread is waiting for exactly this.
        let _ = work_tx.send((reader, finish));
        let unpacked = unpack_tar(
            ChunkReader {
                rx,
                spent: spent_tx,
                cur: Vec::new(),
                pos: 0,
                ended: false,
            },
            dest,
        );
        match inflater.join() {
            Ok(Some(t)) => (unpacked, t),
            Ok(None) => unreachable!("the decompression thread always gets its work"),
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

/// Decompressed bytes handed from the decompression thread to the unpacker.
const CHUNK: usize = 64 * 1024;
/// Chunks between the two threads: enough to keep both busy, little memory.
const CHUNKS_IN_FLIGHT: usize = 8;

enum Chunk {
    Data(Vec<u8>),
    End,
    Failed(io::Error),
}

/// The unpacker's end of the channel from the decompression thread. Spent buffers go
/// back to be filled again.
struct ChunkReader {
    rx: std::sync::mpsc::Receiver<Chunk>,
    spent: std::sync::mpsc::Sender<Vec<u8>>,
    cur: Vec<u8>,
    pos: usize,
    ended: bool,
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.cur.len() {
            if self.ended {
                return Ok(0);
            }
            match self.rx.recv() {
                Ok(Chunk::Data(next)) => {
                    let spent = std::mem::replace(&mut self.cur, next);
                    self.pos = 0;
                    if spent.capacity() > 0 {
                        let _ = self.spent.send(spent);
                    }
                }
                Ok(Chunk::End) => self.ended = true,
                Ok(Chunk::Failed(e)) => return Err(e),
                // Gone without saying it is done: never taken for the end of the layer.
                Err(_) => return Err(io::Error::other("decompression stopped")),
            }
        }
        let n = buf.len().min(self.cur.len() - self.pos);
        buf[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// A layer's bytes, decompressed as its first bytes say (gzip, zstd, or none).
enum Decompressor<B: BufRead> {
    Gzip(Box<flate2::bufread::MultiGzDecoder<B>>),
    Zstd(zstd::stream::read::Decoder<'static, B>),
    Plain(B),
}

impl<B: BufRead> Decompressor<B> {
    fn new(mut inner: B) -> io::Result<Self> {
        let head = inner.fill_buf()?;
        Ok(if head.starts_with(&[0x1f, 0x8b]) {
            Decompressor::Gzip(Box::new(flate2::bufread::MultiGzDecoder::new(inner)))
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Decompressor::Zstd(
                zstd::stream::read::Decoder::with_buffer(inner)
                    .map_err(|e| io::Error::other(Error::Internal(format!("zstd decoder: {e}"))))?,
            )
        } else {
            Decompressor::Plain(inner)
        })
    }
}

impl<B: BufRead> Read for Decompressor<B> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Decompressor::Gzip(d) => d.read(buf),
            Decompressor::Zstd(d) => d.read(buf),
            Decompressor::Plain(d) => d.read(buf),
        }
    }
}

/// Unpacks the uncompressed tar read from `tar` into `dest`, hashing every byte.
fn unpack_tar(tar: impl Read, dest: &Path) -> Result<Unpacked> {
    let mut hashing = HashingReader {
        inner: tar,
        digester: Digester::new(),
        size: 0,
    };
    let root = rustix::fs::open(
        dest,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        Mode::empty(),
    )
    .map_err(|e| Error::Internal(format!("open {}: {e}", dest.display())))?;
    let mut unpacker = Unpacker {
        root: root.as_fd(),
        implicit: Default::default(),
        dirs: Vec::new(),
        buf: vec![0; COPY_BUF],
        parent: None,
        me: (
            rustix::process::geteuid().as_raw(),
            rustix::process::getegid().as_raw(),
        ),
    };
    {
        let mut archive = tar_reader::Reader::new(&mut hashing);
        while let Some(entry) = archive.next_entry().map_err(bad_tar)? {
            unpacker.entry(&mut archive, &entry)?;
        }
    }
    // The tar reader stops at the end of the archive; hash whatever follows too.
    io::copy(&mut hashing, &mut io::sink()).map_err(bad_tar)?;
    unpacker.finish_dirs()?;
    Ok(Unpacked {
        diff_id: hashing.digester.finish(),
        size: hashing.size,
        implicit_dirs: unpacker.implicit.into_inner().into_iter().collect(),
    })
}

/// Turns a read error while unpacking into ours, keeping a download's own error.
pub fn io_to_error(e: io::Error) -> Error {
    bad_tar(e)
}

fn bad_tar(e: io::Error) -> Error {
    // An io::Error carrying our own Error (from a tee'd download) keeps its meaning.
    if let Some(inner) = e.get_ref().and_then(|i| i.downcast_ref::<Error>()) {
        return inner.clone();
    }
    Error::BadContent(format!("reading layer: {e}"))
}

struct HashingReader<R> {
    inner: R,
    digester: Digester,
    size: u64,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.digester.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }
}

struct Unpacker<'a> {
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

fn errno_err(path: &Path, what: &str, e: Errno) -> Error {
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

    fn entry<R: Read>(&mut self, archive: &mut tar_reader::Reader<R>, e: &Entry) -> Result<()> {
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

    fn finish_dirs(&mut self) -> Result<()> {
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

fn raw(fd: &OwnedFd) -> i32 {
    use std::os::fd::AsRawFd;
    fd.as_raw_fd()
}

/// Gives each of `dirs` in the unpacked layer `fs` the owner, mode and times of the
/// same directory in the nearest of `lowers` (the layers below, top first) that has
/// it; a lower layer holding something else there (a file, a whiteout, a symlink on
/// the way) ends the search and the directory stays as it was made. Nothing is
/// followed: both sides are opened beneath their roots without symlinks.
pub fn inherit_implicit_dirs(fs: &Path, dirs: &[PathBuf], lowers: &[PathBuf]) -> Result<()> {
    let open_root = |p: &Path| {
        rustix::fs::open(
            p,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
            Mode::empty(),
        )
        .map_err(|e| Error::Internal(format!("open {}: {e}", p.display())))
    };
    let how = ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
    let upper = open_root(fs)?;
    let lowers = lowers
        .iter()
        .map(|l| open_root(l))
        .collect::<Result<Vec<_>>>()?;
    for dir in dirs {
        let Ok(fd) = rustix::fs::openat2(
            &upper,
            dir,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
            how,
        ) else {
            continue; // replaced by a later entry of the layer
        };
        for lower in &lowers {
            let st = match rustix::fs::openat2(
                lower,
                dir,
                OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
                how,
            ) {
                Ok(l) => rustix::fs::fstat(&l).map_err(|e| errno_err(dir, "stat", e))?,
                Err(Errno::NOENT) => continue,
                Err(_) => break,
            };
            if FileType::from_raw_mode(st.st_mode) != FileType::Directory {
                break;
            }
            let owner = (
                Some(Uid::from_raw(st.st_uid)),
                Some(Gid::from_raw(st.st_gid)),
            );
            rustix::fs::fchown(&fd, owner.0, owner.1).map_err(|e| errno_err(dir, "chown", e))?;
            rustix::fs::fchmod(&fd, Mode::from_raw_mode(st.st_mode & 0o7777))
                .map_err(|e| errno_err(dir, "chmod", e))?;
            let ts = |s: i64, ns: i64| Timespec {
                tv_sec: s,
                tv_nsec: ns,
            };
            let times = Timestamps {
                last_access: ts(st.st_atime, st.st_atime_nsec as i64),
                last_modification: ts(st.st_mtime, st.st_mtime_nsec as i64),
            };
            rustix::fs::futimens(&fd, &times).map_err(|e| errno_err(dir, "utimes", e))?;
            break;
        }
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};

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
        std::fs::set_permissions(lower.join("tmp"), std::fs::Permissions::from_mode(0o1777))
            .unwrap();
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
        let (u, cursor) =
            unpack_layer_overlapped(io::Cursor::new(layer.clone()), &s.layer, |c, _| c);
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
        let (u, drained) =
            unpack_layer_overlapped(Cut(gzip(&tar), 0), &s.layer, |_, drained| drained);
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
}

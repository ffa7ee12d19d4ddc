//! A streaming tar reader that reads what Go's `archive/tar` reads — the reader that
//! containerd, CRI-O and Docker all unpack layers through — so that a layer any of
//! them applies, crust applies too.
//!
//! - Header layouts: v7, ustar (with its name prefix), star and GNU; numbers in octal
//!   or base-256; a checksum that matches the unsigned or the signed byte sum.
//! - Extensions: PAX `x` records (path, linkpath, size, uid, gid, mtime and atime
//!   with fractions, `SCHILY.xattr.*`; an empty value keeps the header's), GNU long
//!   names and link names (`L`, `K`); a later GNU long name beats a PAX path, as in
//!   Go. PAX global headers (`g`) are read and, as in Go, not applied to later
//!   entries.
//! - Sparse files: old GNU (`S` with its map in the header and extension blocks)
//!   and PAX GNU sparse 0.0, 0.1 and 1.0. Their data comes out as fragments at
//!   their offsets; the holes are left for the caller to keep as holes.
//! - Endings: two zero blocks end the archive and anything after them is not read
//!   here. The archive also ends where the stream ends at a header boundary, after
//!   one zero block, or inside the padding after the last entry's data (umoci 0.4
//!   writes such layers). An entry's data cut short, or a header cut short, is an
//!   error (`UnexpectedEof`).
//! - Header-only types (links, devices, directories, fifos) have no data, whatever
//!   their size field says; a type-`\0` entry whose name ends in `/` is a directory.
//!
//! Names are returned as stored; cleaning them is the unpacker's job.

#[cfg(test)]
mod fuzz;
mod header;
mod pax;
mod sparse;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::io::{self, Read};

use header::BLOCK;

/// Longest PAX header or GNU long name read, as in Go.
const MAX_SPECIAL: u64 = 1 << 20;
/// Most fragments a sparse map may have: bounds the memory a hostile map takes.
const MAX_SPARSE_ENTRIES: usize = 1 << 16;

/// What kind of file an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Types `0`, `\0`, `7` (contiguous) and `S` (GNU sparse).
    Regular,
    HardLink,
    Symlink,
    Char,
    Block,
    Directory,
    Fifo,
    /// Anything else (GNU volume labels, multi-volume continuations, vendor types):
    /// its data is skipped.
    Other(u8),
}

impl Kind {
    fn from_flag(flag: u8) -> Kind {
        match flag {
            b'0' | 0 | b'7' | b'S' => Kind::Regular,
            b'1' => Kind::HardLink,
            b'2' => Kind::Symlink,
            b'3' => Kind::Char,
            b'4' => Kind::Block,
            b'5' => Kind::Directory,
            b'6' => Kind::Fifo,
            other => Kind::Other(other),
        }
    }

    /// Types that never carry data, whatever the size field says.
    fn header_only(flag: u8) -> bool {
        matches!(flag, b'1'..=b'6')
    }
}

/// A point in time: seconds since the epoch and nanoseconds (0..1e9).
pub type Time = (i64, u32);

/// One file of the archive, with every extension merged in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub kind: Kind,
    /// The name as stored (not cleaned).
    pub name: Vec<u8>,
    /// Symlink target, or hard link target (as stored).
    pub link: Vec<u8>,
    /// A regular file's size (the logical size of a sparse file); 0 for others.
    pub size: u64,
    /// Permission bits with setuid, setgid and sticky.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: Time,
    /// From a GNU header or a PAX record, when the archive has one.
    pub atime: Option<Time>,
    pub dev_major: u32,
    pub dev_minor: u32,
    /// `SCHILY.xattr.NAME` records: (NAME, value), in name order.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// Reads entries one by one from an uncompressed tar stream.
pub struct Reader<R> {
    r: R,
    /// Bytes of the current entry's data still in the stream.
    remaining: u64,
    /// Padding after the current entry's data.
    pad: u64,
    /// The current entry's data fragments still to read: (offset in the file, length).
    fragments: VecDeque<(u64, u64)>,
    /// Set once the archive has ended.
    done: bool,
}

pub(crate) fn bad(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

fn cut_short(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, format!("{what} cut short"))
}

/// Reads as much of `buf` as the stream has; fewer bytes only at its end.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

fn padding(size: u64) -> u64 {
    (BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64
}

fn to_u32(v: i64, what: &str) -> io::Result<u32> {
    u32::try_from(v).map_err(|_| bad(format!("{what} {v} out of range in tar header")))
}

impl<R: Read> Reader<R> {
    pub fn new(r: R) -> Self {
        Reader {
            r,
            remaining: 0,
            pad: 0,
            fragments: VecDeque::new(),
            done: false,
        }
    }

    /// The next file of the archive, or `None` at its end. Whatever is left of the
    /// previous entry's data is skipped first.
    pub fn next_entry(&mut self) -> io::Result<Option<Entry>> {
        if self.done {
            return Ok(None);
        }
        let mut pax_records = pax::Records::new();
        let mut long_name: Option<Vec<u8>> = None;
        let mut long_link: Option<Vec<u8>> = None;
        loop {
            self.skip_data()?;
            let Some(h) = self.read_header()? else {
                self.done = true;
                return Ok(None);
            };
            if h.size < 0 {
                return Err(bad("negative size in tar header"));
            }
            let data = if Kind::header_only(h.typeflag) {
                0
            } else {
                h.size as u64
            };
            self.start_data(data);
            match h.typeflag {
                b'x' => pax_records = pax::parse(&self.read_special("PAX header")?)?,
                // Read for its validity only: Go does not apply global records either.
                b'g' => drop(pax::parse(&self.read_special("PAX global header")?)?),
                b'L' => long_name = Some(header::string(&self.read_special("long name")?).into()),
                b'K' => long_link = Some(header::string(&self.read_special("long link")?).into()),
                _ => return self.entry(h, &pax_records, long_name, long_link).map(Some),
            }
        }
    }

    /// Reads the next piece of the current entry's data into `buf`: returns where it
    /// belongs in the file and its length. A length of 0 means the data is complete;
    /// a sparse file's holes are never returned (the file is [`Entry::size`] long).
    pub fn read_data(&mut self, buf: &mut [u8]) -> io::Result<(u64, usize)> {
        while let Some(&(offset, len)) = self.fragments.front() {
            if len == 0 {
                self.fragments.pop_front();
                continue;
            }
            let want = buf.len().min(usize::try_from(len).unwrap_or(usize::MAX));
            let n = loop {
                match self.r.read(&mut buf[..want]) {
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    r => break r?,
                }
            };
            if n == 0 {
                return Err(cut_short("file data"));
            }
            self.remaining -= n as u64;
            let front = self.fragments.front_mut().expect("checked above");
            *front = (offset + n as u64, len - n as u64);
            return Ok((offset, n));
        }
        Ok((0, 0))
    }

    #[cfg(test)]
    /// The stream after the archive's end (or wherever reading stopped).
    pub fn into_inner(self) -> R {
        self.r
    }

    fn start_data(&mut self, size: u64) {
        self.remaining = size;
        self.pad = padding(size);
        self.fragments.clear();
        self.fragments.push_back((0, size));
    }

    /// Skips what is left of the current entry's data and its padding. Data cut short
    /// is an error; padding cut short is the end of the archive (as in Go).
    fn skip_data(&mut self) -> io::Result<()> {
        let n = io::copy(&mut (&mut self.r).take(self.remaining), &mut io::sink())?;
        if n < self.remaining {
            return Err(cut_short("file data"));
        }
        self.remaining = 0;
        self.fragments.clear();
        let pad = self.pad;
        self.pad = 0;
        let mut scratch = [0u8; BLOCK];
        if read_full(&mut self.r, &mut scratch[..pad as usize])? < pad as usize {
            self.done = true;
        }
        Ok(())
    }

    /// The next header block, or `None` at the end of the archive.
    fn read_header(&mut self) -> io::Result<Option<header::Header>> {
        if self.done {
            return Ok(None);
        }
        let mut block = [0u8; BLOCK];
        match read_full(&mut self.r, &mut block)? {
            0 => return Ok(None),
            BLOCK => {}
            _ => return Err(cut_short("tar header")),
        }
        if header::is_zero(&block) {
            match read_full(&mut self.r, &mut block)? {
                0 => return Ok(None),
                BLOCK if header::is_zero(&block) => return Ok(None),
                BLOCK => return Err(bad("invalid tar header after a zero block")),
                _ => return Err(cut_short("tar header")),
            }
        }
        header::parse(&block).map(Some)
    }

    /// The whole data of a PAX header or GNU long name.
    fn read_special(&mut self, what: &str) -> io::Result<Vec<u8>> {
        if self.remaining > MAX_SPECIAL {
            return Err(bad(format!("{what} larger than {MAX_SPECIAL} bytes")));
        }
        let mut data = vec![0; self.remaining as usize];
        if read_full(&mut self.r, &mut data)? < data.len() {
            return Err(cut_short(what));
        }
        self.remaining = 0;
        self.fragments.clear();
        Ok(data)
    }

    /// The entry a file header describes, with the extensions before it merged in.
    fn entry(
        &mut self,
        mut h: header::Header,
        records: &pax::Records,
        long_name: Option<Vec<u8>>,
        long_link: Option<Vec<u8>>,
    ) -> io::Result<Entry> {
        let mut mtime: Time = (h.mtime, 0);
        let mut atime: Option<Time> = h.atime.map(|s| (s, 0));
        let mut xattrs = Vec::new();
        for (key, value) in records {
            if value.is_empty() {
                continue; // keeps the header's value
            }
            match key.as_slice() {
                pax::PATH => h.name = value.clone(),
                pax::LINKPATH => h.link = value.clone(),
                pax::UID => h.uid = pax::int(value, "uid")?,
                pax::GID => h.gid = pax::int(value, "gid")?,
                pax::SIZE => h.size = pax::int(value, "size")?,
                pax::MTIME => mtime = pax::time(value)?,
                pax::ATIME => atime = Some(pax::time(value)?),
                k => {
                    if let Some(name) = k.strip_prefix(pax::XATTR_PREFIX) {
                        xattrs.push((name.to_vec(), value.clone()));
                    }
                }
            }
        }
        if let Some(name) = long_name.filter(|n| !n.is_empty()) {
            h.name = name;
        }
        if let Some(link) = long_link.filter(|l| !l.is_empty()) {
            h.link = link;
        }
        let mut kind = h.kind();
        if h.typeflag == 0 && h.name.ends_with(b"/") {
            kind = Kind::Directory;
        }
        // A PAX size replaces the header's: the data to read changes with it.
        if h.size < 0 {
            return Err(bad("negative size in tar header"));
        }
        if !Kind::header_only(h.typeflag) {
            self.start_data(h.size as u64);
        }
        let sparse = self.sparse_map(&mut h, records)?;
        if let Some(map) = sparse {
            if Kind::header_only(h.typeflag) {
                return Err(bad("sparse map on an entry without data"));
            }
            self.set_sparse(map, h.size)?;
        }
        let dev = |v: i64, what| match kind {
            Kind::Char | Kind::Block => to_u32(v, what),
            _ => Ok(0),
        };
        Ok(Entry {
            kind,
            size: if kind == Kind::Regular {
                h.size as u64
            } else {
                0
            },
            mode: (h.mode as u64 & 0o7777) as u32,
            uid: to_u32(h.uid, "uid")?,
            gid: to_u32(h.gid, "gid")?,
            mtime,
            atime,
            dev_major: dev(h.dev_major, "devmajor")?,
            dev_minor: dev(h.dev_minor, "devminor")?,
            name: h.name,
            link: h.link,
            xattrs,
        })
    }
}

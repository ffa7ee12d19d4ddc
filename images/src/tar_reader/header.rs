//! One 512-byte tar header block: its format, checksum and fields, read as Go's
//! `archive/tar` reads them (v7, ustar, star and GNU layouts; octal or base-256
//! numbers).

use super::{Kind, bad};
use std::io;

pub(super) const BLOCK: usize = 512;

/// Field offsets in a header block (POSIX ustar, with the GNU and star variants).
mod off {
    use std::ops::Range;
    pub const NAME: Range<usize> = 0..100;
    pub const MODE: Range<usize> = 100..108;
    pub const UID: Range<usize> = 108..116;
    pub const GID: Range<usize> = 116..124;
    pub const SIZE: Range<usize> = 124..136;
    pub const MTIME: Range<usize> = 136..148;
    pub const CHKSUM: Range<usize> = 148..156;
    pub const TYPEFLAG: usize = 156;
    pub const LINKNAME: Range<usize> = 157..257;
    pub const MAGIC: Range<usize> = 257..263;
    pub const VERSION: Range<usize> = 263..265;
    pub const DEVMAJOR: Range<usize> = 329..337;
    pub const DEVMINOR: Range<usize> = 337..345;
    pub const USTAR_PREFIX: Range<usize> = 345..500;
    pub const STAR_PREFIX: Range<usize> = 345..476;
    pub const STAR_TRAILER: Range<usize> = 508..512;
    pub const GNU_ATIME: Range<usize> = 345..357;
    pub const GNU_CTIME: Range<usize> = 357..369;
    /// Four (offset, length) pairs of 12 bytes each.
    pub const GNU_SPARSE: Range<usize> = 386..482;
    pub const GNU_IS_EXTENDED: usize = 482;
    pub const GNU_REAL_SIZE: Range<usize> = 483..495;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    V7,
    Ustar,
    Star,
    Gnu,
}

/// What a header block says, before PAX records and GNU long names are merged in.
#[derive(Debug, Clone)]
pub(super) struct Header {
    pub typeflag: u8,
    pub name: Vec<u8>,
    pub link: Vec<u8>,
    pub size: i64,
    pub mode: i64,
    pub uid: i64,
    pub gid: i64,
    pub mtime: i64,
    pub atime: Option<i64>,
    pub dev_major: i64,
    pub dev_minor: i64,
    /// A GNU header (the only layout with an old-style sparse map).
    pub gnu: bool,
    /// The old GNU sparse map of a type `S` GNU header: (offset, length) pairs,
    /// whether extension blocks follow, and the file's real size.
    pub gnu_sparse: Option<GnuSparse>,
}

#[derive(Debug, Clone)]
pub(super) struct GnuSparse {
    pub map: Vec<(i64, i64)>,
    pub extended: bool,
    pub real_size: i64,
}

impl Header {
    pub fn kind(&self) -> Kind {
        Kind::from_flag(self.typeflag)
    }
}

/// Whether a block is all zeros: one of the two that end an archive.
pub(super) fn is_zero(block: &[u8; BLOCK]) -> bool {
    block.iter().all(|&b| b == 0)
}

/// Parses a header block. A block whose checksum matches neither the unsigned nor
/// the signed sum is not a header.
pub(super) fn parse(block: &[u8; BLOCK]) -> io::Result<Header> {
    let format = format(block).ok_or_else(|| bad("invalid tar header (checksum mismatch)"))?;
    let mut h = Header {
        typeflag: block[off::TYPEFLAG],
        name: string(&block[off::NAME]).to_vec(),
        link: string(&block[off::LINKNAME]).to_vec(),
        size: numeric(&block[off::SIZE], "size")?,
        mode: numeric(&block[off::MODE], "mode")?,
        uid: numeric(&block[off::UID], "uid")?,
        gid: numeric(&block[off::GID], "gid")?,
        mtime: numeric(&block[off::MTIME], "mtime")?,
        atime: None,
        dev_major: 0,
        dev_minor: 0,
        gnu: format == Format::Gnu,
        gnu_sparse: None,
    };
    if format == Format::V7 {
        return Ok(h);
    }
    h.dev_major = numeric(&block[off::DEVMAJOR], "devmajor")?;
    h.dev_minor = numeric(&block[off::DEVMINOR], "devminor")?;
    let prefix: &[u8] = match format {
        Format::Ustar => string(&block[off::USTAR_PREFIX]),
        Format::Star => string(&block[off::STAR_PREFIX]),
        Format::Gnu => {
            let time = |r: std::ops::Range<usize>| match block[r.start] {
                0 => Ok(None),
                _ => numeric(&block[r], "atime").map(Some),
            };
            match (time(off::GNU_ATIME), time(off::GNU_CTIME)) {
                (Ok(atime), Ok(_)) => {
                    h.atime = atime;
                    &[]
                }
                // Old Go writers put a ustar prefix into a GNU header: read it as
                // one, as Go's reader does.
                _ => {
                    h.gnu = false;
                    let p = string(&block[off::USTAR_PREFIX]);
                    if p.is_ascii() { p } else { &[] }
                }
            }
        }
        Format::V7 => &[],
    };
    if h.gnu && h.typeflag == b'S' {
        h.gnu_sparse = Some(GnuSparse {
            map: sparse_entries(&block[off::GNU_SPARSE])?,
            extended: block[off::GNU_IS_EXTENDED] != 0,
            real_size: numeric(&block[off::GNU_REAL_SIZE], "realsize")?,
        });
    }
    if !prefix.is_empty() {
        let mut name = prefix.to_vec();
        name.push(b'/');
        name.extend_from_slice(&h.name);
        h.name = name;
    }
    Ok(h)
}

/// The layout a block uses, or `None` when its checksum is wrong.
fn format(block: &[u8; BLOCK]) -> Option<Format> {
    let stored = octal(&block[off::CHKSUM]).ok()?;
    let (mut unsigned, mut signed) = (0i64, 0i64);
    for (i, &b) in block.iter().enumerate() {
        // The checksum field itself counts as eight spaces.
        let b = if off::CHKSUM.contains(&i) { b' ' } else { b };
        unsigned += i64::from(b);
        signed += i64::from(b as i8);
    }
    if stored != unsigned && stored != signed {
        return None;
    }
    let magic = &block[off::MAGIC];
    Some(if magic == b"ustar\0" {
        if &block[off::STAR_TRAILER] == b"tar\0" {
            Format::Star
        } else {
            Format::Ustar
        }
    } else if magic == b"ustar " && &block[off::VERSION] == b" \0" {
        Format::Gnu
    } else {
        Format::V7
    })
}

/// A NUL-terminated string field (the whole field when it has no NUL).
pub(super) fn string(field: &[u8]) -> &[u8] {
    match field.iter().position(|&b| b == 0) {
        Some(n) => &field[..n],
        None => field,
    }
}

/// A numeric field: base-256 (two's complement, high bit set) or octal.
pub(super) fn numeric(field: &[u8], what: &str) -> io::Result<i64> {
    let Some(&first) = field.first() else {
        return Ok(0);
    };
    if first & 0x80 == 0 {
        return octal(field).map_err(|_| bad(format!("invalid {what} field in tar header")));
    }
    let inv = if first & 0x40 != 0 { 0xff } else { 0 };
    let mut x: u64 = 0;
    for (i, &c) in field.iter().enumerate() {
        let mut c = c ^ inv;
        if i == 0 {
            c &= 0x7f;
        }
        if x >> 56 != 0 {
            return Err(bad(format!("{what} field overflows in tar header")));
        }
        x = (x << 8) | u64::from(c);
    }
    if x >> 63 != 0 {
        return Err(bad(format!("{what} field overflows in tar header")));
    }
    Ok(if inv == 0xff { !(x as i64) } else { x as i64 })
}

/// An octal field: spaces and NULs around it are ignored, an empty field is 0.
fn octal(field: &[u8]) -> Result<i64, ()> {
    let trim = |b: &u8| *b == b' ' || *b == 0;
    let start = field.iter().position(|b| !trim(b)).unwrap_or(field.len());
    let end = field
        .iter()
        .rposition(|b| !trim(b))
        .map_or(start, |e| e + 1);
    let digits = string(&field[start..end]);
    if digits.is_empty() {
        return Ok(0);
    }
    let s = std::str::from_utf8(digits).map_err(|_| ())?;
    u64::from_str_radix(s, 8)
        .ok()
        .and_then(|v| i64::try_from(v).ok())
        .ok_or(())
}

/// A GNU sparse extension block: 21 pairs, then the "more follow" flag.
pub(super) fn gnu_sparse_ext(block: &[u8; BLOCK]) -> io::Result<(Vec<(i64, i64)>, bool)> {
    Ok((sparse_entries(&block[..504])?, block[504] != 0))
}

fn sparse_entries(area: &[u8]) -> io::Result<Vec<(i64, i64)>> {
    let mut out = Vec::new();
    for pair in area.chunks_exact(24) {
        if pair[0] == 0 {
            break;
        }
        out.push((
            numeric(&pair[..12], "sparse offset")?,
            numeric(&pair[12..], "sparse length")?,
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn octal_fields_ignore_padding_of_spaces_and_nuls() {
        assert_eq!(numeric(b"0000644\0", "m").unwrap(), 0o644);
        assert_eq!(numeric(b"  644 \0\0", "m").unwrap(), 0o644);
        assert_eq!(numeric(b"\0\0\0\0\0\0\0\0", "m").unwrap(), 0);
        assert_eq!(numeric(b"        ", "m").unwrap(), 0);
        assert!(numeric(b"0000x44\0", "m").is_err());
        assert!(numeric(b"0000844\0", "m").is_err());
    }

    #[test]
    fn base256_fields_are_twos_complement() {
        // 3,000,000 as GNU tar and Go write it into an 8-byte uid field.
        let mut f = [0u8; 8];
        f[0] = 0x80;
        f[5..].copy_from_slice(&[0x2d, 0xc6, 0xc0]);
        assert_eq!(numeric(&f, "uid").unwrap(), 3_000_000);
        // -1 in a 12-byte mtime field.
        assert_eq!(numeric(&[0xff; 12], "mtime").unwrap(), -1);
        // A size of 2^40 in a 12-byte size field.
        let mut s = [0u8; 12];
        s[0] = 0x80;
        s[6] = 1;
        assert_eq!(numeric(&s, "size").unwrap(), 1 << 40);
        // More than 63 bits do not fit.
        let mut big = [0xffu8; 12];
        big[0] = 0x80;
        assert!(numeric(&big, "size").is_err());
    }

    fn block(magic: &[u8], version: &[u8], prefix: &[u8]) -> [u8; BLOCK] {
        let mut b = [0u8; BLOCK];
        b[..4].copy_from_slice(b"name");
        b[off::MODE].copy_from_slice(b"0000644\0");
        b[off::SIZE].copy_from_slice(b"00000000000\0");
        b[off::TYPEFLAG] = b'0';
        b[off::MAGIC].copy_from_slice(magic);
        b[off::VERSION].copy_from_slice(version);
        b[off::USTAR_PREFIX][..prefix.len()].copy_from_slice(prefix);
        checksum(&mut b);
        b
    }

    fn checksum(b: &mut [u8; BLOCK]) {
        b[off::CHKSUM].copy_from_slice(b"        ");
        let sum: u32 = b.iter().map(|&x| u32::from(x)).sum();
        b[off::CHKSUM].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    }

    #[test]
    fn the_prefix_counts_in_ustar_only() {
        let ustar = parse(&block(b"ustar\0", b"00", b"pre")).unwrap();
        assert_eq!(ustar.name, b"pre/name");
        let gnu = parse(&block(b"ustar ", b" \0", b"")).unwrap();
        assert!(gnu.gnu);
        assert_eq!(gnu.name, b"name");
        // A GNU header whose time fields hold a prefix (old Go writers).
        let buggy = parse(&block(b"ustar ", b" \0", b"pre")).unwrap();
        assert!(!buggy.gnu);
        assert_eq!(buggy.name, b"pre/name");
        let v7 = parse(&block(b"\0\0\0\0\0\0", b"\0\0", b"pre")).unwrap();
        assert_eq!(v7.name, b"name");
    }

    #[test]
    fn a_wrong_checksum_is_no_header() {
        let mut b = block(b"ustar\0", b"00", b"");
        b[0] = b'N';
        assert!(parse(&b).is_err());
        // The signed sum is accepted too (old Sun tars).
        let mut s = block(b"ustar\0", b"00", b"");
        s[off::LINKNAME][0] = 0xe9;
        s[off::CHKSUM].copy_from_slice(b"        ");
        let signed: i64 = s.iter().map(|&x| i64::from(x as i8)).sum();
        s[off::CHKSUM].copy_from_slice(format!("{signed:06o}\0 ").as_bytes());
        assert!(parse(&s).is_ok());
    }
}

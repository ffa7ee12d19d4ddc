//! Sparse files: the old GNU map (in the header and extension blocks) and the PAX
//! GNU sparse formats 0.0, 0.1 (map in records) and 1.0 (map at the start of the
//! data), read as Go's `archive/tar` reads them.

use std::io::{self, Read};

use super::header::{self, BLOCK, Header};
use super::pax::{self, Records};
use super::{MAX_SPARSE_ENTRIES, Reader, bad, cut_short, read_full};

/// (offset, length) of each data fragment, as the archive states them.
type Map = Vec<(i64, i64)>;

impl<R: Read> Reader<R> {
    /// The sparse map of the entry `h` describes, if it is a sparse file. Sets
    /// `h.size` to the file's logical size and, for PAX sparse files, `h.name` to
    /// the real name.
    pub(super) fn sparse_map(
        &mut self,
        h: &mut Header,
        records: &Records,
    ) -> io::Result<Option<Map>> {
        if h.typeflag == b'S' {
            let Some(gnu) = h.gnu_sparse.take() else {
                return Err(bad("GNU sparse entry in a header that is not GNU"));
            };
            let mut map = gnu.map;
            let mut more = gnu.extended;
            while more {
                let mut block = [0u8; BLOCK];
                if read_full(&mut self.r, &mut block)? < BLOCK {
                    return Err(cut_short("GNU sparse map"));
                }
                let (entries, next) = header::gnu_sparse_ext(&block)?;
                map.extend(entries);
                more = next;
                if map.len() > MAX_SPARSE_ENTRIES {
                    return Err(bad("GNU sparse map too long"));
                }
            }
            h.size = gnu.real_size;
            return Ok(Some(map));
        }
        let get = |k: &[u8]| records.get(k).map_or(&b""[..], Vec::as_slice);
        let v1 = match (get(pax::SPARSE_MAJOR), get(pax::SPARSE_MINOR)) {
            (b"0", b"0" | b"1") => false,
            (b"1", b"0") => true,
            // An unknown version: the file is read as it is stored, as Go does.
            (major, minor) if !major.is_empty() || !minor.is_empty() => return Ok(None),
            // 0.0 and 0.1 had no version records.
            _ if !get(pax::SPARSE_MAP).is_empty() => false,
            _ => return Ok(None),
        };
        let name = get(pax::SPARSE_NAME);
        if !name.is_empty() {
            h.name = name.to_vec();
        }
        let size = match get(pax::SPARSE_SIZE) {
            b"" => get(pax::SPARSE_REALSIZE),
            s => s,
        };
        if !size.is_empty() {
            h.size = pax::int(size, "GNU.sparse.size")?;
        }
        if v1 {
            self.map_1_0().map(Some)
        } else {
            map_0_1(records).map(Some)
        }
    }

    /// Makes the current entry's data the fragments of `map` in a file of `size`
    /// bytes. The map must be in order, inside the file, and cover exactly the
    /// data the archive holds for it.
    pub(super) fn set_sparse(&mut self, map: Map, size: i64) -> io::Result<()> {
        let mut end = 0i64;
        let mut total = 0u64;
        for &(offset, len) in &map {
            if offset < 0 || len < 0 || offset > i64::MAX - len {
                return Err(bad("invalid sparse map entry"));
            }
            if offset < end || offset + len > size {
                return Err(bad("sparse map out of order or beyond the file's size"));
            }
            end = offset + len;
            total += len as u64;
        }
        if total != self.remaining {
            return Err(bad(format!(
                "sparse map covers {total} bytes but the archive holds {} for the file",
                self.remaining
            )));
        }
        self.fragments = map
            .into_iter()
            .filter(|&(_, len)| len > 0)
            .map(|(o, l)| (o as u64, l as u64))
            .collect();
        Ok(())
    }

    /// The 1.0 map: decimal lines at the start of the data, in whole blocks: the
    /// number of fragments, then an offset and a length for each.
    fn map_1_0(&mut self) -> io::Result<Map> {
        let mut text: Vec<u8> = Vec::new();
        self.feed_lines(&mut text, 1)?;
        let count = {
            let first = text.split(|&b| b == b'\n').next().unwrap_or_default();
            let n = pax::int(first, "sparse map size")?;
            usize::try_from(n)
                .ok()
                .filter(|&n| n <= MAX_SPARSE_ENTRIES)
                .ok_or_else(|| bad("invalid GNU sparse map size"))?
        };
        self.feed_lines(&mut text, 1 + 2 * count)?;
        let mut tokens = text.split(|&b| b == b'\n').skip(1);
        let mut map = Vec::with_capacity(count);
        for _ in 0..count {
            let mut next = || pax::int(tokens.next().unwrap_or_default(), "sparse map entry");
            map.push((next()?, next()?));
        }
        Ok(map)
    }

    /// Appends blocks of the entry's data to `text` until it holds `lines` lines.
    fn feed_lines(&mut self, text: &mut Vec<u8>, lines: usize) -> io::Result<()> {
        let newlines = |b: &[u8]| b.iter().filter(|&&c| c == b'\n').count();
        let mut have = newlines(text);
        while have < lines {
            let mut block = [0u8; BLOCK];
            if self.remaining < BLOCK as u64 || read_full(&mut self.r, &mut block)? < BLOCK {
                return Err(cut_short("GNU sparse map"));
            }
            self.remaining -= BLOCK as u64;
            have += newlines(&block);
            text.extend_from_slice(&block);
        }
        Ok(())
    }
}

/// The 0.0 and 0.1 map: `GNU.sparse.numblocks` pairs in `GNU.sparse.map`.
fn map_0_1(records: &Records) -> io::Result<Map> {
    let count = records
        .get(pax::SPARSE_NUMBLOCKS)
        .ok_or_else(|| bad("GNU sparse map without numblocks"))
        .and_then(|n| pax::int(n, "GNU.sparse.numblocks"))?;
    let count = usize::try_from(count)
        .ok()
        .filter(|&n| n <= MAX_SPARSE_ENTRIES)
        .ok_or_else(|| bad("invalid GNU.sparse.numblocks"))?;
    let text = records.get(pax::SPARSE_MAP).map_or(&b""[..], Vec::as_slice);
    let values: Vec<&[u8]> = if text.is_empty() {
        Vec::new()
    } else {
        text.split(|&b| b == b',').collect()
    };
    if values.len() != 2 * count {
        return Err(bad("GNU.sparse.map does not match GNU.sparse.numblocks"));
    }
    values
        .chunks_exact(2)
        .map(|p| {
            Ok((
                pax::int(p[0], "sparse offset")?,
                pax::int(p[1], "sparse length")?,
            ))
        })
        .collect()
}

//! Unpacking a whole (uncompressed) tar stream into an empty directory, every byte
//! hashed into the layer's diff ID.

use std::io::{self, BufReader, Read};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use rustix::fs::{Mode, OFlags};

use super::decompress::{COPY_BUF, Decompressor};
use super::entry::{Unpacker, bad_tar};
use crate::digest::Digester;
use crate::error::{Error, Result};
use crate::tar_reader;

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

/// Unpacks the uncompressed tar read from `tar` into `dest`, hashing every byte.
pub(super) fn unpack_tar(tar: impl Read, dest: &Path) -> Result<Unpacked> {
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
    let mut unpacker = Unpacker::new(root.as_fd(), COPY_BUF);
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
        implicit_dirs: unpacker.into_implicit_dirs(),
    })
}

/// Turns a read error while unpacking into ours, keeping a download's own error.
pub fn io_to_error(e: io::Error) -> Error {
    bad_tar(e)
}

/// Reads through, hashing and counting every byte.
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

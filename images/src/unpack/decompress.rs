//! A layer's bytes, decompressed as its first bytes say: gzip, zstd, or none.

use std::io::{self, BufRead, Read};

use crate::error::Error;

/// Bytes read from a layer stream at a time.
pub(super) const COPY_BUF: usize = 256 * 1024;

/// A layer's bytes, decompressed as its first bytes say (gzip, zstd, or none).
pub(super) enum Decompressor<B: BufRead> {
    Gzip(Box<flate2::bufread::MultiGzDecoder<B>>),
    Zstd(zstd::stream::read::Decoder<'static, B>),
    Plain(B),
}

impl<B: BufRead> Decompressor<B> {
    pub(super) fn new(mut inner: B) -> io::Result<Self> {
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

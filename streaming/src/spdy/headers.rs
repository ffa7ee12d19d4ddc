//! SPDY/3 header blocks: name/value pairs with 32-bit lengths, compressed with zlib
//! primed by the draft's dictionary, one compression context per direction for the
//! whole connection, each block ended with a sync flush.

use std::io;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// Largest decompressed header block accepted: bounds what a peer can make us hold.
pub const MAX_BLOCK: usize = 256 * 1024;

/// The strings of the SPDY/3 dictionary that carry a 32-bit length prefix.
const DICTIONARY_WORDS: &[&str] = &[
    "options",
    "head",
    "post",
    "put",
    "delete",
    "trace",
    "accept",
    "accept-charset",
    "accept-encoding",
    "accept-language",
    "accept-ranges",
    "age",
    "allow",
    "authorization",
    "cache-control",
    "connection",
    "content-base",
    "content-encoding",
    "content-language",
    "content-length",
    "content-location",
    "content-md5",
    "content-range",
    "content-type",
    "date",
    "etag",
    "expect",
    "expires",
    "from",
    "host",
    "if-match",
    "if-modified-since",
    "if-none-match",
    "if-range",
    "if-unmodified-since",
    "last-modified",
    "location",
    "max-forwards",
    "pragma",
    "proxy-authenticate",
    "proxy-authorization",
    "range",
    "referer",
    "retry-after",
    "server",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "user-agent",
    "vary",
    "via",
    "warning",
    "www-authenticate",
    "method",
    "get",
    "status",
    "200 OK",
    "version",
    "HTTP/1.1",
    "url",
    "public",
    "set-cookie",
    "keep-alive",
    "origin",
];

/// The dictionary's tail, without length prefixes.
const DICTIONARY_TAIL: &str = concat!(
    "100101201202205206300302303304305306307402405406407408409410411412413414415416417",
    "502504505",
    "203 Non-Authoritative Information",
    "204 No Content",
    "301 Moved Permanently",
    "400 Bad Request",
    "401 Unauthorized",
    "403 Forbidden",
    "404 Not Found",
    "500 Internal Server Error",
    "501 Not Implemented",
    "503 Service Unavailable",
    "Jan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec",
    " 00:00:00",
    " Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMT",
    "chunked,text/html,image/png,image/jpg,image/gif,application/xml,application/xhtml+xml,",
    "text/plain,text/javascript,publicprivatemax-age=gzip,deflate,sdch",
    "charset=utf-8charset=iso-8859-1,utf-,*,enq=0."
);

/// The SPDY/3 zlib dictionary (draft section 2.6.10.1).
pub fn dictionary() -> Vec<u8> {
    let mut d = Vec::with_capacity(1424);
    for w in DICTIONARY_WORDS {
        d.extend_from_slice(&(w.len() as u32).to_be_bytes());
        d.extend_from_slice(w.as_bytes());
    }
    d.extend_from_slice(DICTIONARY_TAIL.as_bytes());
    d
}

/// Name/value pairs of one block, names lowercase; a value may hold several values
/// separated by NUL.
pub type Headers = Vec<(String, String)>;

fn malformed(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// The uncompressed form of a block.
pub fn encode_block(headers: &[(String, String)]) -> Vec<u8> {
    let mut out = (headers.len() as u32).to_be_bytes().to_vec();
    for (n, v) in headers {
        for s in [n, v] {
            out.extend_from_slice(&(s.len() as u32).to_be_bytes());
            out.extend_from_slice(s.as_bytes());
        }
    }
    out
}

/// Parses an uncompressed block.
pub fn decode_block(b: &[u8]) -> io::Result<Headers> {
    let mut at = 0usize;
    let u32_next = |at: &mut usize| -> io::Result<usize> {
        let s = b
            .get(*at..*at + 4)
            .ok_or_else(|| malformed("header block cut short"))?;
        *at += 4;
        Ok(u32::from_be_bytes([s[0], s[1], s[2], s[3]]) as usize)
    };
    let n = u32_next(&mut at)?;
    if n > b.len() / 8 {
        return Err(malformed("header block states more pairs than it holds"));
    }
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let mut s = || -> io::Result<String> {
            let len = u32_next(&mut at)?;
            let bytes = b
                .get(at..at + len)
                .ok_or_else(|| malformed("header block cut short"))?;
            at += len;
            String::from_utf8(bytes.to_vec()).map_err(|_| malformed("header not UTF-8"))
        };
        let name = s()?;
        let value = s()?;
        if name.is_empty() {
            return Err(malformed("empty header name"));
        }
        out.push((name.to_ascii_lowercase(), value));
    }
    Ok(out)
}

/// The compressing side of a connection.
pub struct Compressor(Compress);

impl Default for Compressor {
    fn default() -> Self {
        Self::new()
    }
}

impl Compressor {
    pub fn new() -> Self {
        let mut c = Compress::new(Compression::default(), true);
        c.set_dictionary(&dictionary())
            .expect("a fresh zlib stream takes a dictionary");
        Compressor(c)
    }

    /// Compresses a block, flushed so the peer can read it whole.
    pub fn compress(&mut self, headers: &[(String, String)]) -> io::Result<Vec<u8>> {
        let input = encode_block(headers);
        let mut out = Vec::with_capacity(input.len() / 2 + 64);
        let mut consumed = 0;
        loop {
            if out.capacity() - out.len() < 64 {
                out.reserve(out.capacity().max(256));
            }
            let before = self.0.total_in();
            self.0
                .compress_vec(&input[consumed..], &mut out, FlushCompress::Sync)
                .map_err(|e| io::Error::other(format!("zlib: {e}")))?;
            consumed += (self.0.total_in() - before) as usize;
            // Done when all input is in and the flush fit in the output.
            if consumed == input.len() && out.len() < out.capacity() {
                return Ok(out);
            }
        }
    }
}

/// The decompressing side of a connection.
pub struct Decompressor(Decompress);

impl Default for Decompressor {
    fn default() -> Self {
        Self::new()
    }
}

impl Decompressor {
    pub fn new() -> Self {
        Decompressor(Decompress::new(true))
    }

    /// Decompresses one block (at most [`MAX_BLOCK`] bytes once inflated).
    pub fn decompress(&mut self, block: &[u8]) -> io::Result<Headers> {
        let mut out: Vec<u8> = Vec::with_capacity(block.len() * 4 + 64);
        let mut consumed = 0;
        loop {
            if out.len() > MAX_BLOCK {
                return Err(malformed("header block too large"));
            }
            if out.capacity() - out.len() < 256 {
                out.reserve(out.capacity().max(1024));
            }
            let before = self.0.total_in();
            let r = self
                .0
                .decompress_vec(&block[consumed..], &mut out, FlushDecompress::Sync);
            consumed += (self.0.total_in() - before) as usize;
            match r {
                Ok(Status::StreamEnd) => break,
                Ok(_) if consumed == block.len() && out.len() < out.capacity() => break,
                Ok(_) => {}
                Err(e) if e.needs_dictionary().is_some() => {
                    self.0
                        .set_dictionary(&dictionary())
                        .map_err(|e| malformed(format!("zlib dictionary: {e}")))?;
                }
                Err(e) => return Err(malformed(format!("header block: {e}"))),
            }
        }
        decode_block(&out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, &str)]) -> Headers {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn the_dictionary_is_the_drafts() {
        let d = dictionary();
        assert_eq!(d.len(), 1423);
        assert_eq!(&d[..11], b"\0\0\0\x07options");
        assert!(d.ends_with(b"enq=0."));
        // zlib identifies a dictionary by its Adler-32 (draft: the FDICT id the
        // SPDY/3 compressors of Chromium, Go and Netty all send).
        let mut c = Compress::new(Compression::default(), true);
        let id = c.set_dictionary(&d).unwrap();
        assert_eq!(id, 0xe3c6_a7c2);
    }

    #[test]
    fn blocks_round_trip_through_one_context_per_direction() {
        let mut c = Compressor::new();
        let mut d = Decompressor::new();
        for block in [
            h(&[("streamtype", "error")]),
            h(&[("streamtype", "stdout"), ("port", "8080")]),
            h(&[]),
            h(&[("x", &"v".repeat(10_000))]),
        ] {
            let z = c.compress(&block).unwrap();
            assert_eq!(d.decompress(&z).unwrap(), block);
        }
    }

    /// Two SYN_STREAM frames as Go's spdy framer (the one moby/spdystream, client-go
    /// and crictl use) writes them on one connection: streams 1 and 3 with
    /// `streamtype: error` and `streamtype: stdout`, compressed at zlib level 9.
    const GO_SYN_STREAMS: &[u8] = &[
        0x80, 0x03, 0x00, 0x01, 0x00, 0x00, 0x00, 0x29, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x78, 0xf9, 0xe3, 0xc6, 0xa7, 0xc2, 0x62, 0x60, 0x60, 0x60, 0x04, 0xa7,
        0xb3, 0x92, 0xa2, 0xd4, 0xc4, 0x5c, 0x68, 0x51, 0xc2, 0x9a, 0x0a, 0x0a, 0x68, 0x00, 0x00,
        0x00, 0x00, 0xff, 0xff, 0x80, 0x03, 0x00, 0x01, 0x00, 0x00, 0x00, 0x19, 0x00, 0x00, 0x00,
        0x03, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xc2, 0x2a, 0xc5, 0x56, 0x5c, 0x92, 0x92, 0x5f,
        0x5a, 0x02, 0x00, 0x00, 0x00, 0xff, 0xff,
    ];

    #[test]
    fn reference_blocks_from_the_go_spdy_framer_decompress() {
        use super::super::frame::{Frame, parse, parse_head};
        let mut d = Decompressor::new();
        let mut rest = GO_SYN_STREAMS;
        let mut got = Vec::new();
        while !rest.is_empty() {
            let head = parse_head(rest[..8].try_into().unwrap()).unwrap();
            let frame = parse(head, rest[8..8 + head.length].to_vec()).unwrap();
            rest = &rest[8 + head.length..];
            let Frame::SynStream { stream, block, .. } = frame else {
                panic!("not a SYN_STREAM: {frame:?}");
            };
            got.push((stream, d.decompress(&block).unwrap()));
        }
        assert_eq!(
            got,
            [
                (1, h(&[("streamtype", "error")])),
                (3, h(&[("streamtype", "stdout")]))
            ]
        );
        // Our own first block names the same dictionary (FDICT and its Adler-32).
        let z = Compressor::new()
            .compress(&h(&[("streamtype", "error")]))
            .unwrap();
        assert_eq!(z[0], 0x78);
        assert_ne!(z[1] & 0x20, 0);
        assert_eq!(&z[2..6], &0xe3c6_a7c2u32.to_be_bytes());
    }

    #[test]
    fn malformed_blocks_are_errors() {
        assert!(decode_block(&[0, 0, 0, 1]).is_err());
        assert!(decode_block(&[0, 0, 0, 1, 0, 0, 0, 9, b'a']).is_err());
        assert!(decode_block(&[0xff, 0xff, 0xff, 0xff]).is_err());
        let mut d = Decompressor::new();
        assert!(d.decompress(b"not zlib at all").is_err());
        // A bomb: a tiny block that inflates past the limit.
        let mut c = Compressor::new();
        let big = c
            .compress(&h(&[("x", &"a".repeat(MAX_BLOCK * 2))]))
            .unwrap();
        assert!(Decompressor::new().decompress(&big).is_err());
    }
}

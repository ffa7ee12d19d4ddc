//! SPDY/3.1 frames (draft-mbelshe-httpbis-spdy-00 and the 3.1 amendment): their
//! layout on the wire. Header blocks stay compressed here; [`super::headers`]
//! compresses and decompresses them, in connection order.
//!
//! ```text
//! control: |1| version(15) | type(16) | flags(8) | length(24) | data
//! data:    |0| stream id(31)          | flags(8) | length(24) | data
//! ```

use std::io;

pub const VERSION: u16 = 3;
pub const FLAG_FIN: u8 = 0x01;
pub const FLAG_UNIDIRECTIONAL: u8 = 0x02;
/// The 8-byte header every frame starts with.
pub const HEADER_LEN: usize = 8;
/// The largest payload a 24-bit length can state.
pub const MAX_LENGTH: usize = (1 << 24) - 1;

const SYN_STREAM: u16 = 1;
const SYN_REPLY: u16 = 2;
const RST_STREAM: u16 = 3;
const SETTINGS: u16 = 4;
const PING: u16 = 6;
const GOAWAY: u16 = 7;
const HEADERS: u16 = 8;
const WINDOW_UPDATE: u16 = 9;

/// RST_STREAM status codes.
pub mod rst {
    pub const PROTOCOL_ERROR: u32 = 1;
    pub const INVALID_STREAM: u32 = 2;
    pub const REFUSED_STREAM: u32 = 3;
    pub const CANCEL: u32 = 5;
    pub const INTERNAL_ERROR: u32 = 6;
    pub const STREAM_IN_USE: u32 = 8;
    pub const STREAM_ALREADY_CLOSED: u32 = 9;
    pub const FRAME_TOO_LARGE: u32 = 11;
}

/// One frame; `block` fields hold a compressed header block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    SynStream {
        stream: u32,
        associated: u32,
        priority: u8,
        flags: u8,
        block: Vec<u8>,
    },
    SynReply {
        stream: u32,
        flags: u8,
        block: Vec<u8>,
    },
    RstStream {
        stream: u32,
        status: u32,
    },
    Settings {
        flags: u8,
        entries: Vec<(u8, u32, u32)>,
    },
    Ping {
        id: u32,
    },
    GoAway {
        last_stream: u32,
        status: u32,
    },
    Headers {
        stream: u32,
        flags: u8,
        block: Vec<u8>,
    },
    WindowUpdate {
        stream: u32,
        delta: u32,
    },
    Data {
        stream: u32,
        flags: u8,
        data: Vec<u8>,
    },
    /// A control frame of a type this version does not define: ignored, as the
    /// draft says.
    Unknown {
        kind: u16,
    },
}

fn malformed(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

fn u32_at(b: &[u8], at: usize) -> io::Result<u32> {
    b.get(at..at + 4)
        .map(|s| u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
        .ok_or_else(|| malformed("frame too short"))
}

/// What the 8-byte frame header says: control type (or `None` for data), flags and
/// payload length; for a data frame the stream id comes back as `kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    pub control: bool,
    /// Control frame type, or the data frame's stream id.
    pub kind: u32,
    pub flags: u8,
    pub length: usize,
}

pub fn parse_head(h: &[u8; HEADER_LEN]) -> io::Result<Head> {
    let first = u32::from_be_bytes([h[0], h[1], h[2], h[3]]);
    let control = first & 0x8000_0000 != 0;
    let length = u32::from_be_bytes([0, h[5], h[6], h[7]]) as usize;
    if control {
        let version = ((first >> 16) & 0x7fff) as u16;
        if version != VERSION {
            return Err(malformed(format!("SPDY version {version}, not 3")));
        }
        Ok(Head {
            control,
            kind: first & 0xffff,
            flags: h[4],
            length,
        })
    } else {
        Ok(Head {
            control,
            kind: first & 0x7fff_ffff,
            flags: h[4],
            length,
        })
    }
}

/// The frame whose header is `head` and whose payload is `p`.
pub fn parse(head: Head, p: Vec<u8>) -> io::Result<Frame> {
    if !head.control {
        return Ok(Frame::Data {
            stream: head.kind,
            flags: head.flags,
            data: p,
        });
    }
    let id = |at| u32_at(&p, at).map(|v| v & 0x7fff_ffff);
    let exact = |n: usize| {
        if p.len() == n {
            Ok(())
        } else {
            Err(malformed(format!(
                "control frame {} of {} bytes, not {n}",
                head.kind,
                p.len()
            )))
        }
    };
    Ok(match head.kind as u16 {
        SYN_STREAM => {
            if p.len() < 10 {
                return Err(malformed("SYN_STREAM too short"));
            }
            Frame::SynStream {
                stream: id(0)?,
                associated: id(4)?,
                priority: p[8] >> 5,
                flags: head.flags,
                block: p[10..].to_vec(),
            }
        }
        SYN_REPLY => Frame::SynReply {
            stream: id(0)?,
            flags: head.flags,
            block: p.get(4..).map(<[u8]>::to_vec).unwrap_or_default(),
        },
        RST_STREAM => {
            exact(8)?;
            Frame::RstStream {
                stream: id(0)?,
                status: u32_at(&p, 4)?,
            }
        }
        SETTINGS => {
            let n = u32_at(&p, 0)? as usize;
            if p.len() != 4 + 8 * n {
                return Err(malformed("SETTINGS length does not match its entries"));
            }
            let entries = (0..n)
                .map(|i| {
                    let at = 4 + 8 * i;
                    let fid = u32_at(&p, at)?;
                    Ok(((fid >> 24) as u8, fid & 0xff_ffff, u32_at(&p, at + 4)?))
                })
                .collect::<io::Result<_>>()?;
            Frame::Settings {
                flags: head.flags,
                entries,
            }
        }
        PING => {
            exact(4)?;
            Frame::Ping { id: u32_at(&p, 0)? }
        }
        GOAWAY => {
            exact(8)?;
            Frame::GoAway {
                last_stream: id(0)?,
                status: u32_at(&p, 4)?,
            }
        }
        HEADERS => Frame::Headers {
            stream: id(0)?,
            flags: head.flags,
            block: p.get(4..).map(<[u8]>::to_vec).unwrap_or_default(),
        },
        WINDOW_UPDATE => {
            exact(8)?;
            Frame::WindowUpdate {
                stream: id(0)?,
                delta: id(4)?,
            }
        }
        kind => Frame::Unknown { kind },
    })
}

impl Frame {
    /// The frame as it goes on the wire.
    pub fn encode(&self) -> Vec<u8> {
        let control = |kind: u16, flags: u8, payload: &[u8]| {
            let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
            out.extend_from_slice(&(0x8000u16 | VERSION).to_be_bytes());
            out.extend_from_slice(&kind.to_be_bytes());
            out.push(flags);
            out.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
            out.extend_from_slice(payload);
            out
        };
        let join = |parts: &[&[u8]]| parts.concat();
        match self {
            Frame::SynStream {
                stream,
                associated,
                priority,
                flags,
                block,
            } => control(
                SYN_STREAM,
                *flags,
                &join(&[
                    &stream.to_be_bytes(),
                    &associated.to_be_bytes(),
                    &[priority << 5, 0],
                    block,
                ]),
            ),
            Frame::SynReply {
                stream,
                flags,
                block,
            } => control(SYN_REPLY, *flags, &join(&[&stream.to_be_bytes(), block])),
            Frame::RstStream { stream, status } => control(
                RST_STREAM,
                0,
                &join(&[&stream.to_be_bytes(), &status.to_be_bytes()]),
            ),
            Frame::Settings { flags, entries } => {
                let mut p = (entries.len() as u32).to_be_bytes().to_vec();
                for (f, id, v) in entries {
                    p.extend_from_slice(&((u32::from(*f) << 24) | (id & 0xff_ffff)).to_be_bytes());
                    p.extend_from_slice(&v.to_be_bytes());
                }
                control(SETTINGS, *flags, &p)
            }
            Frame::Ping { id } => control(PING, 0, &id.to_be_bytes()),
            Frame::GoAway {
                last_stream,
                status,
            } => control(
                GOAWAY,
                0,
                &join(&[&last_stream.to_be_bytes(), &status.to_be_bytes()]),
            ),
            Frame::Headers {
                stream,
                flags,
                block,
            } => control(HEADERS, *flags, &join(&[&stream.to_be_bytes(), block])),
            Frame::WindowUpdate { stream, delta } => control(
                WINDOW_UPDATE,
                0,
                &join(&[&stream.to_be_bytes(), &delta.to_be_bytes()]),
            ),
            Frame::Data {
                stream,
                flags,
                data,
            } => {
                let mut out = Vec::with_capacity(HEADER_LEN + data.len());
                out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
                out.push(*flags);
                out.extend_from_slice(&(data.len() as u32).to_be_bytes()[1..]);
                out.extend_from_slice(data);
                out
            }
            Frame::Unknown { kind } => control(*kind, 0, &[]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(f: Frame) {
        let bytes = f.encode();
        let head = parse_head(bytes[..8].try_into().unwrap()).unwrap();
        assert_eq!(head.length, bytes.len() - 8);
        assert_eq!(parse(head, bytes[8..].to_vec()).unwrap(), f);
    }

    #[test]
    fn every_frame_round_trips() {
        round_trip(Frame::SynStream {
            stream: 3,
            associated: 1,
            priority: 7,
            flags: FLAG_FIN | FLAG_UNIDIRECTIONAL,
            block: vec![1, 2, 3],
        });
        round_trip(Frame::SynReply {
            stream: 0x7fff_ffff,
            flags: 0,
            block: vec![9; 40],
        });
        round_trip(Frame::RstStream {
            stream: 5,
            status: rst::CANCEL,
        });
        round_trip(Frame::Settings {
            flags: 1,
            entries: vec![(1, 7, 65536), (0, 4, 100)],
        });
        round_trip(Frame::Ping { id: 2 });
        round_trip(Frame::GoAway {
            last_stream: 9,
            status: 0,
        });
        round_trip(Frame::Headers {
            stream: 1,
            flags: FLAG_FIN,
            block: vec![],
        });
        round_trip(Frame::WindowUpdate {
            stream: 0,
            delta: 1 << 20,
        });
        round_trip(Frame::Data {
            stream: 1,
            flags: FLAG_FIN,
            data: b"hello".to_vec(),
        });
    }

    #[test]
    fn wire_layout_matches_the_draft() {
        // A PING with id 1: control bit, version 3, type 6, no flags, length 4.
        assert_eq!(
            Frame::Ping { id: 1 }.encode(),
            [0x80, 0x03, 0x00, 0x06, 0, 0, 0, 4, 0, 0, 0, 1]
        );
        // A DATA frame of stream 1 with FIN.
        assert_eq!(
            Frame::Data {
                stream: 1,
                flags: FLAG_FIN,
                data: b"x".to_vec()
            }
            .encode(),
            [0, 0, 0, 1, 1, 0, 0, 1, b'x']
        );
    }

    #[test]
    fn malformed_control_frames_are_errors() {
        let head = |kind, length| Head {
            control: true,
            kind,
            flags: 0,
            length,
        };
        assert!(parse(head(6, 3), vec![0; 3]).is_err());
        assert!(parse(head(3, 4), vec![0; 4]).is_err());
        assert!(parse(head(1, 5), vec![0; 5]).is_err());
        assert!(parse(head(4, 8), vec![0, 0, 0, 2, 0, 0, 0, 0]).is_err());
        assert!(parse_head(&[0x80, 0x02, 0, 1, 0, 0, 0, 0]).is_err());
        assert_eq!(
            parse(head(42, 0), vec![]).unwrap(),
            Frame::Unknown { kind: 42 }
        );
    }
}

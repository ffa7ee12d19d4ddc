//! Property-based fuzzing of SPDY/3.1 framing and header blocks
//! (docs/testing.md, "Fuzzing"): frame heads and payloads, uncompressed and
//! compressed header blocks on arbitrary bytes, and encode→parse round trips.
//!
//! `PROPTEST_CASES` overrides the bounded CI number of cases, e.g.
//! `PROPTEST_CASES=100000 cargo test -p crust-streaming --lib fuzz`. Failures are
//! not persisted: each becomes a plain regression test.

use super::frame::{self, Frame, HEADER_LEN};
use super::headers::{self, Compressor, Decompressor, Headers};
use proptest::prelude::*;
use proptest::test_runner::Config;

fn config(cases: u32) -> Config {
    Config {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(cases),
        failure_persistence: None,
        ..Config::default()
    }
}

const ID: std::ops::RangeInclusive<u32> = 0..=0x7fff_ffff;

fn block() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..64)
}

/// Every frame as this side encodes it: stream ids of 31 bits, priorities of 3,
/// setting ids of 24.
fn any_frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        (ID, ID, 0u8..8, any::<u8>(), block()).prop_map(
            |(stream, associated, priority, flags, block)| {
                Frame::SynStream {
                    stream,
                    associated,
                    priority,
                    flags,
                    block,
                }
            }
        ),
        (ID, any::<u8>(), block()).prop_map(|(stream, flags, block)| Frame::SynReply {
            stream,
            flags,
            block
        }),
        (ID, any::<u32>()).prop_map(|(stream, status)| Frame::RstStream { stream, status }),
        (
            any::<u8>(),
            prop::collection::vec((any::<u8>(), 0u32..1 << 24, any::<u32>()), 0..5)
        )
            .prop_map(|(flags, entries)| Frame::Settings { flags, entries }),
        any::<u32>().prop_map(|id| Frame::Ping { id }),
        (ID, any::<u32>()).prop_map(|(last_stream, status)| Frame::GoAway {
            last_stream,
            status
        }),
        (ID, any::<u8>(), block()).prop_map(|(stream, flags, block)| Frame::Headers {
            stream,
            flags,
            block
        }),
        (ID, ID).prop_map(|(stream, delta)| Frame::WindowUpdate { stream, delta }),
        (ID, any::<u8>(), prop::collection::vec(any::<u8>(), 0..200)).prop_map(
            |(stream, flags, data)| Frame::Data {
                stream,
                flags,
                data
            }
        ),
        any::<u16>()
            .prop_filter("a defined type", |k| !matches!(k, 1..=4 | 6..=9))
            .prop_map(|kind| Frame::Unknown { kind }),
    ]
}

fn headers() -> impl Strategy<Value = Headers> {
    prop::collection::vec(("[a-z0-9-]{1,12}", ".{0,30}"), 0..6)
}

/// A frame as a connection reads it: head first, then as much payload as the head
/// says (or as there is).
fn read_frame(bytes: &[u8]) -> std::io::Result<Frame> {
    let head: [u8; HEADER_LEN] = bytes
        .get(..HEADER_LEN)
        .and_then(|h| h.try_into().ok())
        .ok_or_else(|| std::io::Error::other("short"))?;
    let head = frame::parse_head(&head)?;
    let rest = &bytes[HEADER_LEN..];
    let payload = rest[..head.length.min(rest.len())].to_vec();
    frame::parse(head, payload)
}

proptest! {
    #![proptest_config(config(3000))]

    #[test]
    fn arbitrary_frames(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
        let _ = read_frame(&bytes);
    }

    /// Control heads of version 3 with every type, arbitrary payloads.
    #[test]
    fn arbitrary_control_payloads(
        kind in 0u16..12,
        flags in any::<u8>(),
        payload in prop::collection::vec(any::<u8>(), 0..48),
    ) {
        let mut bytes = vec![0x80, 3];
        bytes.extend_from_slice(&kind.to_be_bytes());
        bytes.push(flags);
        bytes.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
        bytes.extend_from_slice(&payload);
        let _ = read_frame(&bytes);
    }

    #[test]
    fn frames_round_trip(f in any_frame()) {
        let bytes = f.encode();
        let head = frame::parse_head(bytes[..HEADER_LEN].try_into().unwrap()).unwrap();
        prop_assert_eq!(head.length, bytes.len() - HEADER_LEN);
        prop_assert_eq!(frame::parse(head, bytes[HEADER_LEN..].to_vec()).unwrap(), f);
    }

    #[test]
    fn arbitrary_uncompressed_blocks(b in prop::collection::vec(any::<u8>(), 0..128)) {
        let _ = headers::decode_block(&b);
    }

    #[test]
    fn uncompressed_blocks_round_trip(h in headers()) {
        prop_assert_eq!(headers::decode_block(&headers::encode_block(&h)).unwrap(), h);
    }

    #[test]
    fn arbitrary_compressed_blocks(blocks in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..96), 1..4)) {
        let mut d = Decompressor::new();
        for b in &blocks {
            if d.decompress(b).is_err() {
                break;
            }
        }
    }

    /// A valid first block (so the dictionary is in), then mutated ones.
    #[test]
    fn mutated_compressed_blocks(
        first in headers(),
        next in headers(),
        flips in prop::collection::vec((any::<usize>(), any::<u8>()), 1..4),
        cut in any::<usize>(),
    ) {
        let mut c = Compressor::new();
        let mut d = Decompressor::new();
        let z = c.compress(&first).unwrap();
        prop_assert_eq!(d.decompress(&z).unwrap(), first);
        let mut z = c.compress(&next).unwrap();
        for (at, b) in flips {
            let n = z.len();
            z[at % n] = b;
        }
        z.truncate(cut % (z.len() + 1));
        let _ = d.decompress(&z);
    }

    #[test]
    fn compressed_blocks_round_trip_per_direction(blocks in prop::collection::vec(headers(), 1..8)) {
        let (mut c, mut d) = (Compressor::new(), Decompressor::new());
        for h in &blocks {
            let z = c.compress(h).unwrap();
            prop_assert_eq!(&d.decompress(&z).unwrap(), h);
        }
    }
}

/// What a client sends: streams opened with real header blocks, data on them,
/// any other frame, and raw bytes.
#[derive(Debug, Clone)]
enum Send {
    Open(u32, Headers, bool),
    Data(u32, Vec<u8>, bool),
    Frame(Frame),
    Raw(Vec<u8>),
}

fn send() -> impl Strategy<Value = Send> {
    let id = prop_oneof![1u32..8, ID];
    prop_oneof![
        3 => (id.clone(), headers(), any::<bool>()).prop_map(|(s, h, fin)| Send::Open(s, h, fin)),
        3 => (id, prop::collection::vec(any::<u8>(), 0..100), any::<bool>())
            .prop_map(|(s, d, fin)| Send::Data(s, d, fin)),
        2 => any_frame().prop_map(Send::Frame),
        1 => prop::collection::vec(any::<u8>(), 0..24).prop_map(Send::Raw),
    ]
}

thread_local! {
    static PANICKED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Notes a panic on this thread, where a current-thread runtime runs the
/// connection's tasks too (a panicking task does not fail the test by itself).
fn watch_panics() {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICKED.with(|p| p.set(true));
            previous(info);
        }));
    });
    PANICKED.with(|p| p.set(false));
}

/// Serves a connection whose client sends `sends` and then closes its side; every
/// stream is accepted and read. The connection must end, with a reason, and no
/// task of it may panic.
fn serve(sends: Vec<Send>) -> String {
    watch_panics();
    use super::conn::{Conn, Limits};
    use tokio::io::AsyncWriteExt;
    let mut z = Compressor::new();
    let bytes: Vec<u8> = sends
        .into_iter()
        .flat_map(|s| match s {
            Send::Open(stream, h, fin) => Frame::SynStream {
                stream,
                associated: 0,
                priority: 0,
                flags: if fin { frame::FLAG_FIN } else { 0 },
                block: z.compress(&h).unwrap(),
            }
            .encode(),
            Send::Data(stream, data, fin) => Frame::Data {
                stream,
                flags: if fin { frame::FLAG_FIN } else { 0 },
                data,
            }
            .encode(),
            Send::Frame(f) => f.encode(),
            Send::Raw(b) => b,
        })
        .collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let why = rt.block_on(async move {
        let (client, server) = tokio::io::duplex(1 << 16);
        let limits = Limits {
            max_frame: 4096,
            max_streams: 8,
            idle: std::time::Duration::from_secs(30),
        };
        let mut conn = Conn::serve(server, limits);
        let (mut cr, mut cw) = tokio::io::split(client);
        tokio::spawn(async move {
            let _ = tokio::io::copy(&mut cr, &mut tokio::io::sink()).await;
        });
        tokio::spawn(async move {
            let _ = cw.write_all(&bytes).await;
            let _ = cw.shutdown().await;
        });
        let ended = tokio::time::timeout(std::time::Duration::from_secs(20), async {
            while let Some(s) = conn.accept().await {
                tokio::spawn(async move {
                    let (mut r, _w) = s.split();
                    while r.read().await.is_some() {}
                });
            }
            conn.closed().await
        })
        .await;
        ended.expect("the connection ends once the client has closed its side")
    });
    assert!(
        !PANICKED.with(|p| p.get()),
        "a task of the connection panicked"
    );
    why
}

proptest! {
    #![proptest_config(config(300))]

    #[test]
    fn connections_end_whatever_the_client_sends(sends in prop::collection::vec(send(), 0..12)) {
        let why = serve(sends);
        prop_assert!(!why.is_empty());
    }
}

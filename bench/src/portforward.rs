//! Port-forward through a runtime's streaming server, the way kubelet's
//! clients reach it: a WebSocket (RFC 6455) upgrade of the URL PortForward
//! returns, with the port in the `port` query parameter, speaking the
//! Kubernetes channel protocol: every binary message starts with a channel
//! byte (0 = data, 1 = errors of the first port), and the server first sends
//! the port number (2 bytes, little-endian) on both channels.
//!
//! Only what the bench needs: one port, an echo of N bytes, timed.

use std::hash::{BuildHasher, Hasher};
use std::time::{Duration, Instant};

use base64::Engine as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::cri::BenchError;

fn err(msg: impl Into<String>) -> BenchError {
    BenchError::Invalid(format!("port-forward: {}", msg.into()))
}

fn io(what: &str, source: std::io::Error) -> BenchError {
    BenchError::Io {
        what: format!("port-forward {what}"),
        source,
    }
}

/// A random-enough u64 (the handshake key and frame masks need no crypto).
fn random_u64() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish()
}

/// `http://host:port/path?q` → (`host:port`, `/path?q`).
pub fn split_url(url: &str) -> Result<(String, String), BenchError> {
    let rest = url.strip_prefix("http://").ok_or_else(|| {
        err(format!(
            "only http:// streaming URLs are supported, got {url:?}"
        ))
    })?;
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if host.is_empty() {
        return Err(err(format!("no host in {url:?}")));
    }
    Ok((host.to_string(), path.to_string()))
}

/// One client frame: FIN, the opcode, masked payload.
pub fn encode_frame(opcode: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut f = Vec::with_capacity(payload.len() + 14);
    f.push(0x80 | opcode);
    match payload.len() {
        n if n < 126 => f.push(0x80 | n as u8),
        n if n <= u16::MAX as usize => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(0x80 | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

/// A frame read from the stream: (fin, opcode, payload, bytes it took).
pub type Frame = (bool, u8, Vec<u8>, usize);

/// A frame parsed from the start of `buf`, or `None` when `buf` holds no
/// complete frame yet.
pub fn decode_frame(buf: &[u8]) -> Result<Option<Frame>, BenchError> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let fin = buf[0] & 0x80 != 0;
    let opcode = buf[0] & 0x0f;
    let masked = buf[1] & 0x80 != 0;
    let (len, mut at) = match buf[1] & 0x7f {
        126 => {
            let Some(b) = buf.get(2..4) else {
                return Ok(None);
            };
            (u16::from_be_bytes([b[0], b[1]]) as u64, 4)
        }
        127 => {
            let Some(b) = buf.get(2..10) else {
                return Ok(None);
            };
            let mut a = [0u8; 8];
            a.copy_from_slice(b);
            (u64::from_be_bytes(a), 10)
        }
        n => (u64::from(n), 2),
    };
    let len = usize::try_from(len).map_err(|_| err("frame too large"))?;
    if len > 64 * 1024 * 1024 {
        return Err(err(format!("frame of {len} bytes")));
    }
    let mut mask = None;
    if masked {
        let Some(m) = buf.get(at..at + 4) else {
            return Ok(None);
        };
        mask = Some([m[0], m[1], m[2], m[3]]);
        at += 4;
    }
    let Some(body) = buf.get(at..at + len) else {
        return Ok(None);
    };
    let payload = match mask {
        Some(m) => body.iter().enumerate().map(|(i, b)| b ^ m[i % 4]).collect(),
        None => body.to_vec(),
    };
    Ok(Some((fin, opcode, payload, at + len)))
}

/// Opens the WebSocket of `url` for `port`; returns the stream and any bytes
/// read past the handshake response.
async fn connect(url: &str, port: u16) -> Result<(TcpStream, Vec<u8>), BenchError> {
    let sep = if url.contains('?') { '&' } else { '?' };
    connect_ws(&format!("{url}{sep}port={port}")).await
}

/// Opens the WebSocket of `url` with the `v4.channel.k8s.io` subprotocol.
async fn connect_ws(url: &str) -> Result<(TcpStream, Vec<u8>), BenchError> {
    let (host, path) = split_url(url)?;
    let mut s = TcpStream::connect(&host)
        .await
        .map_err(|e| io(&format!("connecting to {host}"), e))?;
    s.set_nodelay(true).map_err(|e| io("nodelay", e))?;
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&random_u64().to_le_bytes());
    key[8..].copy_from_slice(&random_u64().to_le_bytes());
    let key = base64::engine::general_purpose::STANDARD.encode(key);
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Protocol: v4.channel.k8s.io\r\n\r\n"
    );
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| io("handshake", e))?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let end = loop {
        let n = s.read(&mut chunk).await.map_err(|e| io("handshake", e))?;
        if n == 0 {
            return Err(err("connection closed during the handshake"));
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > 64 * 1024 {
            return Err(err("handshake response too long"));
        }
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_string();
    if !head.starts_with("HTTP/1.1 101") {
        return Err(err(format!(
            "handshake refused: {}",
            head.lines().next().unwrap_or("")
        )));
    }
    Ok((s, buf[end..].to_vec()))
}

/// Sends `total` bytes to `port` through the port-forward of `url` and
/// reads them back (the pod runs an echo server); returns the time from the
/// first byte sent to the last byte echoed.
pub async fn echo(url: &str, port: u16, total: usize) -> Result<Duration, BenchError> {
    let (stream, mut pending) = connect(url, port).await?;
    let (mut rd, mut wr) = stream.into_split();
    let begin = Instant::now();
    let writer = async move {
        const CHUNK: usize = 32 * 1024;
        let pattern: Vec<u8> = (0..CHUNK).map(|i| (i % 251) as u8).collect();
        let mut sent = 0;
        let mut msg = Vec::with_capacity(CHUNK + 1);
        while sent < total {
            let n = CHUNK.min(total - sent);
            msg.clear();
            msg.push(0); // data channel of the first port
            msg.extend_from_slice(&pattern[..n]);
            let m = random_u64().to_le_bytes();
            wr.write_all(&encode_frame(2, &msg, [m[0], m[1], m[2], m[3]]))
                .await
                .map_err(|e| io("write", e))?;
            sent += n;
        }
        Ok::<_, BenchError>(wr)
    };
    let reader = async move {
        let mut got = 0usize;
        // The first 2 bytes on each channel are the port number.
        let mut prefix_left = [2usize, 2usize];
        let mut chunk = vec![0u8; 64 * 1024];
        let mut message: Vec<u8> = Vec::new();
        while got < total {
            while let Some((fin, opcode, payload, used)) = decode_frame(&pending)? {
                pending.drain(..used);
                match opcode {
                    0x8 => return Err(err("server closed the stream")),
                    0x9 | 0xA => continue,
                    _ => message.extend_from_slice(&payload),
                }
                if !fin {
                    continue;
                }
                let msg = std::mem::take(&mut message);
                let Some((&channel, mut data)) = msg.split_first() else {
                    continue;
                };
                let ch = usize::from(channel);
                if ch < 2 {
                    let skip = prefix_left[ch].min(data.len());
                    prefix_left[ch] -= skip;
                    data = &data[skip..];
                }
                match ch {
                    0 => got += data.len(),
                    1 if !data.is_empty() => {
                        return Err(err(String::from_utf8_lossy(data).trim().to_string()));
                    }
                    _ => {}
                }
            }
            if got >= total {
                break;
            }
            let n = rd.read(&mut chunk).await.map_err(|e| io("read", e))?;
            if n == 0 {
                return Err(err(format!("stream ended after {got} of {total} bytes")));
            }
            pending.extend_from_slice(&chunk[..n]);
        }
        Ok::<_, BenchError>(got)
    };
    let (w, r) = tokio::join!(writer, reader);
    let took = begin.elapsed();
    r?;
    let mut wr = w?;
    let m = random_u64().to_le_bytes();
    let _ = wr
        .write_all(&encode_frame(0x8, &[0x03, 0xe8], [m[0], m[1], m[2], m[3]]))
        .await;
    Ok(took)
}

/// Runs the exec behind `url` (stdout only) over WebSocket to its end: returns
/// once its result arrives on the error channel (3), an error unless it is
/// `Success`.
pub async fn exec(url: &str) -> Result<(), BenchError> {
    let (mut s, mut pending) = connect_ws(url).await?;
    let mut chunk = vec![0u8; 16 * 1024];
    let mut message: Vec<u8> = Vec::new();
    loop {
        while let Some((fin, opcode, payload, used)) = decode_frame(&pending)? {
            pending.drain(..used);
            match opcode {
                0x8 => return Err(err("exec: closed before its result")),
                0x9 | 0xA => continue,
                _ => message.extend_from_slice(&payload),
            }
            if !fin {
                continue;
            }
            let msg = std::mem::take(&mut message);
            if let Some((3, status)) = msg.split_first() {
                let status = String::from_utf8_lossy(status);
                if !status.contains("\"Success\"") {
                    return Err(err(format!("exec: {status}")));
                }
                let m = random_u64().to_le_bytes();
                let _ = s
                    .write_all(&encode_frame(0x8, &[0x03, 0xe8], [m[0], m[1], m[2], m[3]]))
                    .await;
                return Ok(());
            }
        }
        let n = s.read(&mut chunk).await.map_err(|e| io("read", e))?;
        if n == 0 {
            return Err(err("exec: stream ended before its result"));
        }
        pending.extend_from_slice(&chunk[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            split_url("http://127.0.0.1:1234/portforward/abc").expect("ok"),
            ("127.0.0.1:1234".to_string(), "/portforward/abc".to_string())
        );
        assert_eq!(
            split_url("http://[::1]:5").expect("ok"),
            ("[::1]:5".to_string(), "/".to_string())
        );
        assert!(split_url("https://x/y").is_err());
        assert!(split_url("http:///y").is_err());
    }

    #[test]
    fn frames_round_trip_at_every_length_encoding() {
        for len in [0usize, 5, 125, 126, 65_535, 65_536, 200_000] {
            let payload: Vec<u8> = (0..len).map(|i| (i % 256) as u8).collect();
            let f = encode_frame(2, &payload, [1, 2, 3, 4]);
            // Incomplete input is no frame yet, not an error.
            assert!(decode_frame(&f[..f.len() - 1]).expect("ok").is_none() || len == 0);
            let (fin, op, back, used) = decode_frame(&f).expect("ok").expect("frame");
            assert!(fin);
            assert_eq!(op, 2);
            assert_eq!(used, f.len());
            assert_eq!(back, payload, "len {len}");
        }
    }

    #[test]
    fn unmasked_server_frames() {
        let f = [0x82u8, 3, 0, 0x90, 0x1f];
        let (_, op, payload, used) = decode_frame(&f).expect("ok").expect("frame");
        assert_eq!((op, payload, used), (2, vec![0, 0x90, 0x1f], 5));
        assert!(decode_frame(&[0x82]).expect("ok").is_none());
    }
}

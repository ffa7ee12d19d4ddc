//! The server side of a SPDY/3.1 connection after the HTTP upgrade: streams the
//! client opens are replied to and handed out; data flows both ways.
//!
//! Two tasks own the connection: the reader (frames in, header decompression,
//! data to each stream's channel) and the writer (frames out, in the order they were
//! queued, header compression). A stream's incoming data goes through a bounded
//! channel: a consumer that does not keep up holds the reader, and TCP holds the
//! client.
//!
//! Flow control: crust sends WINDOW_UPDATE for what it consumes, so a peer that
//! keeps SPDY/3.1 windows is never stalled, but does not hold its own data back for
//! the peer's window: moby/spdystream (client-go, crictl, kubelet) keeps no windows
//! and never sends WINDOW_UPDATE, so waiting for one would stall every transfer
//! past 64 KiB. TCP's own flow control bounds what is in flight.

use std::collections::HashMap;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use super::frame::{self, FLAG_FIN, Frame, HEADER_LEN, Head};
use super::headers::{Compressor, Decompressor, Headers};

/// Bounds of one connection.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest frame payload accepted.
    pub max_frame: usize,
    /// Streams open at once.
    pub max_streams: usize,
    /// The connection closes after this long without a frame from the client.
    pub idle: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame: 1 << 20,
            max_streams: 128,
            idle: Duration::from_secs(4 * 3600),
        }
    }
}

/// Largest DATA frame crust sends.
const CHUNK: usize = 32 * 1024;
/// Frames of one stream waiting for its consumer.
const STREAM_BUFFER: usize = 16;

enum Out {
    Frame(Frame),
    /// A SYN_REPLY, compressed by the writer (compression is in sending order).
    Reply(u32, Headers),
    /// Flush everything queued, send GOAWAY and shut the connection down.
    Close,
}

/// One stream the client opened.
pub struct Stream {
    pub id: u32,
    pub headers: Headers,
    data: mpsc::Receiver<Vec<u8>>,
    writer: StreamWriter,
}

impl Stream {
    /// The value of header `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The next data the client sent; `None` once it half-closed the stream (FIN),
    /// reset it, or the connection ended.
    pub async fn read(&mut self) -> Option<Vec<u8>> {
        self.data.recv().await
    }

    /// A handle that sends on this stream; it may be cloned and moved.
    pub fn writer(&self) -> StreamWriter {
        self.writer.clone()
    }

    /// Splits the stream into its reading and writing halves.
    pub fn split(self) -> (StreamReader, StreamWriter) {
        (StreamReader { data: self.data }, self.writer)
    }
}

pub struct StreamReader {
    data: mpsc::Receiver<Vec<u8>>,
}

impl StreamReader {
    pub async fn read(&mut self) -> Option<Vec<u8>> {
        self.data.recv().await
    }
}

#[derive(Clone)]
pub struct StreamWriter {
    id: u32,
    out: mpsc::Sender<Out>,
    closed: Arc<AtomicBool>,
}

fn gone() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "SPDY connection closed")
}

impl StreamWriter {
    /// Sends `data` in frames of at most 32 KiB.
    pub async fn write(&self, data: &[u8]) -> io::Result<()> {
        if self.closed.load(Ordering::Relaxed) {
            return Err(gone());
        }
        for chunk in data.chunks(CHUNK) {
            self.frame(Frame::Data {
                stream: self.id,
                flags: 0,
                data: chunk.to_vec(),
            })
            .await?;
        }
        Ok(())
    }

    /// Half-closes the stream from our side (an empty DATA frame with FIN).
    pub async fn close(&self) -> io::Result<()> {
        if self.closed.swap(true, Ordering::Relaxed) {
            return Ok(());
        }
        self.frame(Frame::Data {
            stream: self.id,
            flags: FLAG_FIN,
            data: Vec::new(),
        })
        .await
    }

    /// Aborts the stream (RST_STREAM with `status`).
    pub async fn reset(&self, status: u32) -> io::Result<()> {
        self.closed.store(true, Ordering::Relaxed);
        self.frame(Frame::RstStream {
            stream: self.id,
            status,
        })
        .await
    }

    async fn frame(&self, f: Frame) -> io::Result<()> {
        self.out.send(Out::Frame(f)).await.map_err(|_| gone())
    }
}

/// Accepts the streams of one connection.
pub struct Conn {
    streams: mpsc::Receiver<Stream>,
    out: mpsc::Sender<Out>,
    done: tokio::sync::watch::Receiver<Option<String>>,
}

impl Conn {
    /// Starts serving a connection (the upgraded HTTP/1.1 socket).
    pub fn serve<T>(io: T, limits: Limits) -> Conn
    where
        T: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (r, w) = tokio::io::split(io);
        let (out_tx, out_rx) = mpsc::channel(64);
        let (streams_tx, streams_rx) = mpsc::channel(limits.max_streams);
        let (done_tx, done_rx) = tokio::sync::watch::channel(None);
        let last = Arc::new(AtomicU32::new(0));
        let reader = Reader {
            r,
            limits,
            out: out_tx.clone(),
            streams: streams_tx,
            open: HashMap::new(),
            zlib: Decompressor::new(),
            last_stream: 0,
            last: last.clone(),
        };
        let done = Arc::new(done_tx);
        let d = done.clone();
        tokio::spawn(async move {
            let why = match reader.run().await {
                Ok(()) => "client closed the connection".to_string(),
                Err(e) => e.to_string(),
            };
            d.send_if_modified(|v| {
                v.get_or_insert(why);
                true
            });
        });
        tokio::spawn(async move {
            let why = match write_loop(w, out_rx, last).await {
                Ok(()) => "connection closed".to_string(),
                Err(e) => format!("writing: {e}"),
            };
            done.send_if_modified(|v| {
                v.get_or_insert(why);
                true
            });
        });
        Conn {
            streams: streams_rx,
            out: out_tx,
            done: done_rx,
        }
    }

    /// The next stream the client opens; `None` once the connection is over.
    pub async fn accept(&mut self) -> Option<Stream> {
        self.streams.recv().await
    }

    /// Sends what is queued, then GOAWAY, and closes the connection.
    pub async fn close(&self) {
        let _ = self.out.send(Out::Close).await;
    }

    /// Waits until the connection has ended; returns why.
    pub async fn closed(&self) -> String {
        let mut done = self.done.clone();
        match done.wait_for(Option::is_some).await {
            Ok(v) => v.clone().unwrap_or_default(),
            Err(_) => "connection gone".into(),
        }
    }
}

struct Reader<R> {
    r: R,
    limits: Limits,
    out: mpsc::Sender<Out>,
    streams: mpsc::Sender<Stream>,
    open: HashMap<u32, mpsc::Sender<Vec<u8>>>,
    zlib: Decompressor,
    last_stream: u32,
    /// `last_stream`, for the writer's GOAWAY.
    last: Arc<AtomicU32>,
}

impl<R: AsyncRead + Unpin> Reader<R> {
    async fn run(mut self) -> io::Result<()> {
        let r = self.read_loop().await;
        if let Err(e) = &r
            && e.kind() == io::ErrorKind::InvalidData
        {
            let _ = self
                .out
                .send(Out::Frame(Frame::GoAway {
                    last_stream: self.last_stream,
                    status: 1, // PROTOCOL_ERROR
                }))
                .await;
            let _ = self.out.send(Out::Close).await;
        }
        r
    }

    async fn read_loop(&mut self) -> io::Result<()> {
        loop {
            let mut head = [0u8; HEADER_LEN];
            match tokio::time::timeout(self.limits.idle, self.r.read_exact(&mut head)).await {
                Err(_) => return Err(io::Error::new(io::ErrorKind::TimedOut, "idle timeout")),
                Ok(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
                Ok(r) => r?,
            };
            let head: Head = frame::parse_head(&head)?;
            if head.length > self.limits.max_frame {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "frame of {} bytes (at most {})",
                        head.length, self.limits.max_frame
                    ),
                ));
            }
            let mut payload = vec![0u8; head.length];
            self.r.read_exact(&mut payload).await?;
            self.handle(frame::parse(head, payload)?).await?;
        }
    }

    async fn send(&mut self, out: Out) -> io::Result<()> {
        self.out.send(out).await.map_err(|_| gone())
    }

    async fn handle(&mut self, f: Frame) -> io::Result<()> {
        match f {
            Frame::SynStream {
                stream,
                flags,
                block,
                ..
            } => {
                // Decompressed whatever happens: the zlib context spans the connection.
                let headers = self.zlib.decompress(&block)?;
                if stream % 2 == 0 || stream <= self.last_stream {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("client stream id {stream} not odd and increasing"),
                    ));
                }
                self.last_stream = stream;
                self.last.store(stream, Ordering::Relaxed);
                if self.open.len() >= self.limits.max_streams {
                    return self
                        .send(Out::Frame(Frame::RstStream {
                            stream,
                            status: frame::rst::REFUSED_STREAM,
                        }))
                        .await;
                }
                let (tx, rx) = mpsc::channel(STREAM_BUFFER);
                if flags & FLAG_FIN == 0 {
                    self.open.insert(stream, tx);
                }
                self.send(Out::Reply(stream, Vec::new())).await?;
                let s = Stream {
                    id: stream,
                    headers,
                    data: rx,
                    writer: StreamWriter {
                        id: stream,
                        out: self.out.clone(),
                        closed: Arc::new(AtomicBool::new(false)),
                    },
                };
                // Nobody accepting any more: the stream goes unanswered.
                let _ = self.streams.send(s).await;
            }
            Frame::Data {
                stream,
                flags,
                data,
            } => {
                let len = data.len() as u32;
                if let Some(tx) = self.open.get(&stream) {
                    if !data.is_empty() && tx.send(data).await.is_err() {
                        // The consumer is gone; what the client sends is dropped.
                    }
                    if len > 0 {
                        self.send(Out::Frame(Frame::WindowUpdate { stream, delta: len }))
                            .await?;
                        self.send(Out::Frame(Frame::WindowUpdate {
                            stream: 0,
                            delta: len,
                        }))
                        .await?;
                    }
                } else if stream > self.last_stream {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("data for stream {stream} never opened"),
                    ));
                }
                if flags & FLAG_FIN != 0 {
                    self.open.remove(&stream);
                }
            }
            Frame::RstStream { stream, .. } => {
                self.open.remove(&stream);
            }
            Frame::Ping { id } => self.send(Out::Frame(Frame::Ping { id })).await?,
            Frame::GoAway { .. } => return Ok(()),
            Frame::Headers { block, .. } | Frame::SynReply { block, .. } => {
                self.zlib.decompress(&block)?;
            }
            Frame::Settings { .. } | Frame::WindowUpdate { .. } | Frame::Unknown { .. } => {}
        }
        Ok(())
    }
}

async fn write_loop<W: AsyncWrite + Unpin>(
    mut w: W,
    mut rx: mpsc::Receiver<Out>,
    last: Arc<AtomicU32>,
) -> io::Result<()> {
    let mut zlib = Compressor::new();
    let mut buf = Vec::with_capacity(64 * 1024);
    while let Some(first) = rx.recv().await {
        // Batch what is already queued into one write.
        let mut next = Some(first);
        let mut close = false;
        while let Some(out) = next.take() {
            match out {
                Out::Frame(f) => buf.extend_from_slice(&f.encode()),
                Out::Reply(stream, headers) => {
                    let block = zlib.compress(&headers)?;
                    buf.extend_from_slice(
                        &Frame::SynReply {
                            stream,
                            flags: 0,
                            block,
                        }
                        .encode(),
                    );
                }
                Out::Close => {
                    close = true;
                    break;
                }
            }
            if buf.len() < 256 * 1024 {
                next = rx.try_recv().ok();
            }
        }
        if close {
            buf.extend_from_slice(
                &Frame::GoAway {
                    last_stream: last.load(Ordering::Relaxed),
                    status: 0,
                }
                .encode(),
            );
        }
        w.write_all(&buf).await?;
        buf.clear();
        if close {
            w.flush().await?;
            let _ = w.shutdown().await;
            return Ok(());
        }
    }
    Ok(())
}

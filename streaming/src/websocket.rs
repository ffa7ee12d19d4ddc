//! The remote-command protocol over WebSocket (`v5.channel.k8s.io`,
//! `v4.channel.k8s.io`; client-go's WebSocket executor, `crictl --transport
//! websocket`): one binary message per chunk, its first byte the channel — 0 stdin,
//! 1 stdout, 2 stderr, 3 error, 4 resize. From v5 the client half-closes a channel
//! with the message `[255, channel]` (stdin's end of file); v4 cannot.

use std::future::Future;
use std::io;

use async_trait::async_trait;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::remotecommand::{
    self, ChannelIn, ChannelOut, ExecOptions, Process, Session, TermSize, V4, V5,
};

/// The exec protocols served over WebSocket, preferred first.
pub const PROTOCOLS: &[&str] = &[V5, V4];

const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const ERROR: u8 = 3;
const RESIZE: u8 = 4;
const CLOSE: u8 = 255;
/// Largest message sent.
const CHUNK: usize = 32 * 1024;

struct WsOut {
    channel: u8,
    tx: mpsc::Sender<Message>,
}

#[async_trait]
impl ChannelOut for WsOut {
    async fn send(&self, data: &[u8]) -> io::Result<()> {
        for chunk in data.chunks(CHUNK) {
            let mut m = Vec::with_capacity(chunk.len() + 1);
            m.push(self.channel);
            m.extend_from_slice(chunk);
            self.tx
                .send(Message::Binary(m.into()))
                .await
                .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "WebSocket closed"))?;
        }
        Ok(())
    }

    /// The server never half-closes a channel: the end of the connection ends them.
    async fn finish(&self) {}
}

/// Serves one exec session on an upgraded WebSocket.
pub async fn serve_exec<S, F, Fut>(
    ws: WebSocketStream<S>,
    protocol: &str,
    opts: ExecOptions,
    start: F,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: FnOnce(Option<TermSize>) -> Fut,
    Fut: Future<Output = Result<Process, String>>,
{
    let (mut sink, mut incoming) = ws.split();
    let (out_tx, mut out_rx) = mpsc::channel::<Message>(64);
    let writer = tokio::spawn(async move {
        while let Some(m) = out_rx.recv().await {
            let last = matches!(m, Message::Close(_));
            if sink.send(m).await.is_err() || last {
                break;
            }
        }
        let _ = sink.close().await;
    });
    let (stdin_tx, stdin_rx) = mpsc::channel::<Vec<u8>>(16);
    let (resize_tx, resize_rx) = mpsc::channel::<Vec<u8>>(16);
    let (closed_tx, closed_rx) = oneshot::channel::<String>();
    let v5 = protocol == V5;
    let reader = tokio::spawn(async move {
        let mut stdin_tx = Some(stdin_tx);
        let why = loop {
            match incoming.next().await {
                Some(Ok(Message::Binary(b))) => match (b.first().copied(), b.get(1).copied()) {
                    (Some(STDIN), _) => {
                        if let Some(tx) = &stdin_tx
                            && tx.send(b[1..].to_vec()).await.is_err()
                        {
                            stdin_tx = None;
                        }
                    }
                    (Some(RESIZE), _) => {
                        let _ = resize_tx.send(b[1..].to_vec()).await;
                    }
                    (Some(CLOSE), Some(STDIN)) if v5 => stdin_tx = None,
                    _ => {}
                },
                Some(Ok(Message::Close(_))) | None => break "client closed the connection".into(),
                Some(Ok(_)) => {}
                Some(Err(e)) => break format!("reading: {e}"),
            }
        };
        let _ = closed_tx.send(why);
    });
    let out = |channel| {
        Box::new(WsOut {
            channel,
            tx: out_tx.clone(),
        }) as Box<dyn ChannelOut>
    };
    let session = Session {
        error: out(ERROR),
        stdin: opts.stdin.then(|| Box::new(stdin_rx) as Box<dyn ChannelIn>),
        stdout: opts.stdout.then(|| out(STDOUT)),
        stderr: (opts.stderr && !opts.tty).then(|| out(STDERR)),
        resize: opts.tty.then(|| Box::new(resize_rx) as Box<dyn ChannelIn>),
    };
    let closed = async { closed_rx.await.unwrap_or_else(|_| "connection gone".into()) };
    remotecommand::run(session, protocol, start, closed).await;
    let _ = out_tx
        .send(Message::Close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "".into(),
        })))
        .await;
    drop(out_tx);
    let _ = writer.await;
    reader.abort();
}

/// A byte stream over a WebSocket's binary messages, for SPDY tunnelled through it
/// (client-go's port-forward over WebSocket): what the client sends comes out of
/// the returned stream, what is written to it goes out as messages.
pub fn tunnel<S>(ws: WebSocketStream<S>) -> tokio::io::DuplexStream
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (ours, theirs) = tokio::io::duplex(256 * 1024);
    let (mut rd, mut wr) = tokio::io::split(theirs);
    let (mut sink, mut incoming) = ws.split();
    tokio::spawn(async move {
        let inbound = async {
            while let Some(Ok(m)) = incoming.next().await {
                match m {
                    Message::Binary(b) if wr.write_all(&b).await.is_err() => break,
                    Message::Close(_) => break,
                    _ => {}
                }
            }
            let _ = wr.shutdown().await;
        };
        let outbound = async {
            let mut buf = vec![0u8; CHUNK];
            loop {
                match rd.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if sink
                            .send(Message::Binary(buf[..n].to_vec().into()))
                            .await
                            .is_err()
                        {
                            break;
                        }
                    }
                }
            }
            let _ = sink.close().await;
        };
        tokio::join!(inbound, outbound);
    });
    ours
}

/// kubelet's port-forward over WebSocket without tunnelling (`v4.channel.k8s.io`, or
/// no subprotocol; what older clients and `hack/bench` speak): the ports are the
/// URL's `port` parameters; port `i` has data channel `2i` and error channel
/// `2i + 1`, and the server first sends the port (2 bytes, little-endian) on both.
/// Each port gets one connection for the session.
pub async fn serve_portforward<S, C, Fut>(ws: WebSocketStream<S>, ports: Vec<u16>, connect: C)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    C: Fn(u16) -> Fut,
    Fut: Future<Output = io::Result<tokio::net::TcpStream>> + Send + 'static,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut sink, mut incoming) = ws.split();
    let (out_tx, mut out_rx) = mpsc::channel::<Message>(64);
    let writer = tokio::spawn(async move {
        while let Some(m) = out_rx.recv().await {
            if sink.send(m).await.is_err() {
                break;
            }
        }
        let _ = sink.close().await;
    });
    let send = |ch: u8, data: &[u8]| {
        let mut m = Vec::with_capacity(data.len() + 1);
        m.push(ch);
        m.extend_from_slice(data);
        Message::Binary(m.into())
    };
    let mut to_ports = Vec::new();
    let mut tasks = Vec::new();
    for (i, &port) in ports.iter().enumerate() {
        let (data_ch, err_ch) = ((2 * i) as u8, (2 * i + 1) as u8);
        for ch in [data_ch, err_ch] {
            let _ = out_tx.send(send(ch, &port.to_le_bytes())).await;
        }
        let (tx, mut rx) = mpsc::channel::<Vec<u8>>(16);
        to_ports.push(tx);
        let out = out_tx.clone();
        let connecting = connect(port);
        tasks.push(tokio::spawn(async move {
            let tcp = match connecting.await {
                Ok(t) => t,
                Err(e) => {
                    let msg = format!("error forwarding port {port} to pod: {e}");
                    let _ = out.send(send(err_ch, msg.as_bytes())).await;
                    return;
                }
            };
            let (mut r, mut w) = tcp.into_split();
            let upstream = async {
                while let Some(data) = rx.recv().await {
                    crate::metrics::bytes("portforward", "in", data.len());
                    if w.write_all(&data).await.is_err() {
                        break;
                    }
                }
                let _ = w.shutdown().await;
            };
            let downstream = async {
                let mut buf = vec![0u8; CHUNK];
                while let Ok(n) = r.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    crate::metrics::bytes("portforward", "out", n);
                    if out.send(send(data_ch, &buf[..n])).await.is_err() {
                        break;
                    }
                }
            };
            tokio::join!(upstream, downstream);
        }));
    }
    while let Some(Ok(m)) = incoming.next().await {
        match m {
            Message::Binary(b) => {
                let Some((&ch, data)) = b.split_first() else {
                    continue;
                };
                // Data channels only; what comes on an error channel is ignored.
                if ch % 2 == 0
                    && let Some(tx) = to_ports.get(usize::from(ch / 2))
                    && !data.is_empty()
                {
                    let _ = tx.send(data.to_vec()).await;
                }
            }
            Message::Close(_) => break,
            _ => {}
        }
    }
    drop(to_ports);
    for t in tasks {
        t.abort();
    }
    drop(out_tx);
    let _ = writer.await;
}

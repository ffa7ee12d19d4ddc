//! The port-forward protocol over SPDY (`portforward.k8s.io`, client-go's
//! `tools/portforward`): for each connection it forwards, the client opens an
//! `error` and a `data` stream carrying the same `port` and `requestid` headers.
//! Once both are there, the server connects to the port in the pod's network and
//! copies bytes both ways; a connection that cannot be made is reported on that
//! request's error stream and the session goes on.

use std::collections::HashMap;
use std::future::Future;
use std::io;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::{debug, info};

use crate::spdy::frame::rst;
use crate::spdy::{Conn, Stream};

pub const PROTOCOL: &str = "portforward.k8s.io";
/// The protocols served over SPDY.
pub const SPDY_PROTOCOLS: &[&str] = &[PROTOCOL];
/// Over WebSocket: client-go tunnels the same SPDY session through binary
/// messages; older clients speak kubelet's channel protocol (ports in the URL).
pub const TUNNEL: &str = "SPDY/3.1+portforward.k8s.io";
pub const WEBSOCKET_PROTOCOLS: &[&str] = &[TUNNEL, "v4.channel.k8s.io"];

#[derive(Default)]
struct Pair {
    error: Option<Stream>,
    data: Option<Stream>,
}

/// Serves one port-forward session: every request of the client gets a connection
/// made by `connect(port)` until the client closes the session.
pub async fn serve_spdy<C, Fut>(mut conn: Conn, connect: C)
where
    C: Fn(u16) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = io::Result<TcpStream>> + Send + 'static,
{
    let mut pending: HashMap<String, Pair> = HashMap::new();
    while let Some(s) = conn.accept().await {
        let kind = s.header("streamtype").unwrap_or_default().to_string();
        let Some(port) = s.header("port").and_then(|p| p.parse::<u16>().ok()) else {
            debug!(stream = s.id, "port-forward stream without a valid port");
            let _ = s.writer().reset(rst::PROTOCOL_ERROR).await;
            continue;
        };
        // Old clients send no request id: a pair is then the two streams of a port.
        let key = s
            .header("requestid")
            .map(str::to_string)
            .unwrap_or_else(|| format!("port {port}"));
        let pair = pending.entry(key.clone()).or_default();
        match kind.as_str() {
            "error" if pair.error.is_none() => pair.error = Some(s),
            "data" if pair.data.is_none() => pair.data = Some(s),
            _ => {
                debug!(stream = s.id, "unexpected port-forward stream {kind:?}");
                let _ = s.writer().reset(rst::PROTOCOL_ERROR).await;
                continue;
            }
        }
        if pair.error.is_some() && pair.data.is_some() {
            let Pair { error, data } = pending.remove(&key).expect("just filled");
            let (error, data) = (error.expect("both"), data.expect("both"));
            tokio::spawn(forward(port, error, data, connect.clone()));
        }
    }
    conn.close().await;
}

async fn forward<C, Fut>(port: u16, error: Stream, data: Stream, connect: C)
where
    C: Fn(u16) -> Fut,
    Fut: Future<Output = io::Result<TcpStream>>,
{
    let err_w = error.writer();
    let tcp = match connect(port).await {
        Ok(t) => t,
        Err(e) => {
            info!("port-forward to port {port}: {e}");
            let _ = err_w
                .write(format!("error forwarding port {port} to pod: {e}").as_bytes())
                .await;
            let _ = err_w.close().await;
            let _ = data.writer().close().await;
            return;
        }
    };
    let (mut from_client, to_client) = data.split();
    let (mut tcp_r, mut tcp_w) = tcp.into_split();
    let upstream = async {
        while let Some(bytes) = from_client.read().await {
            crate::metrics::bytes("portforward", "in", bytes.len());
            if tcp_w.write_all(&bytes).await.is_err() {
                break;
            }
        }
        let _ = tcp_w.shutdown().await;
    };
    let downstream = async {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match tcp_r.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    crate::metrics::bytes("portforward", "out", n);
                    if to_client.write(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        }
        let _ = to_client.close().await;
    };
    tokio::join!(upstream, downstream);
    let _ = err_w.close().await;
}

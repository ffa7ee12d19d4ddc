//! The HTTP server behind the streaming URLs: `/<kind>/<token>`, upgraded to
//! SPDY/3.1 with a remote-command subprotocol negotiated through
//! `X-Stream-Protocol-Version`.
//!
//! A token is checked before anything runs: unknown, used or expired → 404. Sessions
//! at once are capped (429 beyond); header sizes are hyper's (at most 100 headers,
//! 64 KiB); frames and streams per connection are capped by [`Limits`].

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http::{HeaderValue, Request as HttpRequest, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

use crate::metrics;
use crate::portforward;
use crate::remotecommand::{self, ExecOptions, Process, TermSize};
use crate::spdy::{Conn, Limits};
use crate::tls::{self, TlsFiles};
use crate::tokens::{Request, TokenError, Tokens};
use crate::websocket;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

const PROTOCOL_HEADER: &str = "x-stream-protocol-version";
const WS_PROTOCOL_HEADER: &str = "sec-websocket-protocol";

/// What the server needs from the node: processes to stream.
#[async_trait]
pub trait Backend: Send + Sync + 'static {
    /// Starts `cmd` in container `container_id` with the channels `opts` asks for;
    /// with a TTY, at terminal size `size` when the client told it.
    async fn exec(
        &self,
        container_id: &str,
        cmd: &[String],
        opts: ExecOptions,
        size: Option<TermSize>,
    ) -> Result<Process, String>;

    /// Attaches to the running container `container_id`'s own stdio, with the
    /// channels `opts` asks for. Ending the session detaches; it never stops the
    /// container.
    async fn attach(
        &self,
        container_id: &str,
        opts: ExecOptions,
        size: Option<TermSize>,
    ) -> Result<Process, String>;

    /// A connection to `port` in the network of pod `pod_id` (its own network
    /// namespace, or the node's for a host-network pod).
    async fn connect(&self, pod_id: &str, port: u16) -> std::io::Result<tokio::net::TcpStream>;
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub address: SocketAddr,
    /// Sessions served at once.
    pub max_sessions: usize,
    /// How long a URL may wait to be used.
    pub token_ttl: Duration,
    pub limits: Limits,
    /// Serve HTTPS with this certificate and key; plain HTTP when `None`.
    pub tls: Option<TlsFiles>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            address: SocketAddr::from(([127, 0, 0, 1], 0)),
            max_sessions: 256,
            token_ttl: Duration::from_secs(60),
            limits: Limits::default(),
            tls: None,
        }
    }
}

struct State {
    tokens: Tokens,
    backend: Arc<dyn Backend>,
    sessions: Arc<Semaphore>,
    limits: Limits,
}

/// How long a client may take over its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A running streaming server.
pub struct Server {
    addr: SocketAddr,
    scheme: &'static str,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Server {
    /// Binds `config.address` (port 0: one chosen now) and serves in the background,
    /// over TLS when `config.tls` names the files (read now: an unusable file is an
    /// error here, not at the first client).
    pub async fn start(config: ServerConfig, backend: Arc<dyn Backend>) -> std::io::Result<Server> {
        let acceptor = match &config.tls {
            Some(files) => Some(tls::acceptor(files).map_err(std::io::Error::other)?),
            None => None,
        };
        let listener = TcpListener::bind(config.address).await?;
        // Registered now, so that they are exported before the first session.
        std::sync::LazyLock::force(&metrics::METRICS);
        let addr = listener.local_addr()?;
        let state = Arc::new(State {
            tokens: Tokens::new(config.token_ttl, 4096),
            backend,
            sessions: Arc::new(Semaphore::new(config.max_sessions)),
            limits: config.limits,
        });
        let scheme = if acceptor.is_some() { "https" } else { "http" };
        let task = tokio::spawn(accept_loop(listener, acceptor, state.clone()));
        info!("streaming server listening on {scheme}://{addr}");
        Ok(Server {
            addr,
            scheme,
            state,
            task,
        })
    }

    pub fn address(&self) -> SocketAddr {
        self.addr
    }

    /// The URL a client connects to for `req`.
    pub fn url(&self, req: Request) -> Result<String, TokenError> {
        let kind = req.kind();
        let token = self.state.tokens.insert(req)?;
        Ok(format!("{}://{}/{kind}/{token}", self.scheme, self.addr))
    }
}

async fn accept_loop(listener: TcpListener, acceptor: Option<TlsAcceptor>, state: Arc<State>) {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                warn!("streaming server: accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let state = state.clone();
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let Some(acceptor) = acceptor else {
                return serve_connection(tcp, peer, state).await;
            };
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => serve_connection(tls, peer, state).await,
                Ok(Err(e)) => {
                    refused("tls");
                    warn!("streaming connection from {peer}: TLS handshake: {e}");
                }
                Err(_) => {
                    refused("tls");
                    warn!(
                        "streaming connection from {peer}: no TLS handshake within {HANDSHAKE_TIMEOUT:?}"
                    );
                }
            }
        });
    }
}

/// Serves one client connection (plain or TLS), its upgrades included.
async fn serve_connection<I>(io: I, peer: SocketAddr, state: Arc<State>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |req| {
        let s = state.clone();
        async move { Ok::<_, Infallible>(handle(&s, req).await) }
    });
    let r = hyper::server::conn::http1::Builder::new()
        .max_buf_size(64 * 1024)
        .serve_connection(TokioIo::new(io), svc)
        .with_upgrades()
        .await;
    if let Err(e) = r {
        debug!("streaming connection from {peer}: {e}");
    }
}

fn refused(reason: &str) {
    metrics::METRICS.refused.with_label_values(&[reason]).inc();
}

fn reply(status: StatusCode, msg: impl Into<String>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(msg.into())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// The client's subprotocols in `name`, in its order (several headers or comma
/// lists).
fn client_protocols(req: &HttpRequest<Incoming>, name: &str) -> Vec<String> {
    req.headers()
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|p| p.trim().to_string())
        .filter(|p| !p.is_empty())
        .collect()
}

/// The first of ours the client offers; a SPDY client offering none speaks our
/// oldest (`channel.k8s.io` for exec), as the kubelet assumes.
fn negotiate(client: &[String], ours: &[&'static str], spdy: bool) -> Option<&'static str> {
    if client.is_empty() {
        return if spdy { ours.last().copied() } else { None };
    }
    ours.iter().copied().find(|p| client.iter().any(|c| c == p))
}

async fn handle(state: &Arc<State>, mut req: HttpRequest<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    let mut parts = path.trim_start_matches('/').splitn(2, '/');
    let (Some(kind), Some(token)) = (parts.next(), parts.next()) else {
        return reply(StatusCode::NOT_FOUND, "not found\n");
    };
    let Some(request) = state.tokens.take(token) else {
        refused("token");
        return reply(
            StatusCode::NOT_FOUND,
            "unknown, used or expired streaming token\n",
        );
    };
    if request.kind() != kind {
        return reply(
            StatusCode::NOT_FOUND,
            "token is not for this kind of session\n",
        );
    }
    let upgrade = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_ascii_lowercase();
    let websocket = match upgrade.as_str() {
        "spdy/3.1" => None,
        "websocket" => match req.headers().get("sec-websocket-key") {
            Some(key) => Some(derive_accept_key(key.as_bytes())),
            None => return reply(StatusCode::BAD_REQUEST, "WebSocket upgrade without a key\n"),
        },
        _ => {
            return reply(
                StatusCode::BAD_REQUEST,
                format!("unsupported upgrade {upgrade:?}: SPDY/3.1 or websocket\n"),
            );
        }
    };
    let (offered, ours) = match (&request, websocket.is_some()) {
        (Request::Exec { .. } | Request::Attach { .. }, false) => (
            client_protocols(&req, PROTOCOL_HEADER),
            remotecommand::SPDY_PROTOCOLS,
        ),
        (Request::PortForward { .. }, false) => (
            client_protocols(&req, PROTOCOL_HEADER),
            portforward::SPDY_PROTOCOLS,
        ),
        (Request::Exec { .. } | Request::Attach { .. }, true) => (
            client_protocols(&req, WS_PROTOCOL_HEADER),
            websocket::PROTOCOLS,
        ),
        (Request::PortForward { .. }, true) => (
            client_protocols(&req, WS_PROTOCOL_HEADER),
            portforward::WEBSOCKET_PROTOCOLS,
        ),
    };
    // kubelet's WebSocket port-forward also serves a client naming no subprotocol.
    let bare_port_forward =
        websocket.is_some() && offered.is_empty() && matches!(request, Request::PortForward { .. });
    let Some(protocol) =
        negotiate(&offered, ours, websocket.is_none()).or_else(|| bare_port_forward.then_some(""))
    else {
        refused("protocol");
        return reply(
            StatusCode::FORBIDDEN,
            format!("no supported stream protocol in {offered:?}; supported: {ours:?}\n"),
        );
    };
    let Ok(permit) = state.sessions.clone().try_acquire_owned() else {
        refused("too_many");
        return reply(
            StatusCode::TOO_MANY_REQUESTS,
            "too many streaming sessions\n",
        );
    };
    // kubelet's WebSocket port-forward names its ports in the URL.
    let channel_ports = websocket.is_some()
        && matches!(request, Request::PortForward { .. })
        && protocol != portforward::TUNNEL;
    let ports = match query_ports(req.uri().query()) {
        Ok(p) if !channel_ports || !p.is_empty() => p,
        Ok(_) => return reply(StatusCode::BAD_REQUEST, "no port in the URL\n"),
        Err(e) => return reply(StatusCode::BAD_REQUEST, format!("{e}\n")),
    };
    let upgraded = hyper::upgrade::on(&mut req);
    let s = state.clone();
    let over_websocket = websocket.is_some();
    tokio::spawn(async move {
        let io = match upgraded.await {
            Ok(io) => TokioIo::new(io),
            Err(e) => {
                debug!("streaming upgrade failed: {e}");
                return;
            }
        };
        let transport = if over_websocket { "websocket" } else { "spdy" };
        let _active = metrics::Active::start(request.kind(), transport);
        match request {
            Request::Exec {
                container_id,
                cmd,
                opts,
            } => {
                info!(container = %container_id, ?cmd, protocol, transport, "exec session");
                let backend = s.backend.clone();
                let start =
                    |size| async move { backend.exec(&container_id, &cmd, opts, size).await };
                if over_websocket {
                    let ws =
                        WebSocketStream::from_raw_socket(io, Role::Server, Some(ws_config())).await;
                    websocket::serve_exec(ws, protocol, opts, start).await;
                } else {
                    let conn = Conn::serve(io, s.limits.clone());
                    remotecommand::serve_spdy(conn, protocol, opts, start).await;
                }
            }
            Request::Attach { container_id, opts } => {
                info!(container = %container_id, protocol, transport, "attach session");
                let backend = s.backend.clone();
                let start = |size| async move { backend.attach(&container_id, opts, size).await };
                if over_websocket {
                    let ws =
                        WebSocketStream::from_raw_socket(io, Role::Server, Some(ws_config())).await;
                    websocket::serve_exec(ws, protocol, opts, start).await;
                } else {
                    let conn = Conn::serve(io, s.limits.clone());
                    remotecommand::serve_spdy(conn, protocol, opts, start).await;
                }
            }
            Request::PortForward { pod_id } => {
                info!(pod = %pod_id, transport, "port-forward session");
                let backend = s.backend.clone();
                let connect = move |port| {
                    let (backend, pod_id) = (backend.clone(), pod_id.clone());
                    async move { backend.connect(&pod_id, port).await }
                };
                if over_websocket {
                    let ws =
                        WebSocketStream::from_raw_socket(io, Role::Server, Some(ws_config())).await;
                    if protocol == portforward::TUNNEL {
                        let conn = Conn::serve(websocket::tunnel(ws), s.limits.clone());
                        portforward::serve_spdy(conn, connect).await;
                    } else {
                        websocket::serve_portforward(ws, ports, connect).await;
                    }
                } else {
                    let conn = Conn::serve(io, s.limits.clone());
                    portforward::serve_spdy(conn, connect).await;
                }
            }
        }
        drop(permit);
    });
    let mut r = reply(StatusCode::SWITCHING_PROTOCOLS, "");
    let h = r.headers_mut();
    h.remove(header::CONTENT_TYPE);
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    match websocket {
        None => {
            h.insert(header::UPGRADE, HeaderValue::from_static("SPDY/3.1"));
            h.insert(PROTOCOL_HEADER, HeaderValue::from_static(protocol));
        }
        Some(accept) => {
            h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
            if let Ok(v) = HeaderValue::from_str(&accept) {
                h.insert("sec-websocket-accept", v);
            }
            if !protocol.is_empty() {
                h.insert(WS_PROTOCOL_HEADER, HeaderValue::from_static(protocol));
            }
        }
    }
    r
}

/// The `port` parameters of a query string.
fn query_ports(query: Option<&str>) -> Result<Vec<u16>, String> {
    let mut ports = Vec::new();
    for pair in query.unwrap_or_default().split('&') {
        if let Some(v) = pair.strip_prefix("port=") {
            match v.parse::<u16>() {
                Ok(p) if p > 0 && ports.len() < 64 => ports.push(p),
                _ => return Err(format!("bad port parameter {v:?}")),
            }
        }
    }
    Ok(ports)
}

/// Bounds of a WebSocket: messages and frames of at most 1 MiB.
fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(1 << 20))
        .max_frame_size(Some(1 << 20))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation_prefers_ours_in_order() {
        let c = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let ours = remotecommand::SPDY_PROTOCOLS;
        let offered = c(&["v5.channel.k8s.io", "v4.channel.k8s.io", "channel.k8s.io"]);
        assert_eq!(negotiate(&offered, ours, true), Some(remotecommand::V4));
        let v2 = c(&["v2.channel.k8s.io"]);
        assert_eq!(negotiate(&v2, ours, true), Some(remotecommand::V2));
        assert_eq!(negotiate(&c(&[]), ours, true), Some(remotecommand::V1));
        assert_eq!(negotiate(&c(&["v9.channel.k8s.io"]), ours, true), None);
        // WebSocket: v5 first, and a client must name one.
        let ws = c(&["v4.channel.k8s.io", "v5.channel.k8s.io"]);
        assert_eq!(
            negotiate(&ws, websocket::PROTOCOLS, false),
            Some(remotecommand::V5)
        );
        assert_eq!(negotiate(&c(&[]), websocket::PROTOCOLS, false), None);
    }
}

/// Property-based fuzzing of the port-forward URL's query (docs/testing.md,
/// "Fuzzing"); `PROPTEST_CASES` overrides the bounded number of cases.
#[cfg(test)]
mod fuzz {
    use super::*;
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

    proptest! {
        #![proptest_config(config(3000))]

        #[test]
        fn arbitrary_queries(q in prop::option::of("[a-z0-9=&%+-]{0,60}|.{0,40}")) {
            if let Ok(ports) = query_ports(q.as_deref()) {
                // At most 64: every port takes two of the 256 channel numbers.
                prop_assert!(ports.len() <= 64 && ports.iter().all(|&p| p > 0));
            }
        }

        #[test]
        fn port_parameters_in_order(
            ports in prop::collection::vec(1u16.., 0..64),
            other in prop::collection::vec("[a-oq-z]{1,5}=[a-z0-9]{0,5}", 0..3),
        ) {
            let mut pairs: Vec<String> = ports.iter().map(|p| format!("port={p}")).collect();
            pairs.extend(other);
            let q = pairs.join("&");
            prop_assert_eq!(query_ports(Some(&q)).unwrap(), ports.clone());
            let more = format!("{q}&port=1");
            prop_assert_eq!(query_ports(Some(&more)).is_ok(), ports.len() < 64);
        }
    }
}

//! The streaming server of crust: the URLs that Exec, Attach and PortForward return
//! are served here, over SPDY/3.1 (what kubelet and crictl speak by default).
//!
//! - [`tokens`]: single-use, expiring tokens naming what a URL may do.
//! - [`spdy`]: the SPDY/3.1 framing and connection.
//! - [`remotecommand`]: the exec protocol (`v4.channel.k8s.io` … `channel.k8s.io`).
//! - [`portforward`]: the port-forward protocol (`portforward.k8s.io`).
//! - [`websocket`]: the exec protocol over WebSocket (`v5.channel.k8s.io`, v4).
//! - [`tls`]: HTTPS from a configured certificate and key.
//! - [`server`]: the HTTP server, the upgrade handshake, and the [`Backend`] seam
//!   through which processes are started (crustd's is the pod's shim).

pub mod metrics;
pub mod portforward;
pub mod remotecommand;
pub mod server;
pub mod spdy;
pub mod tls;
pub mod tokens;
pub mod websocket;

pub use remotecommand::{Control, ExecOptions, Input, Output, Process, TermSize};
pub use server::{Backend, Server, ServerConfig};
pub use tls::TlsFiles;
pub use tokens::{Request, Tokens};

//! The streaming server's backend: exec sessions run through the pod's shim
//! (`crust_sandbox`'s streamed exec), wrapped in the streaming crate's seams;
//! port-forward connections are made from crustd inside the pod's network.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use crust_sandbox::PodSandboxes;
use crust_sandbox::container::Containers;
use crust_sandbox::container::exec_stream::{ExecHandle, OutputReader, StreamOptions};
use crust_streaming::{
    Backend, Control, ExecOptions, Input, Output, Process, Server, ServerConfig, TermSize,
};
use tokio::io::AsyncWriteExt;

use crate::config::StreamingConfig;

/// Starts the streaming server of `config`, serving `containers` and `pods`.
pub async fn start(
    config: &StreamingConfig,
    containers: Containers,
    pods: PodSandboxes,
) -> io::Result<Server> {
    let server_config = ServerConfig {
        address: config.address,
        max_sessions: config.max_sessions,
        token_ttl: Duration::from_secs(config.token_ttl_secs),
        ..Default::default()
    };
    Server::start(server_config, Arc::new(NodeBackend { containers, pods })).await
}

struct NodeBackend {
    containers: Containers,
    pods: PodSandboxes,
}

/// How long a port-forward connection may take to be made.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Connects to `port` on the loopback of network namespace `netns` (the node's when
/// `None`), IPv4 first, as containerd does. The socket is made by a thread of its
/// own that enters the namespace and then ends: a socket belongs to the namespace
/// it was made in, whichever thread uses it later.
async fn connect_in(netns: Option<PathBuf>, port: u16) -> io::Result<tokio::net::TcpStream> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("crust-portfwd".into())
        .spawn(move || {
            let r = (|| -> io::Result<std::net::TcpStream> {
                if let Some(ns) = &netns {
                    let f = std::fs::File::open(ns)?;
                    nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET)
                        .map_err(|e| io::Error::other(format!("entering {}: {e}", ns.display())))?;
                }
                let v4 = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
                std::net::TcpStream::connect_timeout(&v4, CONNECT_TIMEOUT).or_else(|e4| {
                    let v6 = SocketAddr::from((Ipv6Addr::LOCALHOST, port));
                    std::net::TcpStream::connect_timeout(&v6, CONNECT_TIMEOUT).map_err(|_| e4)
                })
            })();
            let _ = tx.send(r);
        })?;
    let stream = rx
        .await
        .map_err(|_| io::Error::other("port-forward thread died"))??;
    stream.set_nonblocking(true)?;
    let _ = stream.set_nodelay(true);
    tokio::net::TcpStream::from_std(stream)
}

#[async_trait]
impl Backend for NodeBackend {
    async fn exec(
        &self,
        container_id: &str,
        cmd: &[String],
        opts: ExecOptions,
        size: Option<TermSize>,
    ) -> Result<Process, String> {
        let s = self
            .containers
            .exec_stream(
                container_id,
                cmd.to_vec(),
                StreamOptions {
                    stdin: opts.stdin,
                    stdout: opts.stdout,
                    stderr: opts.stderr,
                    tty: opts.tty,
                    size,
                },
            )
            .await
            .map_err(|e| e.to_string())?;
        let handle = s.handle;
        Ok(Process {
            stdin: s.stdin.map(|tx| {
                Box::new(Stdin {
                    tx,
                    handle: handle.clone(),
                }) as Box<dyn Input>
            }),
            stdout: s.stdout.map(|r| Box::new(Out(r)) as Box<dyn Output>),
            stderr: s.stderr.map(|r| Box::new(Out(r)) as Box<dyn Output>),
            control: Arc::new(Ctl(handle)),
        })
    }

    async fn connect(&self, pod_id: &str, port: u16) -> io::Result<tokio::net::TcpStream> {
        let pod = self
            .pods
            .get(pod_id)
            .map_err(|e| io::Error::other(e.to_string()))?;
        connect_in(pod.namespaces.net.clone(), port).await
    }
}

struct Out(OutputReader);

#[async_trait]
impl Output for Out {
    async fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf).await
    }
}

struct Stdin {
    tx: tokio::net::unix::pipe::Sender,
    handle: Arc<ExecHandle>,
}

#[async_trait]
impl Input for Stdin {
    async fn write(&mut self, data: &[u8]) -> io::Result<()> {
        self.tx.write_all(data).await
    }

    async fn close(&mut self) -> io::Result<()> {
        self.handle
            .close_stdin()
            .await
            .map_err(|e| io::Error::other(e.to_string()))
    }
}

struct Ctl(Arc<ExecHandle>);

#[async_trait]
impl Control for Ctl {
    async fn resize(&self, width: u16, height: u16) -> io::Result<()> {
        self.0
            .resize(width, height)
            .await
            .map_err(|e| io::Error::other(e.to_string()))
    }

    async fn wait(&self) -> Result<i32, String> {
        self.0.wait().await
    }

    async fn kill(&self) {
        self.0.kill().await
    }
}

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
use crust_sandbox::container::attach::{AttachTarget, LogChanges, LogFollower, no_log};
use crust_sandbox::container::exec_stream::{ExecHandle, OutputReader, StreamOptions};
use crust_streaming::{
    Backend, Control, ExecOptions, Input, Output, Process, Server, ServerConfig, TermSize,
};
use tokio::io::AsyncWriteExt;
use tokio::sync::{Notify, watch};

use crate::config::StreamingConfig;

/// Starts the streaming server of `config`, serving `containers` and `pods`.
pub async fn start(
    config: &StreamingConfig,
    containers: Containers,
    pods: PodSandboxes,
) -> io::Result<Server> {
    let tls = config.tls().map_err(io::Error::other)?;
    if tls.is_none() && !config.address.ip().is_loopback() {
        tracing::warn!(
            "streaming server on {} without TLS: anyone who reaches it and holds a URL's \
             token can exec into containers; set [streaming] tls_cert_file and tls_key_file",
            config.address
        );
    }
    let server_config = ServerConfig {
        address: config.address,
        max_sessions: config.max_sessions,
        token_ttl: Duration::from_secs(config.token_ttl_secs),
        tls,
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

    async fn attach(
        &self,
        container_id: &str,
        opts: ExecOptions,
        size: Option<TermSize>,
    ) -> Result<Process, String> {
        let t = self
            .containers
            .attach_target(container_id)
            .await
            .map_err(|e| e.to_string())?;
        if let (true, Some((w, h))) = (t.tty, size) {
            let _ = t.resize(w, h).await;
        }
        let (done_tx, done_rx) = watch::channel(false);
        let log = |stdout, stderr| -> Result<Box<dyn Output>, String> {
            let path = t
                .log_path
                .clone()
                .ok_or_else(|| no_log(&t.id).to_string())?;
            let changes = LogChanges::new(&path)
                .inspect_err(|e| {
                    tracing::debug!(container = %t.id, error = %e, "attach polls the log: no inotify")
                })
                .ok();
            Ok(Box::new(LogOut {
                changes,
                follower: LogFollower::new(path, stdout, stderr),
                pending: Vec::new(),
                done: done_rx.clone(),
            }))
        };
        // With a TTY the terminal's output is all in the log's stdout stream.
        let stdout = if opts.stdout {
            Some(log(true, t.tty)?)
        } else {
            None
        };
        let stderr = if opts.stderr && !t.tty {
            Some(log(false, true)?)
        } else {
            None
        };
        let stdin = match (&t.stdin_fifo, opts.stdin) {
            (Some(fifo), true) => Some(
                tokio::net::unix::pipe::OpenOptions::new()
                    .read_write(true)
                    .open_sender(fifo)
                    .map_err(|e| format!("opening the container's stdin: {e}"))?,
            ),
            _ => None,
        };
        let target = Arc::new(t);
        Ok(Process {
            stdin: stdin.map(|tx| {
                Box::new(AttachStdin {
                    tx,
                    target: target.clone(),
                }) as Box<dyn Input>
            }),
            stdout,
            stderr,
            control: Arc::new(AttachCtl {
                target,
                done: done_tx,
                detached: Notify::new(),
            }),
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

/// How often an attach looks for new lines in the container's log when inotify cannot
/// tell it (no instance or watch left), and at the longest when it can.
const LOG_POLL: Duration = Duration::from_millis(25);
const LOG_RECHECK: Duration = Duration::from_secs(1);

/// An attached container's output, read from its CRI log as soon as it is written there.
struct LogOut {
    follower: LogFollower,
    changes: Option<LogChanges>,
    pending: Vec<u8>,
    /// Set when the container has ended or the client detached.
    done: watch::Receiver<bool>,
}

#[async_trait]
impl Output for LogOut {
    async fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.pending.is_empty() {
                let ended = *self.done.borrow();
                self.follower.poll(&mut self.pending)?;
                if self.pending.is_empty() {
                    if ended {
                        return Ok(0);
                    }
                    match &self.changes {
                        Some(c) => {
                            tokio::select! {
                                _ = c.changed() => {}
                                _ = self.done.changed() => {}
                                _ = tokio::time::sleep(LOG_RECHECK) => {}
                            }
                        }
                        None => {
                            let _ = tokio::time::timeout(LOG_POLL, self.done.changed()).await;
                        }
                    }
                    continue;
                }
            }
            let n = buf.len().min(self.pending.len());
            buf[..n].copy_from_slice(&self.pending[..n]);
            self.pending.drain(..n);
            return Ok(n);
        }
    }
}

struct AttachStdin {
    tx: tokio::net::unix::pipe::Sender,
    target: Arc<AttachTarget>,
}

#[async_trait]
impl Input for AttachStdin {
    async fn write(&mut self, data: &[u8]) -> io::Result<()> {
        self.tx.write_all(data).await
    }

    /// The client closed its stdin: the container's closes too with `stdin_once`;
    /// otherwise it stays open for the next attach.
    async fn close(&mut self) -> io::Result<()> {
        if self.target.stdin_once {
            self.target
                .close_stdin()
                .await
                .map_err(|e| io::Error::other(e.to_string()))?;
        }
        Ok(())
    }
}

struct AttachCtl {
    target: Arc<AttachTarget>,
    done: watch::Sender<bool>,
    detached: Notify,
}

#[async_trait]
impl Control for AttachCtl {
    async fn resize(&self, width: u16, height: u16) -> io::Result<()> {
        self.target
            .resize(width, height)
            .await
            .map_err(|e| io::Error::other(e.to_string()))
    }

    /// Until the container ends (an attach reports success then, as containerd's
    /// does) or the client detaches.
    async fn wait(&self) -> Result<i32, String> {
        let r = tokio::select! {
            r = self.target.wait() => r.map(|_| 0).map_err(|e| e.to_string()),
            _ = self.detached.notified() => Ok(0),
        };
        self.done.send_replace(true);
        r
    }

    /// The client left: detach, never stop the container; `stdin_once` closes its
    /// stdin.
    async fn kill(&self) {
        if self.target.stdin_once && self.target.stdin_fifo.is_some() {
            let _ = self.target.close_stdin().await;
        }
        self.detached.notify_one();
    }
}

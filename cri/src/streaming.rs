//! The streaming server's backend: exec sessions run through the pod's shim
//! (`crust_sandbox`'s streamed exec), wrapped in the streaming crate's seams.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use crust_sandbox::container::Containers;
use crust_sandbox::container::exec_stream::{ExecHandle, OutputReader, StreamOptions};
use crust_streaming::{
    Backend, Control, ExecOptions, Input, Output, Process, Server, ServerConfig, TermSize,
};
use tokio::io::AsyncWriteExt;

use crate::config::StreamingConfig;

/// Starts the streaming server of `config`, serving `containers`.
pub async fn start(config: &StreamingConfig, containers: Containers) -> io::Result<Server> {
    let server_config = ServerConfig {
        address: config.address,
        max_sessions: config.max_sessions,
        token_ttl: Duration::from_secs(config.token_ttl_secs),
        ..Default::default()
    };
    Server::start(server_config, Arc::new(NodeBackend(containers))).await
}

struct NodeBackend(Containers);

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
            .0
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

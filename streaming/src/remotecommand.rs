//! The remote-command protocol over SPDY (client-go's `tools/remotecommand`, the
//! kubelet's `remotecommand` server): the client opens one stream per channel, each
//! named by its `streamtype` header — `error`, `stdin`, `stdout`, `stderr`, and
//! `resize` with a TTY from v3 on — and the server runs the process once every
//! expected stream is there.
//!
//! The error stream carries the result when the process is over: from
//! `v4.channel.k8s.io` a Kubernetes `Status` (`Success`, or `Failure` with reason
//! `NonZeroExitCode` and the exit code as cause `ExitCode`, as client-go parses it);
//! before v4 the error text, and nothing on success. A client that goes away ends
//! its process.

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;
use tokio::task::JoinHandle;
use tracing::debug;

use crate::spdy::{Conn, Stream, StreamWriter};

pub const V5: &str = "v5.channel.k8s.io";
pub const V4: &str = "v4.channel.k8s.io";
pub const V3: &str = "v3.channel.k8s.io";
pub const V2: &str = "v2.channel.k8s.io";
pub const V1: &str = "channel.k8s.io";
/// The protocols served over SPDY, preferred first.
pub const SPDY_PROTOCOLS: &[&str] = &[V4, V3, V2, V1];

/// How long the client has to open its streams once upgraded (as the kubelet).
const STREAM_CREATION_TIMEOUT: Duration = Duration::from_secs(30);
/// How long output may still be sent after the process ended.
const OUTPUT_DRAIN: Duration = Duration::from_secs(10);

/// Which channels a session has.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExecOptions {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

/// A process's output: `read` returns 0 once the process is over and all it wrote
/// was read.
#[async_trait]
pub trait Output: Send {
    async fn read(&mut self, buf: &mut [u8]) -> io::Result<usize>;
}

/// A process's input.
#[async_trait]
pub trait Input: Send {
    async fn write(&mut self, data: &[u8]) -> io::Result<()>;
    /// The client closed its stdin: the process reads an end of file.
    async fn close(&mut self) -> io::Result<()>;
}

/// What a session does to its process besides its stdio.
#[async_trait]
pub trait Control: Send + Sync {
    async fn resize(&self, width: u16, height: u16) -> io::Result<()>;
    /// Waits for the process to end: its exit code, or why it could not be had.
    async fn wait(&self) -> Result<i32, String>;
    /// Ends the process (the client went away).
    async fn kill(&self);
}

/// A process a backend started for a session.
pub struct Process {
    pub stdin: Option<Box<dyn Input>>,
    pub stdout: Option<Box<dyn Output>>,
    pub stderr: Option<Box<dyn Output>>,
    pub control: Arc<dyn Control>,
}

/// The streams of one session, by channel.
#[derive(Default)]
struct Channels {
    error: Option<Stream>,
    stdin: Option<Stream>,
    stdout: Option<Stream>,
    stderr: Option<Stream>,
    resize: Option<Stream>,
}

impl Channels {
    fn complete(&self, opts: ExecOptions, protocol: &str) -> bool {
        self.error.is_some()
            && (!opts.stdin || self.stdin.is_some())
            && (!opts.stdout || self.stdout.is_some())
            && (!opts.stderr || self.stderr.is_some())
            && (!resizes(opts, protocol) || self.resize.is_some())
    }
}

/// Whether the client opens a resize stream: with a TTY, from v3 on.
fn resizes(opts: ExecOptions, protocol: &str) -> bool {
    opts.tty && matches!(protocol, V3 | V4 | V5)
}

/// Serves one session on an upgraded SPDY connection: waits for the streams, starts
/// the process with `start`, copies its stdio, reports its result and closes.
pub async fn serve_spdy<F, Fut>(mut conn: Conn, protocol: &str, opts: ExecOptions, start: F)
where
    F: FnOnce(Option<TermSize>) -> Fut,
    Fut: Future<Output = Result<Process, String>>,
{
    let mut ch = Channels::default();
    let gathered = tokio::time::timeout(STREAM_CREATION_TIMEOUT, async {
        while !ch.complete(opts, protocol) {
            let Some(s) = conn.accept().await else {
                return false;
            };
            let slot = match s.header("streamtype") {
                Some("error") => &mut ch.error,
                Some("stdin") => &mut ch.stdin,
                Some("stdout") => &mut ch.stdout,
                Some("stderr") => &mut ch.stderr,
                Some("resize") => &mut ch.resize,
                other => {
                    debug!(stream = s.id, "unexpected stream type {other:?}");
                    let _ = s
                        .writer()
                        .reset(crate::spdy::frame::rst::REFUSED_STREAM)
                        .await;
                    continue;
                }
            };
            *slot = Some(s);
        }
        true
    })
    .await;
    if gathered != Ok(true) {
        tracing::info!(
            "streaming session ended before its streams were opened: {}",
            if gathered.is_err() {
                "timed out"
            } else {
                "client left"
            }
        );
        conn.close().await;
        return;
    }
    let session = Session {
        error: Box::new(ch.error.take().expect("complete").writer()),
        stdin: ch.stdin.take().map(|s| Box::new(s) as Box<dyn ChannelIn>),
        stdout: ch
            .stdout
            .take()
            .map(|s| Box::new(s.writer()) as Box<dyn ChannelOut>),
        stderr: ch
            .stderr
            .take()
            .map(|s| Box::new(s.writer()) as Box<dyn ChannelOut>),
        resize: ch.resize.take().map(|s| Box::new(s) as Box<dyn ChannelIn>),
    };
    run(session, protocol, start, conn.closed()).await;
    conn.close().await;
}

/// Where a session's output goes: a SPDY stream, or a WebSocket channel.
#[async_trait]
pub(crate) trait ChannelOut: Send + Sync {
    async fn send(&self, data: &[u8]) -> io::Result<()>;
    /// No more data on this channel.
    async fn finish(&self);
}

/// Where a session's input comes from; `None` once the client closed it.
#[async_trait]
pub(crate) trait ChannelIn: Send {
    async fn recv(&mut self) -> Option<Vec<u8>>;
}

#[async_trait]
impl ChannelOut for StreamWriter {
    async fn send(&self, data: &[u8]) -> io::Result<()> {
        self.write(data).await
    }
    async fn finish(&self) {
        let _ = self.close().await;
    }
}

#[async_trait]
impl ChannelIn for Stream {
    async fn recv(&mut self) -> Option<Vec<u8>> {
        self.read().await
    }
}

#[async_trait]
impl ChannelIn for tokio::sync::mpsc::Receiver<Vec<u8>> {
    async fn recv(&mut self) -> Option<Vec<u8>> {
        tokio::sync::mpsc::Receiver::recv(self).await
    }
}

/// The channels of a session, whatever carries them.
pub(crate) struct Session {
    pub error: Box<dyn ChannelOut>,
    pub stdin: Option<Box<dyn ChannelIn>>,
    pub stdout: Option<Box<dyn ChannelOut>>,
    pub stderr: Option<Box<dyn ChannelOut>>,
    pub resize: Option<Box<dyn ChannelIn>>,
}

/// Runs a session whose channels are all there: starts the process with `start`,
/// copies its stdio, and reports its result, unless `closed` (the client left)
/// comes first: then the process is killed and reaped.
pub(crate) async fn run<F, Fut>(
    mut session: Session,
    protocol: &str,
    start: F,
    closed: impl Future<Output = String>,
) where
    F: FnOnce(Option<TermSize>) -> Fut,
    Fut: Future<Output = Result<Process, String>>,
{
    let error = session.error;
    // Clients send the terminal's size as soon as the streams are open: the process
    // gets its terminal at that size from the start, not a moment later.
    let mut resize_pending = Vec::new();
    let mut size = None;
    if let Some(s) = session.resize.as_mut() {
        (size, resize_pending) = first_size(s.as_mut()).await;
    }
    let process = match start(size).await {
        Ok(p) => p,
        Err(e) => {
            report(error.as_ref(), protocol, Err(e)).await;
            return;
        }
    };
    let control = process.control.clone();
    let mut pumps: Vec<JoinHandle<()>> = Vec::new();
    for (out, channel) in [
        (process.stdout, session.stdout.take()),
        (process.stderr, session.stderr.take()),
    ] {
        match (out, channel) {
            (Some(out), Some(c)) => pumps.push(tokio::spawn(pump_out(out, c))),
            (Some(mut out), None) => {
                // Nobody to send it to: read it so the process never blocks.
                pumps.push(tokio::spawn(async move {
                    let mut buf = vec![0u8; 32 * 1024];
                    while matches!(out.read(&mut buf).await, Ok(n) if n > 0) {}
                }))
            }
            _ => {}
        }
    }
    let stdin = match (process.stdin, session.stdin.take()) {
        (Some(input), Some(s)) => Some(tokio::spawn(pump_in(input, s))),
        _ => None,
    };
    let resize = session
        .resize
        .take()
        .map(|s| tokio::spawn(pump_resize(s, resize_pending, control.clone())));
    let result = tokio::select! {
        r = control.wait() => Some(r),
        why = closed => {
            tracing::info!("streaming client left ({why}): ending its process");
            control.kill().await;
            let _ = control.wait().await;
            None
        }
    };
    for t in [stdin, resize].into_iter().flatten() {
        t.abort();
    }
    let drained = tokio::time::timeout(OUTPUT_DRAIN, async {
        for p in pumps.iter_mut() {
            let _ = p.await;
        }
    })
    .await;
    if drained.is_err() {
        for p in &pumps {
            p.abort();
        }
    }
    if let Some(r) = result {
        report(error.as_ref(), protocol, r).await;
    }
}

async fn pump_out(mut out: Box<dyn Output>, to: Box<dyn ChannelOut>) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match out.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                crate::metrics::bytes("exec", "out", n);
                if to.send(&buf[..n]).await.is_err() {
                    // The client is gone; keep reading so the process never blocks.
                    while matches!(out.read(&mut buf).await, Ok(n) if n > 0) {}
                    return;
                }
            }
        }
    }
    to.finish().await;
}

async fn pump_in(mut input: Box<dyn Input>, mut from: Box<dyn ChannelIn>) {
    while let Some(data) = from.recv().await {
        crate::metrics::bytes("exec", "in", data.len());
        if input.write(&data).await.is_err() {
            break;
        }
    }
    let _ = input.close().await;
}

/// client-go's `TerminalSize`, one JSON object after another.
#[derive(Deserialize)]
struct TerminalSize {
    #[serde(rename = "Width")]
    width: u16,
    #[serde(rename = "Height")]
    height: u16,
}

/// A terminal's size: width (columns) and height (rows).
pub type TermSize = (u16, u16);

/// How long the first size may take to come before the process starts anyway.
const FIRST_SIZE_WAIT: Duration = Duration::from_millis(500);

/// The first size on a resize stream, if it comes soon, and the bytes after it.
async fn first_size(from: &mut dyn ChannelIn) -> (Option<TermSize>, Vec<u8>) {
    let mut pending = Vec::new();
    let deadline = tokio::time::Instant::now() + FIRST_SIZE_WAIT;
    while let Ok(Some(data)) = tokio::time::timeout_at(deadline, from.recv()).await {
        pending.extend_from_slice(&data);
        let mut sizes = serde_json::Deserializer::from_slice(&pending).into_iter::<TerminalSize>();
        match sizes.next() {
            Some(Ok(s)) => {
                let used = sizes.byte_offset();
                pending.drain(..used);
                return (Some((s.width, s.height)), pending);
            }
            Some(Err(e)) if e.is_eof() && pending.len() < 4096 => {}
            _ => return (None, Vec::new()),
        }
    }
    (None, pending)
}

async fn pump_resize(
    mut from: Box<dyn ChannelIn>,
    mut pending: Vec<u8>,
    control: Arc<dyn Control>,
) {
    loop {
        let mut sizes = serde_json::Deserializer::from_slice(&pending).into_iter::<TerminalSize>();
        let mut used = 0;
        while let Some(size) = sizes.next() {
            match size {
                Ok(s) => {
                    used = sizes.byte_offset();
                    if let Err(e) = control.resize(s.width, s.height).await {
                        debug!("resize: {e}");
                    }
                }
                Err(e) if e.is_eof() => break,
                Err(e) => {
                    debug!("bad resize message: {e}");
                    return;
                }
            }
        }
        pending.drain(..used);
        if pending.len() > 4096 {
            return;
        }
        match from.recv().await {
            Some(data) => pending.extend_from_slice(&data),
            None => return,
        }
    }
}

/// The error stream's message for a result, as `protocol` has it.
pub fn status_message(protocol: &str, result: &Result<i32, String>) -> Option<Vec<u8>> {
    // v5 (WebSocket) reports as v4 does.
    let v4 = protocol == V4 || protocol == V5;
    let json = |v: serde_json::Value| Some(v.to_string().into_bytes());
    match result {
        Ok(0) if v4 => json(serde_json::json!({"metadata": {}, "status": "Success"})),
        Ok(0) => None,
        Ok(code) => {
            let message = format!("command terminated with non-zero exit code: exit code {code}");
            if v4 {
                json(serde_json::json!({
                    "metadata": {},
                    "status": "Failure",
                    "message": message,
                    "reason": "NonZeroExitCode",
                    "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
                }))
            } else {
                Some(message.into_bytes())
            }
        }
        Err(e) if v4 => json(serde_json::json!({
            "metadata": {},
            "status": "Failure",
            "message": e,
            "reason": "InternalError",
            "code": 500,
        })),
        Err(e) => Some(e.clone().into_bytes()),
    }
}

async fn report(error: &dyn ChannelOut, protocol: &str, result: Result<i32, String>) {
    if let Some(msg) = status_message(protocol, &result) {
        let _ = error.send(&msg).await;
    }
    error.finish().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v4_status_is_what_client_go_parses() {
        let ok: serde_json::Value =
            serde_json::from_slice(&status_message(V4, &Ok(0)).unwrap()).unwrap();
        assert_eq!(ok["status"], "Success");
        let fail: serde_json::Value =
            serde_json::from_slice(&status_message(V4, &Ok(3)).unwrap()).unwrap();
        assert_eq!(fail["status"], "Failure");
        assert_eq!(fail["reason"], "NonZeroExitCode");
        assert_eq!(fail["details"]["causes"][0]["reason"], "ExitCode");
        assert_eq!(fail["details"]["causes"][0]["message"], "3");
        assert_eq!(status_message(V3, &Ok(0)), None);
        assert!(
            String::from_utf8(status_message(V2, &Ok(2)).unwrap())
                .unwrap()
                .contains("non-zero exit code")
        );
    }
}

/// Property-based fuzzing of the resize stream's parsing (docs/testing.md,
/// "Fuzzing"): `TerminalSize` objects back to back, cut at arbitrary points, and
/// arbitrary bytes. `PROPTEST_CASES` overrides the bounded number of cases.
#[cfg(test)]
mod fuzz {
    use super::*;
    use proptest::prelude::*;
    use proptest::test_runner::Config;
    use std::collections::VecDeque;
    use std::sync::Mutex;

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

    struct Chunks(VecDeque<Vec<u8>>);

    #[async_trait]
    impl ChannelIn for Chunks {
        async fn recv(&mut self) -> Option<Vec<u8>> {
            self.0.pop_front()
        }
    }

    #[derive(Default)]
    struct Sizes(Mutex<Vec<TermSize>>);

    #[async_trait]
    impl Control for Sizes {
        async fn resize(&self, width: u16, height: u16) -> io::Result<()> {
            self.0.lock().unwrap().push((width, height));
            Ok(())
        }
        async fn wait(&self) -> Result<i32, String> {
            Ok(0)
        }
        async fn kill(&self) {}
    }

    /// The sizes the session applies from a resize stream delivered in `chunks`.
    fn resizes(chunks: Vec<Vec<u8>>) -> Vec<TermSize> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut from = Chunks(chunks.into());
            let (first, pending) = first_size(&mut from).await;
            let sizes = Arc::new(Sizes::default());
            pump_resize(Box::new(from), pending, sizes.clone()).await;
            let mut all: Vec<TermSize> = first.into_iter().collect();
            all.extend(sizes.0.lock().unwrap().iter());
            all
        })
    }

    /// Splits `bytes` at the given points.
    fn split(bytes: &[u8], mut cuts: Vec<usize>) -> Vec<Vec<u8>> {
        cuts.iter_mut().for_each(|c| *c %= bytes.len() + 1);
        cuts.sort();
        let mut out = Vec::new();
        let mut at = 0;
        for c in cuts.into_iter().chain([bytes.len()]) {
            out.push(bytes[at..c].to_vec());
            at = c;
        }
        out
    }

    proptest! {
        #![proptest_config(config(1000))]

        #[test]
        fn sizes_cut_anywhere_all_arrive(
            sizes in prop::collection::vec((any::<u16>(), any::<u16>()), 1..6),
            ws in prop_oneof![Just(""), Just("\n"), Just(" ")],
            cuts in prop::collection::vec(any::<usize>(), 0..6),
        ) {
            let text: String = sizes
                .iter()
                .map(|(w, h)| format!("{{\"Width\":{w},\"Height\":{h}}}{ws}"))
                .collect();
            prop_assert_eq!(resizes(split(text.as_bytes(), cuts)), sizes);
        }

        #[test]
        fn arbitrary_resize_streams(
            chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 0..5),
        ) {
            let _ = resizes(chunks);
        }

        #[test]
        fn json_shaped_resize_streams(
            text in "[{}\":, 0-9WidthHeg\\-e.]{0,80}",
            cuts in prop::collection::vec(any::<usize>(), 0..4),
        ) {
            let _ = resizes(split(text.as_bytes(), cuts));
        }
    }
}

//! One layer around every CRI call: a tracing span with the method, and on
//! completion the duration and gRPC code, logged and counted in the metrics.
//!
//! It sits at the HTTP level (a tower layer on the tonic server), so no RPC can
//! forget it. Unary errors arrive as trailers-only responses with `grpc-status`
//! in the headers; a response without it is a success. Streaming calls
//! (GetContainerEvents) are measured until their response headers.
//!
//! It also enforces the client's deadline (`grpc-timeout`, see `deadline.rs`):
//! a call still running when it passes is dropped and answered DeadlineExceeded,
//! counted and logged like any other answer; a response still being sent then
//! (a stream) ends with DeadlineExceeded in its trailers. A call whose future is
//! dropped unanswered (the client reset the stream) is counted Canceled.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tower::{Layer, Service};
use tracing::Instrument as _;

use crate::deadline::{self, DeadlineBody};
use crate::error::CriError;
use crate::metrics::CRI;

/// Counts the calls being answered, so a shutdown can wait for exactly those
/// (and not for idle client connections, which kubelet keeps open forever).
#[derive(Default)]
pub struct InFlight {
    count: AtomicUsize,
    idle: Notify,
}

impl InFlight {
    /// Resolves once no call is being answered.
    pub async fn idle(&self) {
        loop {
            let notified = self.idle.notified();
            if self.count.load(Ordering::SeqCst) == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// Decrements the in-flight count however the call's future ends (done or dropped).
struct CallGuard(Arc<InFlight>);

impl Drop for CallGuard {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

#[derive(Clone, Default)]
pub struct InstrumentLayer {
    in_flight: Arc<InFlight>,
}

impl InstrumentLayer {
    pub fn in_flight(&self) -> Arc<InFlight> {
        self.in_flight.clone()
    }
}

impl<S> Layer<S> for InstrumentLayer {
    type Service = Instrument<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Instrument {
            inner,
            in_flight: self.in_flight.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Instrument<S> {
    inner: S,
    in_flight: Arc<InFlight>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// What a call comes to once its headers are read.
enum Plan<F> {
    /// Refused before it starts (a malformed `grpc-timeout`, a deadline already past).
    Answer(CriError),
    Run(F, Option<(tokio::time::Instant, Duration)>),
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for Instrument<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: std::fmt::Display,
    ResBody: Send + 'static,
{
    type Response = http::Response<DeadlineBody<ResBody>>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<ReqBody>) -> Self::Future {
        let method = method_name(req.uri().path()).to_string();
        let span = tracing::info_span!("cri", method = %method);
        let start = Instant::now();
        self.in_flight.count.fetch_add(1, Ordering::SeqCst);
        let guard = CallGuard(self.in_flight.clone());
        // The deadline is taken before the inner service is called, so it starts
        // before tonic's own timer for the same header (see deadline.rs).
        let plan = match deadline::take_timeout(req.headers_mut()) {
            Err(e) => Plan::Answer(CriError::Internal(format!("malformed grpc-timeout: {e}"))),
            Ok(Some(timeout)) if timeout.is_zero() => Plan::Answer(expired(&method, timeout)),
            Ok(timeout) => {
                // A deadline too far away to represent is none.
                let deadline = timeout
                    .and_then(|t| tokio::time::Instant::now().checked_add(t).map(|d| (d, t)));
                Plan::Run(self.inner.call(req), deadline)
            }
        };
        let body_span = span.clone();
        let mut record = Record {
            method: method.clone(),
            start,
            deadline: match &plan {
                Plan::Run(_, Some((at, _))) => Some(*at),
                _ => None,
            },
            done: false,
        };
        Box::pin(
            async move {
                let res = match plan {
                    Plan::Answer(e) => Ok(tonic::Status::from(e).into_http()),
                    Plan::Run(fut, None) => fut.await.map(|r| r.map(DeadlineBody::Unbounded)),
                    Plan::Run(fut, Some((at, timeout))) => {
                        match deadline::within(fut, at).await {
                            // Dropped: whatever the call was doing is cancelled.
                            None => Ok(tonic::Status::from(expired(&method, timeout)).into_http()),
                            Some(r) => r.map(|resp| {
                                let mut trailers = http::HeaderMap::new();
                                let _ = tonic::Status::from(expired(&method, timeout))
                                    .add_header(&mut trailers);
                                resp.map(|body| {
                                    DeadlineBody::bounded(
                                        body,
                                        at,
                                        trailers,
                                        Box::new(move || {
                                            body_span.in_scope(|| {
                                                tracing::info!(
                                                    "response ended at the client's deadline"
                                                )
                                            })
                                        }),
                                    )
                                })
                            }),
                        }
                    }
                };
                drop(guard);
                let (code, message) = match &res {
                    Ok(resp) => outcome(resp.headers()),
                    Err(e) => (tonic::Code::Internal, e.to_string()),
                };
                record.answered(code, &message);
                res
            }
            .instrument(span),
        )
    }
}

/// Counts and logs a call once, when it is answered — or when its future is
/// dropped unanswered: the client went away (a grpc-go client resets the stream
/// itself when its deadline passes), counted DeadlineExceeded when its deadline
/// had passed and Canceled otherwise, as a grpc-go server's context would say.
struct Record {
    method: String,
    start: Instant,
    deadline: Option<tokio::time::Instant>,
    done: bool,
}

impl Record {
    fn answered(&mut self, code: tonic::Code, message: &str) {
        self.done = true;
        let elapsed = self.start.elapsed();
        let code_name = code_name(code);
        CRI.requests
            .with_label_values(&[&self.method, code_name])
            .inc();
        CRI.duration
            .with_label_values(&[&self.method])
            .observe(elapsed.as_secs_f64());
        let ms = elapsed.as_secs_f64() * 1000.0;
        match code {
            tonic::Code::Ok => tracing::debug!(code = code_name, ms, "done"),
            tonic::Code::NotFound | tonic::Code::Unimplemented | tonic::Code::Cancelled => {
                tracing::info!(code = code_name, ms, message = %message.escape_debug(), "failed")
            }
            _ => tracing::warn!(code = code_name, ms, message = %message.escape_debug(), "failed"),
        }
    }
}

impl Drop for Record {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let code = match self.deadline {
            Some(at) if tokio::time::Instant::now() >= at => tonic::Code::DeadlineExceeded,
            _ => tonic::Code::Cancelled,
        };
        self.answered(code, "the client went away before the answer");
    }
}

fn expired(method: &str, timeout: Duration) -> CriError {
    CriError::DeadlineExceeded(format!(
        "{method} did not finish within the client's deadline ({timeout:?})"
    ))
}

/// `/runtime.v1.RuntimeService/Version` → `Version`.
fn method_name(path: &str) -> &str {
    path.rsplit('/')
        .next()
        .filter(|m| !m.is_empty())
        .unwrap_or(path)
}

fn outcome(headers: &http::HeaderMap) -> (tonic::Code, String) {
    let code = headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .map(tonic::Code::from)
        .unwrap_or(tonic::Code::Ok);
    let message = headers
        .get("grpc-message")
        .and_then(|v| v.to_str().ok())
        .map(percent_decode)
        .unwrap_or_default();
    (code, message)
}

/// grpc-message is percent-encoded; decode it for the log.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Ok(b) =
                u8::from_str_radix(std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("-"), 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The canonical names Prometheus users know from grpc-go (`OK`, `NotFound`, ...).
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "Canceled",
        Unknown => "Unknown",
        InvalidArgument => "InvalidArgument",
        DeadlineExceeded => "DeadlineExceeded",
        NotFound => "NotFound",
        AlreadyExists => "AlreadyExists",
        PermissionDenied => "PermissionDenied",
        ResourceExhausted => "ResourceExhausted",
        FailedPrecondition => "FailedPrecondition",
        Aborted => "Aborted",
        OutOfRange => "OutOfRange",
        Unimplemented => "Unimplemented",
        Internal => "Internal",
        Unavailable => "Unavailable",
        DataLoss => "DataLoss",
        Unauthenticated => "Unauthenticated",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body::Body as _;
    use std::sync::atomic::AtomicBool;

    /// A service that answers after `delay`, setting `dropped` if its call is
    /// dropped first; its body is `body` for a stream.
    fn slow<B: Clone + Send + 'static>(
        delay: Duration,
        body: B,
        dropped: Arc<AtomicBool>,
    ) -> impl Service<
        http::Request<()>,
        Response = http::Response<B>,
        Error = std::convert::Infallible,
        Future: Send + 'static,
    > + Clone {
        tower::service_fn(move |_req: http::Request<()>| {
            struct OnDrop(Arc<AtomicBool>, bool);
            impl Drop for OnDrop {
                fn drop(&mut self) {
                    if !self.1 {
                        self.0.store(true, Ordering::SeqCst);
                    }
                }
            }
            let guard = OnDrop(dropped.clone(), false);
            let body = body.clone();
            async move {
                let mut guard = guard;
                tokio::time::sleep(delay).await;
                guard.1 = true;
                Ok(http::Response::new(body))
            }
        })
    }

    /// A call of `/runtime.v1.RuntimeService/<method>` (one method per test: the
    /// metrics are the process's).
    fn request(method: &str, timeout: Option<&'static str>) -> http::Request<()> {
        let mut req = http::Request::builder()
            .uri(format!("/runtime.v1.RuntimeService/{method}"))
            .body(())
            .unwrap();
        if let Some(t) = timeout {
            req.headers_mut()
                .insert(deadline::GRPC_TIMEOUT, http::HeaderValue::from_static(t));
        }
        req
    }

    fn requests(code: &str) -> u64 {
        CRI.requests.with_label_values(&["ExecSync", code]).get()
    }

    #[tokio::test]
    async fn a_call_past_its_deadline_is_dropped_and_answered_deadline_exceeded() {
        let dropped = Arc::new(AtomicBool::new(false));
        let layer = InstrumentLayer::default();
        let mut svc = layer.layer(slow(Duration::from_secs(30), Forever, dropped.clone()));
        let before = requests("DeadlineExceeded");
        let t = Instant::now();
        let resp = svc.call(request("ExecSync", Some("100m"))).await.unwrap();
        assert!(t.elapsed() >= Duration::from_millis(100));
        assert!(t.elapsed() < Duration::from_secs(5));
        let (code, message) = outcome(resp.headers());
        assert_eq!(code, tonic::Code::DeadlineExceeded, "{message}");
        assert!(message.contains("ExecSync"), "{message}");
        assert!(resp.body().is_end_stream(), "trailers-only");
        assert!(dropped.load(Ordering::SeqCst), "the call was not dropped");
        assert_eq!(requests("DeadlineExceeded"), before + 1);
        tokio::time::timeout(Duration::from_secs(1), layer.in_flight().idle())
            .await
            .expect("no call left in flight");
    }

    #[tokio::test]
    async fn a_call_its_client_leaves_is_counted_canceled() {
        let dropped = Arc::new(AtomicBool::new(false));
        let layer = InstrumentLayer::default();
        let mut svc = layer.layer(slow(Duration::from_secs(30), Forever, dropped.clone()));
        let count = || {
            CRI.requests
                .with_label_values(&["StopContainer", "Canceled"])
                .get()
        };
        let before = count();
        let call = svc.call(request("StopContainer", Some("10S")));
        // The client resets the stream: hyper drops the call's future.
        assert!(
            tokio::time::timeout(Duration::from_millis(50), call)
                .await
                .is_err()
        );
        assert!(dropped.load(Ordering::SeqCst));
        assert_eq!(count(), before + 1);
        tokio::time::timeout(Duration::from_secs(1), layer.in_flight().idle())
            .await
            .expect("no call left in flight");
    }

    #[tokio::test]
    async fn a_call_within_its_deadline_is_answered() {
        let dropped = Arc::new(AtomicBool::new(false));
        let mut svc = InstrumentLayer::default().layer(slow(
            Duration::from_millis(10),
            Forever,
            dropped.clone(),
        ));
        for timeout in [None, Some("5S"), Some("99999999H")] {
            let resp = svc.call(request("Version", timeout)).await.unwrap();
            assert_eq!(outcome(resp.headers()).0, tonic::Code::Ok, "{timeout:?}");
        }
        assert!(!dropped.load(Ordering::SeqCst));
    }

    #[tokio::test]
    async fn an_error_within_its_deadline_stays_trailers_only() {
        let mut svc = InstrumentLayer::default().layer(tower::service_fn(|_| async {
            Ok::<_, std::convert::Infallible>(
                tonic::Status::not_found("no such pod").into_http::<tonic::body::Body>(),
            )
        }));
        for timeout in [None, Some("5S")] {
            let resp = svc
                .call(request("PodSandboxStatus", timeout))
                .await
                .unwrap();
            assert_eq!(outcome(resp.headers()).0, tonic::Code::NotFound);
            assert!(
                resp.body().is_end_stream(),
                "{timeout:?}: headers end the stream"
            );
        }
    }

    #[tokio::test]
    async fn a_malformed_or_spent_timeout_never_reaches_the_service() {
        let called = Arc::new(AtomicBool::new(false));
        let seen = called.clone();
        let mut svc = InstrumentLayer::default().layer(tower::service_fn(move |_| {
            seen.store(true, Ordering::SeqCst);
            async { Ok::<_, std::convert::Infallible>(http::Response::new(Forever)) }
        }));
        let resp = svc.call(request("Status", Some("1x"))).await.unwrap();
        let (code, message) = outcome(resp.headers());
        assert_eq!(code, tonic::Code::Internal);
        assert!(message.contains("malformed grpc-timeout"), "{message}");
        let resp = svc.call(request("Status", Some("0n"))).await.unwrap();
        assert_eq!(outcome(resp.headers()).0, tonic::Code::DeadlineExceeded);
        assert!(!called.load(Ordering::SeqCst));
    }

    /// A body that never ends, like an events stream nobody sends on.
    #[derive(Clone)]
    struct Forever;
    impl http_body::Body for Forever {
        type Data = &'static [u8];
        type Error = std::convert::Infallible;
        fn poll_frame(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
            Poll::Pending
        }
    }

    #[tokio::test]
    async fn a_stream_ends_with_deadline_exceeded_at_the_deadline() {
        let dropped = Arc::new(AtomicBool::new(false));
        let mut svc =
            InstrumentLayer::default().layer(slow(Duration::ZERO, Forever, dropped.clone()));
        let t = Instant::now();
        let resp = svc
            .call(request("GetContainerEvents", Some("200m")))
            .await
            .unwrap();
        assert_eq!(outcome(resp.headers()).0, tonic::Code::Ok, "headers first");
        let mut body = resp.into_body();
        let frame = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx))
            .await
            .expect("a trailers frame")
            .unwrap();
        assert!(t.elapsed() >= Duration::from_millis(200));
        let Ok(trailers) = frame.into_trailers() else {
            panic!("a data frame, not trailers")
        };
        assert_eq!(outcome(&trailers).0, tonic::Code::DeadlineExceeded);
        assert!(
            std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx))
                .await
                .is_none()
        );
        assert!(body.is_end_stream());
    }

    #[test]
    fn method_from_path() {
        assert_eq!(method_name("/runtime.v1.RuntimeService/Version"), "Version");
        assert_eq!(
            method_name("/runtime.v1.ImageService/PullImage"),
            "PullImage"
        );
    }

    #[test]
    fn outcome_reads_trailers_only_errors() {
        let mut h = http::HeaderMap::new();
        assert_eq!(outcome(&h).0, tonic::Code::Ok);
        h.insert("grpc-status", http::HeaderValue::from_static("12"));
        h.insert(
            "grpc-message",
            http::HeaderValue::from_static("RunPodSandbox%20is%20not%20implemented"),
        );
        let (code, msg) = outcome(&h);
        assert_eq!(code, tonic::Code::Unimplemented);
        assert_eq!(msg, "RunPodSandbox is not implemented");
    }

    /// A log line's writer for tests: everything written, in one buffer.
    #[derive(Clone, Default)]
    struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// An error message carries request strings (a pod name with a newline and an
    /// ESC): it is logged as one line, escaped.
    #[tokio::test(flavor = "current_thread")]
    async fn a_failed_call_logs_its_message_escaped_on_one_line() {
        let out = Captured::default();
        let writer = out.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);
        let inner = tower::service_fn(|_req: http::Request<()>| async {
            let resp = http::Response::builder()
                .header("grpc-status", "3")
                .header(
                    "grpc-message",
                    "metadata.name%3A%20%22web%0Afake%20line%1B%5B31m%22",
                )
                .body(())
                .unwrap();
            Ok::<_, std::convert::Infallible>(resp)
        });
        let mut svc = InstrumentLayer::default().layer(inner);
        let req = http::Request::builder()
            .uri("/runtime.v1.RuntimeService/RunPodSandbox")
            .body(())
            .unwrap();
        svc.call(req).await.unwrap();
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(!text.contains('\x1b'), "{text}");
        assert!(text.contains("web\\nfake line\\u{1b}[31m"), "{text}");
    }
}

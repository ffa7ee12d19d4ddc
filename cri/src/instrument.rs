//! One layer around every CRI call: a tracing span with the method, and on
//! completion the duration and gRPC code, logged and counted in the metrics.
//!
//! It sits at the HTTP level (a tower layer on the tonic server), so no RPC can
//! forget it. Unary errors arrive as trailers-only responses with `grpc-status`
//! in the headers; a response without it is a success. Streaming calls
//! (GetContainerEvents) are measured until their response headers.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

use tokio::sync::Notify;
use tower::{Layer, Service};
use tracing::Instrument as _;

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

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for Instrument<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: std::fmt::Display,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqBody>) -> Self::Future {
        let method = method_name(req.uri().path()).to_string();
        let span = tracing::info_span!("cri", method = %method);
        let start = Instant::now();
        self.in_flight.count.fetch_add(1, Ordering::SeqCst);
        let guard = CallGuard(self.in_flight.clone());
        let fut = self.inner.call(req);
        Box::pin(
            async move {
                let res = fut.await;
                drop(guard);
                let elapsed = start.elapsed();
                let (code, message) = match &res {
                    Ok(resp) => outcome(resp.headers()),
                    Err(e) => (tonic::Code::Internal, e.to_string()),
                };
                let code_name = code_name(code);
                CRI.requests.with_label_values(&[&method, code_name]).inc();
                CRI.duration
                    .with_label_values(&[&method])
                    .observe(elapsed.as_secs_f64());
                let ms = elapsed.as_secs_f64() * 1000.0;
                match code {
                    tonic::Code::Ok => tracing::debug!(code = code_name, ms, "done"),
                    tonic::Code::NotFound | tonic::Code::Unimplemented => {
                        tracing::info!(code = code_name, ms, message = %message.escape_debug(), "failed")
                    }
                    _ => tracing::warn!(code = code_name, ms, message = %message.escape_debug(), "failed"),
                }
                res
            }
            .instrument(span),
        )
    }
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

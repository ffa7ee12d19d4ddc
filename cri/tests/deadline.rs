//! The instrument layer inside tonic's whole server stack, whose own timer for
//! `grpc-timeout` answers `Canceled` "Timeout expired": the client must see
//! DeadlineExceeded every time. The client is the generated one over a bare hyper
//! HTTP/2 connection: tonic's `Channel` has a timer of its own for the same header
//! and would give up (Canceled) before the server's answer arrives.

use std::convert::Infallible;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use crust_cri::instrument::InstrumentLayer;
use k8s_cri::v1::VersionRequest;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;

/// Answers every call of `runtime.v1.RuntimeService` after 30 s.
#[derive(Clone)]
struct Slow;

impl tonic::server::NamedService for Slow {
    const NAME: &'static str = "runtime.v1.RuntimeService";
}

impl tower::Service<http::Request<tonic::body::Body>> for Slow {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Infallible>> + Send>,
    >;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Request<tonic::body::Body>) -> Self::Future {
        Box::pin(async {
            tokio::time::sleep(Duration::from_secs(30)).await;
            Ok(tonic::Status::unavailable("too late").into_http())
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tonic_server_answers_deadline_exceeded() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .layer(InstrumentLayer::default())
            .add_service(Slow)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let transport = tower::service_fn(move |req: http::Request<tonic::body::Body>| {
        let mut sender = sender.clone();
        async move {
            // hyper sends the path only; tonic's client leaves the authority out.
            let (mut parts, body) = req.into_parts();
            parts.uri = format!("http://{addr}{}", parts.uri.path())
                .parse()
                .unwrap();
            sender
                .send_request(http::Request::from_parts(parts, body))
                .await
        }
    });
    let mut client = RuntimeServiceClient::new(transport);
    // Both timers start within microseconds of each other: many short calls give
    // tonic's timer every chance to answer first.
    for ms in [1u64, 2, 5, 10, 20, 50].into_iter().cycle().take(60) {
        let mut req = tonic::Request::new(VersionRequest::default());
        req.set_timeout(Duration::from_millis(ms));
        let t = Instant::now();
        let err = client.version(req).await.expect_err("answered after 30 s?");
        assert_eq!(
            err.code(),
            tonic::Code::DeadlineExceeded,
            "{ms} ms: {}",
            err.message()
        );
        assert!(err.message().contains("Version"), "{}", err.message());
        assert!(t.elapsed() >= Duration::from_millis(ms));
        assert!(t.elapsed() < Duration::from_secs(5));
    }
    server.abort();
}

//! Prometheus metrics: the registry every crate registers into, and `GET /metrics`.
//!
//! All crates use `prometheus::default_registry()`, so one scrape shows the CRI
//! edge, images, pods and containers together with the process metrics.

use std::net::SocketAddr;
use std::sync::LazyLock;

use prometheus::{Encoder, HistogramOpts, HistogramVec, IntCounterVec, Opts, TextEncoder};

/// Metrics of the CRI edge, recorded once per call by the instrument layer.
pub struct CriMetrics {
    pub requests: IntCounterVec,
    pub duration: HistogramVec,
}

pub static CRI: LazyLock<CriMetrics> = LazyLock::new(|| {
    let requests = IntCounterVec::new(
        Opts::new(
            "crust_cri_requests_total",
            "CRI calls by method and gRPC code.",
        ),
        &["method", "code"],
    )
    .expect("valid metric");
    let duration = HistogramVec::new(
        HistogramOpts::new(
            "crust_cri_request_duration_seconds",
            "Time to answer a CRI call, by method.",
        )
        .buckets(vec![
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            30.0, 60.0,
        ]),
        &["method"],
    )
    .expect("valid metric");
    let r = prometheus::default_registry();
    // Registration fails only on a duplicate name, which is a programming error.
    r.register(Box::new(requests.clone())).expect("register");
    r.register(Box::new(duration.clone())).expect("register");
    CriMetrics { requests, duration }
});

/// Registers the process collector (RSS, fds, CPU seconds, start time) and the CRI metrics.
pub fn init() {
    LazyLock::force(&CRI);
    #[cfg(target_os = "linux")]
    {
        let pc = prometheus::process_collector::ProcessCollector::for_self();
        // A second init (tests) finds it already registered; that is fine.
        let _ = prometheus::default_registry().register(Box::new(pc));
    }
}

/// The text exposition of every registered metric.
pub fn render() -> String {
    let mut buf = Vec::new();
    let families = prometheus::default_registry().gather();
    if let Err(e) = TextEncoder::new().encode(&families, &mut buf) {
        tracing::warn!("encoding metrics: {e}");
    }
    String::from_utf8(buf).unwrap_or_default()
}

/// Binds the metrics endpoint. Binding happens before crustd reports itself up,
/// so a taken port is a start-up error, not a silent gap.
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}

/// Serves `GET /metrics` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::routing::get;
    let app = axum::Router::new().route(
        "/metrics",
        get(|| async {
            (
                [(
                    http::header::CONTENT_TYPE,
                    prometheus::TEXT_FORMAT.to_string(),
                )],
                render(),
            )
        }),
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

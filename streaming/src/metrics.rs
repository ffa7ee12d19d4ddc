//! Streaming metrics, registered once in prometheus' default registry (which crustd
//! serves): sessions by kind (`exec`, `portforward`) and transport (`spdy`,
//! `websocket`), bytes by kind and direction (`in`: from the client to the process
//! or port, `out`: back), and connections refused before a session.

use std::sync::LazyLock;

use prometheus::{IntCounterVec, IntGaugeVec, Opts};

pub struct Metrics {
    pub sessions_active: IntGaugeVec,
    pub sessions: IntCounterVec,
    pub bytes: IntCounterVec,
    pub refused: IntCounterVec,
}

/// The metrics, registered on first use.
pub static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let m = Metrics {
        sessions_active: IntGaugeVec::new(
            Opts::new(
                "crust_streaming_sessions_active",
                "Streaming sessions (exec, port-forward) open now.",
            ),
            &["kind", "transport"],
        )
        .expect("valid metric"),
        sessions: IntCounterVec::new(
            Opts::new(
                "crust_streaming_sessions_total",
                "Streaming sessions started.",
            ),
            &["kind", "transport"],
        )
        .expect("valid metric"),
        bytes: IntCounterVec::new(
            Opts::new(
                "crust_streaming_bytes_total",
                "Bytes streamed: in from clients, out to them.",
            ),
            &["kind", "direction"],
        )
        .expect("valid metric"),
        refused: IntCounterVec::new(
            Opts::new(
                "crust_streaming_refused_total",
                "Streaming connections refused before a session started.",
            ),
            &["reason"],
        )
        .expect("valid metric"),
    };
    let r = prometheus::default_registry();
    // Registration only fails for a duplicate name, which would be a bug caught by tests.
    let _ = r.register(Box::new(m.sessions_active.clone()));
    let _ = r.register(Box::new(m.sessions.clone()));
    let _ = r.register(Box::new(m.bytes.clone()));
    let _ = r.register(Box::new(m.refused.clone()));
    m
});

/// Counts `n` bytes of a `kind` session in `direction`.
pub fn bytes(kind: &str, direction: &str, n: usize) {
    METRICS
        .bytes
        .with_label_values(&[kind, direction])
        .inc_by(n as u64);
}

/// A session counted as active until dropped.
pub struct Active {
    kind: &'static str,
    transport: &'static str,
}

impl Active {
    pub fn start(kind: &'static str, transport: &'static str) -> Active {
        METRICS.sessions.with_label_values(&[kind, transport]).inc();
        METRICS
            .sessions_active
            .with_label_values(&[kind, transport])
            .inc();
        Active { kind, transport }
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        METRICS
            .sessions_active
            .with_label_values(&[self.kind, self.transport])
            .dec();
    }
}

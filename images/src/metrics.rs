//! Pull metrics, registered once in prometheus' default registry (which crustd serves).

use std::sync::LazyLock;

use prometheus::{Histogram, HistogramOpts, IntCounter, IntGauge};

/// The images crate's metrics.
pub struct Metrics {
    /// Pulls started.
    pub pulls: IntCounter,
    /// Pulls that failed.
    pub pulls_failed: IntCounter,
    /// Blob bytes received from registries.
    pub bytes_pulled: IntCounter,
    /// Wall time of pulls.
    pub pull_duration: Histogram,
    /// Pulls running now.
    pub pulls_in_progress: IntGauge,
}

/// The metrics, registered on first use.
pub static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let m = Metrics {
        pulls: IntCounter::new("crust_image_pulls_total", "Image pulls started.")
            .expect("valid metric"),
        pulls_failed: IntCounter::new("crust_image_pulls_failed_total", "Image pulls that failed.")
            .expect("valid metric"),
        bytes_pulled: IntCounter::new(
            "crust_image_pull_bytes_total",
            "Blob bytes received from registries.",
        )
        .expect("valid metric"),
        pull_duration: Histogram::with_opts(
            HistogramOpts::new(
                "crust_image_pull_duration_seconds",
                "Wall time of image pulls.",
            )
            .buckets(vec![
                0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
            ]),
        )
        .expect("valid metric"),
        pulls_in_progress: IntGauge::new("crust_image_pulls_in_progress", "Image pulls running.")
            .expect("valid metric"),
    };
    let r = prometheus::default_registry();
    // Registration only fails for a duplicate name, which would be a bug caught by tests.
    let _ = r.register(Box::new(m.pulls.clone()));
    let _ = r.register(Box::new(m.pulls_failed.clone()));
    let _ = r.register(Box::new(m.bytes_pulled.clone()));
    let _ = r.register(Box::new(m.pull_duration.clone()));
    let _ = r.register(Box::new(m.pulls_in_progress.clone()));
    m
});

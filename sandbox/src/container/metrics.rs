//! Container metrics on prometheus's default registry.

use std::sync::LazyLock;

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts};

fn register<T: prometheus::core::Collector + Clone + 'static>(c: T) -> T {
    // Several services in one test binary register again; keep the first.
    let _ = prometheus::default_registry().register(Box::new(c.clone()));
    c
}

/// `crust_containers{state}`.
static CONTAINERS: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register(
        IntGaugeVec::new(
            Opts::new("crust_containers", "Containers by state"),
            &["state"],
        )
        .expect("metric definition"),
    )
});

/// `crust_container_exits_total{reason}`, OOM kills among them.
static EXITS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register(
        IntCounterVec::new(
            Opts::new(
                "crust_container_exits_total",
                "Container exits seen, by whether the OOM killer ended them",
            ),
            &["oom"],
        )
        .expect("metric definition"),
    )
});

/// `crust_container_operation_duration_seconds{operation}`: start and stop latency.
static OPERATION: LazyLock<HistogramVec> = LazyLock::new(|| {
    register(
        HistogramVec::new(
            HistogramOpts::new(
                "crust_container_operation_duration_seconds",
                "Duration of container create, start, stop and remove",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ]),
            &["operation"],
        )
        .expect("metric definition"),
    )
});

pub fn set_containers(counts: &[(&str, i64)]) {
    for (state, n) in counts {
        CONTAINERS.with_label_values(&[state]).set(*n);
    }
}

pub fn container_exited(oom: bool) {
    EXITS
        .with_label_values(&[if oom { "true" } else { "false" }])
        .inc();
}

pub fn observe(operation: &str, took: std::time::Duration) {
    OPERATION
        .with_label_values(&[operation])
        .observe(took.as_secs_f64());
}

/// Observes the time from its creation to its drop, however the operation ends.
pub struct OpTimer(&'static str, std::time::Instant);

impl OpTimer {
    pub fn new(operation: &'static str) -> Self {
        OpTimer(operation, std::time::Instant::now())
    }
}

impl Drop for OpTimer {
    fn drop(&mut self) {
        observe(self.0, self.1.elapsed());
    }
}

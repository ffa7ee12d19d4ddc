//! Pod metrics on prometheus's default registry.

use std::sync::LazyLock;
use std::time::Duration;

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts};

fn register<T: prometheus::core::Collector + Clone + 'static>(c: T) -> T {
    // Registering twice (several services in one test binary) is harmless: keep the first.
    let _ = prometheus::default_registry().register(Box::new(c.clone()));
    c
}

/// `crust_pods{state}`: pod sandboxes by state.
pub static PODS: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register(
        IntGaugeVec::new(
            Opts::new("crust_pods", "Pod sandboxes by state"),
            &["state"],
        )
        .expect("metric definition"),
    )
});

static CNI_DURATION: LazyLock<HistogramVec> = LazyLock::new(|| {
    register(
        HistogramVec::new(
            HistogramOpts::new(
                "crust_cni_operation_duration_seconds",
                "Duration of CNI ADD and DEL over the whole plugin chain",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            &["operation"],
        )
        .expect("metric definition"),
    )
});

static CNI_ERRORS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register(
        IntCounterVec::new(
            Opts::new(
                "crust_cni_operation_errors_total",
                "Failed CNI ADD and DEL operations",
            ),
            &["operation"],
        )
        .expect("metric definition"),
    )
});

pub(crate) fn observe_cni(op: &str, took: Duration, ok: bool) {
    CNI_DURATION
        .with_label_values(&[op])
        .observe(took.as_secs_f64());
    let errors = CNI_ERRORS.with_label_values(&[op]);
    if !ok {
        errors.inc();
    }
}

/// Makes sure every metric is registered (so /metrics lists them before the first pod).
/// `crust_shims`: pod shims crust runs, one per pod from RunPodSandbox to RemovePodSandbox
/// (a shim that died meanwhile makes its pod NOTREADY and is counted until the removal).
pub static SHIMS: LazyLock<IntGauge> = LazyLock::new(|| {
    register(
        IntGauge::new(
            "crust_shims",
            "Pod shims crust runs (one per pod until the pod is removed)",
        )
        .expect("metric definition"),
    )
});

pub fn init() {
    LazyLock::force(&PODS);
    LazyLock::force(&SHIMS);
    LazyLock::force(&CNI_DURATION);
    LazyLock::force(&CNI_ERRORS);
    for s in ["ready", "notready"] {
        PODS.with_label_values(&[s]);
    }
    for op in ["add", "del"] {
        CNI_ERRORS.with_label_values(&[op]);
    }
}

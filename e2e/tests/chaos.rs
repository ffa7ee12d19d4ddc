//! Chaos: pods and containers churned through crictl and crust's own client while crustd
//! and random shims are SIGKILLed, then the invariants (see `crust_e2e::chaos`). CI runs
//! it for 90 s with a new seed each time; `hack/chaos --seed N --duration 10m` replays a
//! seed or runs longer (it sets `CRUST_CHAOS_SEED`, `CRUST_CHAOS_DURATION`,
//! `CRUST_CHAOS_WORKERS`).

use std::time::Duration;

use crust_e2e::chaos::{self, Plan};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_with_kills_keeps_every_invariant() {
    let plan = Plan::from_env(Duration::from_secs(90), 100).expect("chaos plan");
    // Bounded whatever happens: the churn, then at most ten minutes of checks and cleanup.
    let figures = tokio::time::timeout(plan.duration + Duration::from_secs(600), chaos::run(&plan))
        .await
        .unwrap_or_else(|_| panic!("chaos seed {} did not end", plan.seed))
        .expect("chaos run");
    println!("{}", figures.summary());
    assert!(
        figures.violations.is_empty(),
        "chaos seed {} broke invariants (replay: hack/chaos --seed {}):\n{}",
        figures.seed,
        figures.seed,
        figures.summary()
    );
    assert!(
        figures.total_ops() > 0 && figures.checks > 0,
        "{}",
        figures.summary()
    );
}

//! Chaos: a churn of pods and containers through crictl and crust's own client while
//! crustd and random shims are SIGKILLed (crustd started again), then the invariants of
//! `invariants.rs` over what crustd lists and what is on the node; then everything is
//! removed and nothing may be left. Seeded: the seed is printed, and the same seed
//! replays the same choices — which operation each worker makes next, with which client,
//! and when the killer strikes at what — as far as the answers are the same (a worker's
//! next choice depends on what it was told, and the kills on the clock).
//!
//! `e2e/tests/chaos.rs` runs it (short in CI); `hack/chaos --seed N --duration 10m` longer.

pub mod client;
pub mod facts;
mod finish;
pub mod invariants;
mod killer;
pub mod model;
pub mod rng;
mod worker;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};

use crate::net::cgroup_mounts;
use crate::workload;
use client::Client;
use facts::Node;
use model::{Model, Violation};

/// What to run.
#[derive(Debug, Clone)]
pub struct Plan {
    pub seed: u64,
    /// How long the churn and the kills go on.
    pub duration: Duration,
    pub workers: usize,
    /// The test network's number (bridge, subnet, cgroup parent).
    pub net: u8,
}

impl Plan {
    /// `CRUST_CHAOS_SEED` (else one from the clock), `CRUST_CHAOS_DURATION` (`90s`, `10m`;
    /// else `default`), `CRUST_CHAOS_WORKERS` (else 3).
    pub fn from_env(default: Duration, net: u8) -> Result<Plan> {
        let seed = match std::env::var("CRUST_CHAOS_SEED") {
            Ok(s) => s
                .parse()
                .with_context(|| format!("CRUST_CHAOS_SEED={s:?}"))?,
            Err(_) => std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_nanos() as u64,
        };
        let duration = match std::env::var("CRUST_CHAOS_DURATION") {
            Ok(d) => parse_duration(&d).with_context(|| format!("CRUST_CHAOS_DURATION={d:?}"))?,
            Err(_) => default,
        };
        let workers = match std::env::var("CRUST_CHAOS_WORKERS") {
            Ok(w) => w
                .parse()
                .with_context(|| format!("CRUST_CHAOS_WORKERS={w:?}"))?,
            Err(_) => 3,
        };
        anyhow::ensure!(
            (1..=16).contains(&workers),
            "1 to 16 workers, not {workers}"
        );
        Ok(Plan {
            seed,
            duration,
            workers,
            net,
        })
    }
}

/// `90`, `90s`, `10m`, `1h`.
pub fn parse_duration(s: &str) -> Result<Duration> {
    let s = s.trim();
    let (n, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = n.parse().context("a number, then s, m or h")?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        u => anyhow::bail!("unit {u:?}: s, m or h"),
    };
    Ok(Duration::from_secs(secs))
}

/// What a run did and found.
#[derive(Debug, Default)]
pub struct Figures {
    pub seed: u64,
    pub seconds: f64,
    /// Calls by `<op> <client> <outcome>`.
    pub ops: BTreeMap<String, u64>,
    pub crustd_kills: u64,
    pub shim_kills: u64,
    /// Individual checks made (each object against each invariant that applies).
    pub checks: u64,
    pub invariants: BTreeSet<&'static str>,
    pub violations: Vec<Violation>,
    /// Where crustd's log was kept when there were violations.
    pub crustd_log: Option<std::path::PathBuf>,
}

impl Figures {
    pub fn total_ops(&self) -> u64 {
        self.ops.values().sum()
    }

    pub fn summary(&self) -> String {
        let mut s = format!(
            "chaos seed {}: {} operations in {:.0} s, {} SIGKILLs of crustd, {} of shims, \
             {} checks of {} invariants ({}), {} violations\n",
            self.seed,
            self.total_ops(),
            self.seconds,
            self.crustd_kills,
            self.shim_kills,
            self.checks,
            self.invariants.len(),
            self.invariants
                .iter()
                .copied()
                .collect::<Vec<_>>()
                .join(", "),
            self.violations.len()
        );
        for (op, n) in &self.ops {
            s.push_str(&format!("  {op:<28} {n}\n"));
        }
        for v in &self.violations {
            s.push_str(&format!("  VIOLATION {v}\n"));
        }
        if let Some(log) = &self.crustd_log {
            s.push_str(&format!("  crustd's log: {}\n", log.display()));
        }
        s
    }
}

#[derive(Debug, Default)]
pub struct Kills {
    /// Incremented before each SIGKILL of crustd and after its restart: odd while down.
    pub epoch: AtomicU64,
    pub crustd: AtomicU64,
    pub shims: AtomicU64,
}

/// What the workers, the killer and the checks share.
pub struct Shared {
    pub client: Client,
    pub node: Node,
    pub image: String,
    model: Mutex<Model>,
    pub kills: Kills,
    ops: Mutex<BTreeMap<String, u64>>,
    /// Checks made during the churn (answers, stops).
    checks: AtomicU64,
    pub stop: AtomicBool,
}

impl Shared {
    pub fn model(&self) -> MutexGuard<'_, Model> {
        self.model.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn violation(&self, invariant: &'static str, what: String) {
        self.model().violation(invariant, what);
    }

    pub fn count(&self, key: &str) {
        *self
            .ops
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key.to_string())
            .or_default() += 1;
    }

    pub fn checked(&self) {
        self.checks.fetch_add(1, Ordering::SeqCst);
    }

    /// Sleeps `d`, waking early when the run stops; true when it stopped.
    pub async fn sleep_unless_stopped(&self, d: Duration) -> bool {
        let end = tokio::time::Instant::now() + d;
        while tokio::time::Instant::now() < end {
            if self.stop.load(Ordering::SeqCst) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100).min(end - tokio::time::Instant::now()))
                .await;
        }
        self.stop.load(Ordering::SeqCst)
    }
}

/// The processes in the cgroup `rel` (below the cgroup parent) in any hierarchy.
pub fn cgroup_procs(cgroup_parent: &str, rel: &str) -> Vec<u32> {
    let mut pids: BTreeSet<u32> = BTreeSet::new();
    for m in cgroup_mounts() {
        let f = m
            .join(cgroup_parent.trim_start_matches('/'))
            .join(rel)
            .join("cgroup.procs");
        for l in std::fs::read_to_string(f).unwrap_or_default().lines() {
            if let Ok(p) = l.trim().parse() {
                pids.insert(p);
            }
        }
    }
    pids.into_iter().collect()
}

/// Runs the plan against a crustd of its own; the figures, violations included.
pub async fn run(plan: &Plan) -> Result<Figures> {
    println!(
        "chaos: seed {} ({} workers, {:?}); replay with hack/chaos --seed {}",
        plan.seed, plan.workers, plan.duration, plan.seed
    );
    let (registry, crustd, net) = workload::setup(plan.net).await;
    let image = registry.image("crust/busybox:latest");
    workload::pull(&crustd, &image).await;
    let node = Node {
        dir: crustd.dir().to_path_buf(),
        root_dir: crustd.root_dir.clone(),
        state_dir: crustd.state_dir.clone(),
        crustd_pid: crustd.pid(),
        bridge: net.bridge.clone(),
        cgroup_parent: net.cgroup_parent.clone(),
        leases_dir: net.ipam_dir.join(net.network_name()),
        logs_dir: crustd.dir().join("logs"),
    };
    let sh = Arc::new(Shared {
        client: Client::new(&crustd.socket, &crustd.dir().join("chaos"))?,
        node,
        image: image.clone(),
        model: Mutex::new(Model::default()),
        kills: Kills::default(),
        ops: Mutex::new(BTreeMap::new()),
        checks: AtomicU64::new(0),
        stop: AtomicBool::new(false),
    });
    let started = Instant::now();
    let killer = tokio::spawn(killer::run(sh.clone(), crustd, plan.seed));
    let workers: Vec<_> = (0..plan.workers)
        .map(|n| tokio::spawn(worker::Worker::new(n, plan.seed, sh.clone()).run()))
        .collect();
    sh.sleep_unless_stopped(plan.duration).await;
    sh.stop.store(true, Ordering::SeqCst);
    for w in workers {
        w.await.context("a worker panicked")?;
    }
    let mut crustd = killer.await.context("the killer panicked")?;
    let seconds = started.elapsed().as_secs_f64();
    if crustd.pid().is_none() {
        crustd.restart().await?;
    }
    let mut sh = Arc::into_inner(sh).context("the run's tasks ended")?;
    sh.node.crustd_pid = crustd.pid();
    let mut checker = finish::settle_and_check(&sh).await;
    let teardown = finish::remove_all_and_check(&sh).await;
    checker.count += teardown.count + sh.checks.load(Ordering::SeqCst);
    checker.violations.extend(teardown.violations);
    let model = sh.model.into_inner().unwrap_or_else(|p| p.into_inner());
    // Violations seen during the churn come first.
    let mut violations = model.violations;
    violations.extend(checker.violations);
    let crustd_log = (!violations.is_empty())
        .then(|| {
            let keep = std::env::temp_dir().join(format!("crust-chaos-{}-crustd.log", plan.seed));
            std::fs::copy(&crustd.log_path, &keep).ok().map(|_| keep)
        })
        .flatten();
    let figures = Figures {
        seed: plan.seed,
        crustd_log,
        seconds,
        ops: sh.ops.into_inner().unwrap_or_else(|p| p.into_inner()),
        crustd_kills: sh.kills.crustd.load(Ordering::SeqCst),
        shim_kills: sh.kills.shims.load(Ordering::SeqCst),
        checks: checker.count,
        invariants: finish::INVARIANTS.iter().copied().collect(),
        violations,
    };
    drop(crustd);
    drop(net);
    drop(registry);
    Ok(figures)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("10m").unwrap(), Duration::from_secs(600));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert!(parse_duration("10x").is_err());
        assert!(parse_duration("m").is_err());
    }
}

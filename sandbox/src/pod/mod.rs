//! Pod sandboxes: the shared namespaces, network, files and cgroup that a pod's containers live in.
//!
//! ```text
//!   RunPodSandbox ──▶ READY ──StopPodSandbox──▶ NOTREADY ──RemovePodSandbox──▶ (gone)
//!                       └──────────────RemovePodSandbox (stops first)─────────────┘
//! ```
//! Stop and Remove are idempotent; an unknown id is success for both.

pub mod files;
mod gc;
mod list;
pub mod record;
mod remove;
mod run;
mod shim;
pub mod spec;
mod stop;
pub mod store;
#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use record::PodRecord;
pub use shim::SHIM_NAMESPACE;
pub use spec::*;

use crate::Config;
use crate::cgroup::{CgroupDriver, Hierarchies};
use crate::cni::{Cni, PluginRunner, ProcessRunner};
use crate::error::{Error, Result};
use crate::metrics;
use crate::registry::{KeyedLocks, Names, Registry, Unreadable};
use crate::task::{Connector, ShimConnector, TaskRuntime};

/// Where a [`PodSandboxes`] keeps things on the node.
#[derive(Debug, Clone)]
pub struct Paths {
    /// Persistent: CNI result cache under `<root_dir>/cni`.
    pub root_dir: PathBuf,
    /// Runtime (tmpfs): pod dirs under `<state_dir>/pods/<id>`.
    pub state_dir: PathBuf,
}

/// Where [`PodSandboxes`] meets processes and the kernel, replaceable in tests.
pub struct Seams {
    /// Runs CNI plugins.
    pub cni_runner: Box<dyn PluginRunner>,
    /// The cgroup hierarchies to use; None: pods get no cgroup.
    pub hierarchies: Option<Hierarchies>,
    /// Start a shim per pod (false: pods without a shim, for tests of the rest).
    pub spawn_shims: bool,
    /// Reaches a pod's task runtime (None: its shim, through the pod directory).
    pub connector: Option<Arc<dyn Connector>>,
}

/// The pods of this node.
#[derive(Clone)]
pub struct PodSandboxes {
    inner: Arc<Inner>,
}

struct Inner {
    config: Config,
    paths: Paths,
    cgroup_driver: CgroupDriver,
    /// None when the node's cgroups could not be read (pods then get no cgroup of their own).
    hierarchies: Option<Hierarchies>,
    /// False only in tests that run without a built crust-shim.
    spawn_shims: bool,
    cni: Cni,
    /// Every persisted pod by id.
    pods: Registry<PodRecord>,
    /// Names being created, or created for a caller that went away.
    names: Arc<Names<PodSpec>>,
    /// Serialises the operations (run's containers, stop, remove) on one pod.
    op_locks: KeyedLocks<tokio::sync::Mutex<()>>,
    /// Where shims publish their events (started with the first shim).
    events: tokio::sync::OnceCell<String>,
    /// Keeps the events server alive (a Mutex: the server is Send but not Sync).
    events_server: Mutex<Option<crate::shim::EventsServer>>,
    shim_events: tokio::sync::broadcast::Sender<crate::shim::ShimEvent>,
    connector: Arc<dyn Connector>,
    /// The connection to each pod's task runtime, made on first use (`shim.rs`).
    runtimes: tokio::sync::Mutex<std::collections::HashMap<String, Arc<dyn TaskRuntime>>>,
}

impl PodSandboxes {
    /// Opens the pod store (records written by an earlier crustd come back as they were).
    pub fn open(
        config: Config,
        db: Arc<crust_state::StateDb>,
        paths: Paths,
        cgroup_driver: CgroupDriver,
    ) -> Result<Self> {
        let hierarchies = match Hierarchies::detect() {
            Ok(h) if !h.mounts.is_empty() => Some(h),
            Ok(_) => None,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read cgroup hierarchies; pods get no cgroup");
                None
            }
        };
        Self::open_with(
            config,
            db,
            paths,
            cgroup_driver,
            Seams {
                cni_runner: Box::new(ProcessRunner),
                hierarchies,
                spawn_shims: true,
                connector: None,
            },
        )
    }

    /// As [`open`](Self::open), with the process and cgroup seams given (tests).
    pub fn open_with(
        config: Config,
        db: Arc<crust_state::StateDb>,
        paths: Paths,
        cgroup_driver: CgroupDriver,
        seams: Seams,
    ) -> Result<Self> {
        let Seams {
            cni_runner: runner,
            hierarchies,
            spawn_shims,
            connector,
        } = seams;
        config.validate().map_err(Error::InvalidArgument)?;
        metrics::init();
        let pods = Registry::open(store::table(db), "pod sandbox", Unreadable::Refuse)?;
        // After a reboot the state dir (tmpfs) is empty: such pods have no namespaces any
        // more. They stay listed, NOTREADY, so kubelet stops (CNI DEL from the persistent
        // cache releases their leases) and removes them.
        for rec in pods.filter(|r| r.state == PodState::Ready && !r.dir.exists()) {
            tracing::warn!(pod = %rec.id, "pod directory is gone (reboot?): NOTREADY");
            pods.update(&rec.id, |r| r.state = PodState::NotReady)?;
        }
        let known = pods.filter(|_| true).into_iter().map(|r| r.id).collect();
        let orphans = gc::find(&paths.state_dir, &paths.root_dir.join("cni"), &known);
        let cni = Cni::new(
            config.cni_bin_dirs.clone(),
            paths.root_dir.join("cni"),
            Duration::from_secs(config.cni_timeout_seconds.max(1)),
            runner,
        );
        let s = Self {
            inner: Arc::new(Inner {
                config,
                paths,
                cgroup_driver,
                hierarchies,
                spawn_shims,
                cni,
                pods,
                names: Names::new("pod sandbox"),
                op_locks: KeyedLocks::default(),
                events: tokio::sync::OnceCell::new(),
                events_server: Mutex::new(None),
                shim_events: tokio::sync::broadcast::channel(1024).0,
                connector: connector.unwrap_or_else(|| Arc::new(ShimConnector)),
                runtimes: Default::default(),
            }),
        };
        s.inner.update_metrics();
        if !orphans.is_empty() {
            match tokio::runtime::Handle::try_current() {
                Ok(rt) => {
                    rt.spawn(gc::release(s.inner.clone(), orphans));
                }
                Err(_) => tracing::warn!(?orphans, "no runtime to release leftovers with"),
            }
        }
        // Shims that outlived the last crustd publish to the same socket path: listen again.
        let has_shims = s.inner.pods.any(|p| p.shim_pid.is_some());
        if s.inner.spawn_shims
            && has_shims
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            let inner = s.inner.clone();
            rt.spawn(async move {
                let dirs: Vec<PathBuf> = inner
                    .pods
                    .filter(|p| p.shim_pid.is_some())
                    .into_iter()
                    .map(|p| p.dir)
                    .collect();
                for dir in dirs {
                    crate::shim::follow_shim_log(&dir);
                }
                if let Err(e) = inner.events_address().await {
                    tracing::warn!(error = %e, "shim events endpoint");
                }
            });
        }
        Ok(s)
    }

    /// The configuration pods are made with.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// The node's cgroup hierarchies (None when they could not be read).
    pub fn hierarchies(&self) -> Option<&Hierarchies> {
        self.inner.hierarchies.as_ref()
    }

    /// Events published by the pods' shims (task exits, OOMs, ...).
    pub fn shim_events(&self) -> tokio::sync::broadcast::Receiver<crate::shim::ShimEvent> {
        self.inner.subscribe()
    }

    /// A pod's record by full id or unique prefix (for the containers of the pod).
    pub fn get(&self, id: &str) -> Result<PodRecord> {
        self.inner.get(id)
    }

    /// The pod's record, READY, with its op lock held until the guard drops:
    /// what is made in the pod meanwhile (a container) cannot race a
    /// StopPodSandbox or RemovePodSandbox of it. A pod that is not READY is
    /// FailedPrecondition.
    pub async fn hold_ready(&self, id: &str) -> Result<(PodRecord, PodGuard)> {
        let full = self
            .inner
            .resolve(id)?
            .ok_or_else(|| Error::NotFound(format!("pod sandbox {id:?} not found")))?;
        let guard = PodGuard {
            _held: self.inner.op_lock(&full).lock_owned().await,
        };
        // Read under the lock: a stop or remove that held it is over now.
        let rec = self.inner.get(&full)?;
        if rec.state != PodState::Ready {
            return Err(Error::FailedPrecondition(format!(
                "pod sandbox {} is not ready",
                rec.id
            )));
        }
        Ok((rec, guard))
    }
}

/// A pod's op lock, held (see [`PodSandboxes::hold_ready`]).
pub struct PodGuard {
    _held: tokio::sync::OwnedMutexGuard<()>,
}

impl Inner {
    /// Full id for a full id or unique prefix; None when no pod matches.
    fn resolve(&self, id: &str) -> Result<Option<String>> {
        self.pods.resolve(id)
    }

    fn get(&self, id: &str) -> Result<PodRecord> {
        self.pods.get(id)
    }

    fn op_lock(&self, id: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.op_locks.get(id)
    }

    fn forget_op_lock(&self, id: &str) {
        self.op_locks.forget(id);
    }

    /// Persists and caches a record.
    fn save(&self, rec: PodRecord) -> Result<()> {
        self.pods.insert(rec)?;
        self.update_metrics();
        Ok(())
    }

    fn update_metrics(&self) {
        for state in [PodState::Ready, PodState::NotReady] {
            let n = self.pods.count(|p| p.state == state);
            metrics::PODS
                .with_label_values(&[state.as_str()])
                .set(n as i64);
        }
        // Counted from the records, not /proc: a status poll must stay O(1) in pods.
        let shims = self.pods.count(|p| p.shim_pid.is_some());
        metrics::SHIMS.set(shims as i64);
    }
}

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

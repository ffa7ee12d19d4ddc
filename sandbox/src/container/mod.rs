//! The containers of this node, under their pod's shim; their OCI spec, the user they run
//! as, their seccomp and AppArmor profiles.
//!
//! [`Containers`] is wired here and does one thing per file: `create`, `start`, `stop`,
//! `remove`, `exec`, `update` (resources, log reopening), `list` (status, list, stats),
//! `exit` (exit watching), `recover` (starts a crash cut short), `orphans` (what a crash
//! left), `bundle` (the bundle on disk).
//! The state machine is drawn in `record.rs`. A pod's shim is reached through the task
//! runtime seam ([`crate::task::TaskRuntime`]) the pod hands out.
//!
//! The rootfs is mounted by crustd itself (so the image's /etc/passwd can be read while the
//! spec is built) at `<bundle>/rootfs`, and the shim is handed a ready bundle. Exits are
//! learnt from a `Wait` on the shim per running container; after a crustd restart those
//! waits are issued again, and a shim that is gone turns its running containers UNKNOWN
//! (or EXITED when the shim can still tell).

pub mod apparmor;
pub mod attach;
mod bundle;
pub mod checkpoint;
pub mod checkpoint_archive;
pub mod checkpoint_restore;
mod create;
mod exec;
pub mod exec_stream;
mod exit;
pub mod image_volumes;
mod list;
pub mod metrics;
mod orphans;
pub mod record;
mod recover;
mod remove;
pub mod seccomp;
pub mod spec;
mod start;
pub mod stats;
mod stop;
#[cfg(test)]
mod tests;
mod update;
pub mod user;
mod userns;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::{broadcast, watch};

pub use exec::{EXEC_OUTPUT_CAP, ExecOutput};
pub use image_volumes::ImageVolumeSource;
pub use list::{ContainerFilter, ContainerUsage};
pub use record::{ContainerRecord, ContainerState, RunAs};
pub use spec::{BuiltSpec, NodeContext, PidNamespace, PodContext, SpecError, build};
pub use stop::parse_signal;

use crate::error::{Error, Result};
use crate::pod::PodSandboxes;
use crate::registry::{KeyedLocks, Names, Registry, Unreadable};
use crate::shim::ShimError;
use image_volumes::ImageVolumes;

/// The FIFO in a container's bundle that is its stdin when the config asks for one
/// (`stdin: true`), made at start: the process reads what is written to it and waits,
/// as with containerd, while nothing is; without it, stdin is /dev/null. Attach writes
/// into it (`attach.rs`).
pub const STDIN_FIFO: &str = "stdin";

/// What crust needs from the image store: a writable snapshot of an image,
/// mounted at a path, and its removal. Implemented by crustd over `crust-images`.
/// Unmounting is done here, before `remove` is called.
pub trait Rootfs: Send + Sync {
    /// Prepares a writable snapshot `key` on top of `image_id` and mounts it at `target`
    /// (a full disk is [`Error::NoSpace`]).
    fn mount(&self, key: &str, image_id: &str, target: &Path) -> Result<()>;
    /// Removes snapshot `key` (already unmounted); absent is fine.
    fn remove(&self, key: &str) -> Result<()>;
    /// Bytes and inodes the container has written (its snapshot's upper layer).
    fn usage(&self, key: &str) -> Option<(u64, u64)>;
    /// Keys of every writable snapshot there is (to find those no container owns).
    fn keys(&self) -> std::result::Result<Vec<String>, String>;
    /// As `mount`, for a container in a user namespace: the image's layers are seen through
    /// mounts idmapped with `userns` and the writable layer's root belongs to `root` (the
    /// pod root's host uid and gid), so nothing is copied or chowned.
    fn mount_idmapped(
        &self,
        key: &str,
        image_id: &str,
        target: &Path,
        userns: &std::os::fd::OwnedFd,
        root: (u32, u32),
    ) -> Result<()> {
        let _ = (key, image_id, target, userns, root);
        Err(Error::FailedPrecondition(
            "this root filesystem cannot be idmapped for a user namespace".into(),
        ))
    }
    /// The directory holding what snapshot `key` wrote (an overlay upper
    /// directory), for CheckpointContainer's rootfs diff; None when it has none.
    fn upper_dir(&self, _key: &str) -> Option<PathBuf> {
        None
    }
    /// Where image volumes come from (`image_volumes.rs`); None: this node has none.
    fn image_volumes(&self) -> Option<Arc<dyn ImageVolumeSource>> {
        None
    }
}

/// The image a container is created from, resolved by crustd.
#[derive(Debug, Clone)]
pub struct ImageInfo {
    /// As the request named it.
    pub name: String,
    /// The config digest.
    pub id: String,
    pub config: Option<oci_spec::image::Config>,
}

/// What happened to a container, for GetContainerEvents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerEventKind {
    Created,
    Started,
    Stopped,
    Deleted,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerEvent {
    pub id: String,
    pub pod_id: String,
    pub kind: ContainerEventKind,
    pub at_ns: i64,
}

/// Events a slow subscriber may fall behind by before it misses some.
const EVENT_BACKLOG: usize = 1024;

#[derive(Debug, Clone)]
pub struct ContainersConfig {
    /// Runtime state: bundles under `<state_dir>/containers/<id>`.
    pub state_dir: PathBuf,
    pub systemd_cgroup: bool,
}

#[derive(Clone)]
pub struct Containers {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: ContainersConfig,
    pods: PodSandboxes,
    rootfs: Arc<dyn Rootfs>,
    /// Image volumes and their users (`image_volumes.rs`).
    volumes: ImageVolumes,
    node: spec::NodeContext,
    /// Every container by id, in memory and in the store.
    records: Registry<ContainerRecord>,
    /// Names being created; the request each was made for (see `create.rs`).
    names: Arc<Names<String>>,
    /// One exit signal per started container: true once it exited.
    exits: Mutex<HashMap<String, watch::Sender<bool>>>,
    /// The previous CPU sample of each cgroup (time, usage), for nano cores.
    cpu_samples: Mutex<HashMap<String, (i64, u64)>>,
    events: broadcast::Sender<ContainerEvent>,
    /// Per container: true once its task was deleted from the shim (`exit.rs`, `remove.rs`).
    task_deleted: KeyedLocks<tokio::sync::Mutex<bool>>,
    /// Background cleanups of removed containers, with their pod (`remove.rs`).
    cleanups: Mutex<Vec<(String, tokio::task::JoinHandle<()>)>>,
}

impl From<SpecError> for Error {
    fn from(e: SpecError) -> Self {
        match e {
            SpecError::NoCommand
            | SpecError::User(_)
            | SpecError::UnknownCapability(_)
            | SpecError::SeccompProfile { .. }
            | SpecError::SeccompType(_)
            | SpecError::AppArmor(_)
            | SpecError::Device { .. }
            | SpecError::Mount { .. } => Error::InvalidArgument(e.to_string()),
            SpecError::Oci(_) => Error::Internal(e.to_string()),
        }
    }
}

impl From<ShimError> for Error {
    fn from(e: ShimError) -> Self {
        match e {
            ShimError::NotFound(m) => Error::NotFound(m),
            ShimError::AlreadyExists(m) => Error::AlreadyExists(m),
            ShimError::InvalidArgument(m) => Error::InvalidArgument(m),
            ShimError::FailedPrecondition(m) => Error::FailedPrecondition(m),
            other => Error::Internal(other.to_string()),
        }
    }
}

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

fn to_ns(t: Option<SystemTime>) -> i64 {
    t.and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_nanos() as i64)
        .unwrap_or_else(now_ns)
}

/// This process's own oom_score_adj: containers may not go below it.
fn own_oom_score_adj() -> i32 {
    std::fs::read_to_string("/proc/self/oom_score_adj")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

impl Containers {
    /// Opens the container store and re-attaches to every container that was
    /// running when crustd last stopped.
    pub async fn open(
        cfg: ContainersConfig,
        db: Arc<crust_state::StateDb>,
        pods: PodSandboxes,
        rootfs: Arc<dyn Rootfs>,
    ) -> Result<Self> {
        let volumes = ImageVolumes::new(&cfg.state_dir, db.clone(), rootfs.image_volumes());
        let records = Registry::open(record::table(db), "container", Unreadable::Skip)?;
        let apparmor = spec::host_has_apparmor();
        if apparmor {
            // Loaded now so that the first container does not wait for it; creates
            // check again (it may have been unloaded) and fail if it cannot be.
            if let Err(e) = apparmor::ensure_default() {
                tracing::warn!(
                    error = %e,
                    "AppArmor is enabled but crust's default profile could not be loaded: \
                     containers that need it will fail to create"
                );
            }
        }
        let c = Containers {
            inner: Arc::new(Inner {
                node: NodeContext {
                    min_oom_score_adj: own_oom_score_adj(),
                    apparmor,
                    seccomp_profile_root: PathBuf::from("/var/lib/kubelet/seccomp"),
                },
                cfg,
                pods,
                rootfs,
                volumes,
                records,
                names: Names::new("container"),
                exits: Mutex::new(HashMap::new()),
                cpu_samples: Mutex::new(HashMap::new()),
                events: broadcast::channel(EVENT_BACKLOG).0,
                task_deleted: KeyedLocks::default(),
                cleanups: Mutex::new(Vec::new()),
            }),
        };
        for rec in c
            .inner
            .records
            .filter(|r| r.state == ContainerState::Running)
        {
            c.inner.clone().watch_exit(rec.id);
        }
        c.inner.settle_interrupted_starts().await;
        c.inner.remove_orphans();
        c.inner.reconcile_image_volumes();
        c.inner.update_metrics();
        Ok(c)
    }

    /// Every container event from now on (GetContainerEvents).
    pub fn subscribe(&self) -> broadcast::Receiver<ContainerEvent> {
        self.inner.events.subscribe()
    }
}

impl Inner {
    /// Changes a record and persists it (see [`Registry::update`]), then the metrics.
    fn update(&self, id: &str, f: impl FnOnce(&mut ContainerRecord)) -> Result<ContainerRecord> {
        let updated = self.records.update(id, f);
        self.update_metrics();
        updated
    }

    fn emit(&self, rec: &ContainerRecord, kind: ContainerEventKind) {
        // No subscriber is not an error.
        let _ = self.events.send(ContainerEvent {
            id: rec.id.clone(),
            pod_id: rec.pod_id.clone(),
            kind,
            at_ns: now_ns(),
        });
    }

    fn update_metrics(&self) {
        let n = |s: ContainerState| self.records.count(|r| r.state == s) as i64;
        metrics::set_containers(&[
            ("created", n(ContainerState::Created)),
            ("running", n(ContainerState::Running)),
            ("exited", n(ContainerState::Exited)),
            ("unknown", n(ContainerState::Unknown)),
        ]);
    }
}

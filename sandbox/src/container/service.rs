//! The containers of this node: create, start, stop, remove, status, list,
//! exec, under their pod's shim. The state machine is drawn in `record.rs`.
//!
//! The rootfs is mounted by crustd itself (so the image's /etc/passwd can be
//! read while the spec is built) at `<bundle>/rootfs`, and the shim is handed a
//! ready bundle. Exits are learnt from a `Wait` on the shim per running
//! container; after a crustd restart those waits are issued again, and a shim
//! that is gone turns its running containers into UNKNOWN... or EXITED when
//! the shim can still tell.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use k8s_cri::v1::ContainerConfig;
use tokio::sync::{oneshot, watch};

use super::record::{ContainerRecord, ContainerState, ContainerStore, RECORD_VERSION, name_key};
use super::spec::{self, NodeContext, PidNamespace, PodContext, SpecError};
use super::stats::{CgroupUsage, nano_cores, read_cgroup};
use crate::error::{Error, Result};
use crate::pod::{NamespaceMode, PodRecord, PodSandboxes, PodState};
use crate::shim::{CreateTask, Output, RuntimeOptions, ShimClient, ShimError, TaskIo, TaskStatus};

mod recover;

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
}

/// A container's resource usage, for the stats RPCs.
#[derive(Debug, Clone)]
pub struct ContainerUsage {
    pub record: ContainerRecord,
    /// None unless the container is running.
    pub cgroup: Option<CgroupUsage>,
    /// (bytes, inodes) of its writable layer.
    pub writable: Option<(u64, u64)>,
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

/// Container names in flight. A std Mutex: never held across an await.
#[derive(Default)]
struct Names {
    /// Creates running now, by name key.
    creating: HashMap<String, Creating>,
}

/// What makes a kubelet retry "the same request": the config and the image.
fn request_key_of(config: &ContainerConfig, image: &str) -> String {
    serde_json::to_string(&(config, image)).unwrap_or_default()
}

fn request_key(rec: &ContainerRecord) -> String {
    request_key_of(&rec.config, &rec.image)
}

struct Creating {
    id: String,
    /// The request, serialized: a retry must be identical to wait for it.
    request: String,
    /// The outcome: Some(Some(id)) made, Some(None) failed.
    done: watch::Receiver<Option<Option<String>>>,
}

enum Reserved {
    Fresh(String, watch::Sender<Option<Option<String>>>),
    Wait(watch::Receiver<Option<Option<String>>>),
    /// A container this same request already made, still untouched.
    Made(String),
}

/// Where cgroup hierarchies are mounted on a real node.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// Unmounts a container's rootfs and removes its snapshot; idempotent.
fn release_rootfs(rootfs: &dyn Rootfs, key: &str, target: &Path) -> Result<()> {
    super::userns::release(target.parent().unwrap_or(target))?;
    crate::namespaces::unmount(target)?;
    rootfs.remove(key)
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

/// ListContainers filter; every set field must match.
#[derive(Debug, Clone, Default)]
pub struct ContainerFilter {
    pub id: String,
    pub pod_id: String,
    pub state: Option<ContainerState>,
    pub labels: HashMap<String, String>,
}

/// ExecSync's answer.
#[derive(Debug, Clone, Default)]
pub struct ExecOutput {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub exit_code: i32,
}

/// Output an ExecSync keeps per stream; the rest is read and dropped.
pub const EXEC_OUTPUT_CAP: usize = 16 * 1024 * 1024;

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
    store: ContainerStore,
    node: NodeContext,
    /// Every container by id. A std Mutex: never held across an await.
    records: Mutex<HashMap<String, ContainerRecord>>,
    /// Names being created, and creates whose caller went away.
    names: Mutex<Names>,
    /// One exit signal per started container: true once it exited.
    exits: Mutex<HashMap<String, watch::Sender<bool>>>,
    /// Shim connections by pod id.
    shims: tokio::sync::Mutex<HashMap<String, ShimClient>>,
    /// The previous CPU sample of each cgroup (time, usage), for nano cores.
    cpu_samples: Mutex<HashMap<String, (i64, u64)>>,
    events: tokio::sync::broadcast::Sender<ContainerEvent>,
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

pub(crate) fn new_id() -> Result<String> {
    let mut b = [0u8; 32];
    let mut f = std::fs::File::open("/dev/urandom")?;
    std::io::Read::read_exact(&mut f, &mut b)?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
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
        let store = ContainerStore::new(db);
        let records: HashMap<String, ContainerRecord> = store
            .load_all()?
            .into_iter()
            .map(|r| (r.id.clone(), r))
            .collect();
        let apparmor = spec::host_has_apparmor();
        if apparmor {
            // Loaded now so that the first container does not wait for it; creates
            // check again (it may have been unloaded) and fail if it cannot be.
            if let Err(e) = super::apparmor::ensure_default() {
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
                store,
                records: Mutex::new(records),
                names: Mutex::new(Names::default()),
                exits: Mutex::new(HashMap::new()),
                shims: tokio::sync::Mutex::new(HashMap::new()),
                cpu_samples: Mutex::new(HashMap::new()),
                events: tokio::sync::broadcast::channel(EVENT_BACKLOG).0,
            }),
        };
        let running: Vec<String> = c
            .inner
            .lock()
            .values()
            .filter(|r| r.state == ContainerState::Running)
            .map(|r| r.id.clone())
            .collect();
        for id in running {
            c.inner.clone().watch_exit(id);
        }
        c.inner.settle_interrupted_starts().await;
        c.inner.remove_orphans();
        c.inner.update_metrics();
        Ok(c)
    }

    /// Full id for a full id or unique prefix.
    pub fn resolve(&self, id: &str) -> Result<Option<String>> {
        self.inner.resolve(id)
    }

    pub fn get(&self, id: &str) -> Result<ContainerRecord> {
        let full = self
            .inner
            .resolve(id)?
            .ok_or_else(|| Error::NotFound(format!("container {id:?} not found")))?;
        self.inner
            .lock()
            .get(&full)
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("container {id:?} not found")))
    }

    /// CreateContainer: a bundle with the OCI spec and a mounted rootfs, not yet running.
    pub async fn create(
        &self,
        pod_id: &str,
        config: ContainerConfig,
        image: ImageInfo,
    ) -> Result<String> {
        let meta = config
            .metadata
            .as_ref()
            .ok_or_else(|| Error::InvalidArgument("container config has no metadata".into()))?;
        // Names, paths (the log path stays below the pod's log directory) and
        // modes were checked at the CRI edge (crust-cri's validate module).
        let pod = self.inner.pods.get(pod_id)?;
        if pod.state != PodState::Ready {
            return Err(Error::FailedPrecondition(format!(
                "pod sandbox {} is not ready",
                pod.id
            )));
        }
        let key = name_key(&pod.id, &meta.name, meta.attempt);
        let request = request_key_of(&config, &image.name);
        loop {
            let mut done = match self.inner.reserve(&key, &request)? {
                Reserved::Made(id) => return Ok(id),
                Reserved::Wait(done) => done,
                Reserved::Fresh(id, done) => {
                    return self
                        .start_create(id, key, &pod.id, config, image, done)
                        .await;
                }
            };
            // A retry of a create still running: its outcome is ours. If it
            // failed, this request tries again.
            let outcome = done
                .wait_for(Option::is_some)
                .await
                .ok()
                .and_then(|o| o.clone());
            if let Some(Some(id)) = outcome {
                return Ok(id);
            }
        }
    }

    /// Runs a create to its end even if the caller goes away, so that nothing
    /// is left half made; the caller's retry then finds it (see `reserve`).
    async fn start_create(
        &self,
        id: String,
        key: String,
        pod_id: &str,
        config: ContainerConfig,
        image: ImageInfo,
        done: watch::Sender<Option<Option<String>>>,
    ) -> Result<String> {
        let inner = self.inner.clone();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let pod_id = pod_id.to_string();
        tokio::spawn(async move {
            // The pod stays READY while the container is made: a concurrent
            // Stop/RemovePodSandbox waits, or this create fails cleanly.
            let r = match inner.pods.hold_ready(&pod_id).await {
                Ok((pod, _held)) => inner.create(&id, &pod, config, image).await,
                Err(e) => Err(e),
            };
            inner.names().creating.remove(&key);
            let _ = done.send(Some(r.as_ref().ok().cloned()));
            let _ = tx.send(r);
        });
        rx.await
            .map_err(|_| Error::Internal("create task ended without an answer".into()))?
    }

    /// StartContainer.
    pub async fn start(&self, id: &str) -> Result<()> {
        let pod_id = self.get(id)?.pod_id;
        // Under the pod's op lock, READY: a StopPodSandbox waits for the start
        // (and then stops the container), and a second StartContainer of the
        // same container (a kubelet retry) finds it no longer CREATED.
        let (pod, _held) = self.inner.pods.hold_ready(&pod_id).await?;
        let rec = self.get(id)?;
        if rec.state != ContainerState::Created {
            return Err(Error::FailedPrecondition(format!(
                "container {} is {:?}, not CREATED",
                rec.id, rec.state
            )));
        }
        if let Some(u) = super::userns::PodUserns::of(&pod) {
            // Start-up may have tightened the path runc's init walks as the pod's root.
            super::userns::allow_init_in(&self.inner.cfg.state_dir, &rec.bundle, &u.maps)?;
        }
        let stdin = if rec.config.stdin {
            let fifo = rec.bundle.join(STDIN_FIFO);
            match nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)) {
                Ok(()) | Err(nix::errno::Errno::EEXIST) => Some(fifo),
                Err(e) => {
                    return Err(Error::Internal(format!("making the stdin FIFO: {e}")));
                }
            }
        } else {
            None
        };
        let t0 = std::time::Instant::now();
        let shim = self.inner.shim(&pod).await?;
        let t_shim = t0.elapsed();
        let task = CreateTask {
            id: rec.id.clone(),
            bundle: rec.bundle.clone(),
            rootfs: Vec::new(),
            io: TaskIo {
                // The shim keeps it open read-write (see STDIN_FIFO).
                stdin,
                output: rec
                    .log_path
                    .clone()
                    .map(Output::CriLog)
                    .unwrap_or(Output::Null),
                terminal: rec.config.tty,
            },
            runtime: RuntimeOptions {
                binary: Some(rec.runtime_binary.clone()),
                root: Some(self.inner.cfg.state_dir.join("runc")),
                systemd_cgroup: self.inner.cfg.systemd_cgroup,
            },
        };
        let timer = super::metrics::OpTimer::new("start");
        // The start time is taken before the process can run, so that a
        // container that exits at once never finishes before it started.
        let started_at = now_ns();
        let started = shim.create_and_start(&task).await;
        drop(timer);
        tracing::debug!(
            container = %rec.id,
            shim_ms = t_shim.as_secs_f64() * 1e3,
            runtime_ms = (t0.elapsed() - t_shim).as_secs_f64() * 1e3,
            "create and start in the shim"
        );
        match started {
            Ok(pid) => {
                // The exit watch is armed before the record says RUNNING, so
                // no exit can slip between the two.
                let rec = self.inner.update(&rec.id, |r| {
                    r.state = ContainerState::Running;
                    r.pid = pid;
                    r.started_at_ns = started_at;
                })?;
                self.inner.emit(&rec, ContainerEventKind::Started);
                self.inner.clone().watch_exit(rec.id.clone());
                Ok(())
            }
            Err(e) => {
                // The process may run although the call failed (a create and
                // start that timed out): it must not live on unrecorded.
                let _ = shim.kill(&rec.id, "", libc::SIGKILL as u32, true).await;
                let _ = tokio::time::timeout(Duration::from_secs(10), shim.wait(&rec.id, "")).await;
                if !matches!(
                    shim.delete(&rec.id, "").await,
                    Ok(_) | Err(ShimError::NotFound(_))
                ) {
                    self.inner.force_delete(&rec).await;
                }
                let rec = self.inner.update(&rec.id, |r| {
                    r.state = ContainerState::Exited;
                    r.finished_at_ns = now_ns();
                    r.exit_code = 128;
                    r.reason = "StartError".into();
                    r.message = e.to_string();
                })?;
                self.inner.emit(&rec, ContainerEventKind::Stopped);
                Err(Error::from(e))
            }
        }
    }

    /// StopContainer: the stop signal, `timeout` seconds, then SIGKILL.
    /// Unknown containers and containers not running are success.
    pub async fn stop(&self, id: &str, timeout: Duration) -> Result<()> {
        let Some(full) = self.inner.resolve(id)? else {
            return Ok(());
        };
        let Some(rec) = self.inner.lock().get(&full).cloned() else {
            return Ok(());
        };
        let rec = if rec.state == ContainerState::Unknown {
            // UNKNOWN may come from a passing error while the shim is fine:
            // if it still runs the task, the container is RUNNING again and
            // stops gracefully below.
            let running = match self.inner.pods.get(&rec.pod_id) {
                Ok(pod) => match self.inner.shim(&pod).await {
                    Ok(shim) => shim
                        .state(&rec.id, "")
                        .await
                        .is_ok_and(|s| s.status == TaskStatus::Running),
                    Err(_) => false,
                },
                Err(_) => false,
            };
            if !running {
                // Its shim is gone, its process maybe not: the runtime kills
                // what is left; how it would have exited is not known.
                self.inner.force_delete(&rec).await;
                self.inner
                    .record_exit(&rec.id, 255, Some(SystemTime::now()));
                let _ = self.inner.update(&rec.id, |r| r.reason = "Unknown".into());
                return Ok(());
            }
            let rec = self
                .inner
                .update(&rec.id, |r| r.state = ContainerState::Running)?;
            // The exit signal UNKNOWN fired is taken back: it runs again.
            if let Some(tx) = self.inner.exits_lock().get(&rec.id) {
                tx.send_replace(false);
            }
            self.inner.clone().watch_exit(rec.id.clone());
            rec
        } else {
            rec
        };
        if rec.state != ContainerState::Running {
            return Ok(());
        }
        let _timer = super::metrics::OpTimer::new("stop");
        let pod = self.inner.pods.get(&rec.pod_id)?;
        let shim = match self.inner.shim(&pod).await {
            Ok(s) => s,
            Err(e) => {
                self.inner.mark_unknown(&rec.id, &e.to_string());
                return Ok(());
            }
        };
        let mut exited = self.inner.exit_receiver(&rec.id);
        if !timeout.is_zero() {
            let signal = rec
                .stop_signal
                .as_deref()
                .and_then(parse_signal)
                .unwrap_or(libc::SIGTERM);
            match shim.kill(&rec.id, "", signal as u32, false).await {
                Ok(()) => {}
                Err(ShimError::NotFound(_)) => return Ok(()),
                Err(e) => tracing::warn!(container = %rec.id, error = %e, "stop signal"),
            }
            if tokio::time::timeout(timeout, exited.wait_for(|e| *e))
                .await
                .is_ok()
            {
                return Ok(());
            }
            tracing::info!(container = %rec.id, "did not stop within {timeout:?}; SIGKILL");
        }
        match shim.kill(&rec.id, "", libc::SIGKILL as u32, true).await {
            Ok(()) | Err(ShimError::NotFound(_)) => {}
            Err(e) => return Err(e.into()),
        }
        // SIGKILL cannot be ignored; the bound is for a wedged shim.
        if tokio::time::timeout(Duration::from_secs(30), exited.wait_for(|e| *e))
            .await
            .is_err()
        {
            return Err(Error::Internal(format!(
                "container {} did not exit after SIGKILL",
                rec.id
            )));
        }
        Ok(())
    }

    /// RemoveContainer: in any state (a running one is killed first); unknown is success.
    pub async fn remove(&self, id: &str) -> Result<()> {
        let Some(full) = self.inner.resolve(id)? else {
            return Ok(());
        };
        self.stop(&full, Duration::ZERO).await?;
        let Some(rec) = self.inner.lock().get(&full).cloned() else {
            return Ok(());
        };
        let timer = super::metrics::OpTimer::new("remove");
        let t0 = std::time::Instant::now();
        let deleted = match self.inner.pods.get(&rec.pod_id) {
            Ok(pod) => match self.inner.shim(&pod).await {
                Ok(shim) => match shim.delete(&rec.id, "").await {
                    Ok(_) | Err(ShimError::NotFound(_)) => true,
                    Err(e) => {
                        tracing::warn!(container = %rec.id, error = %e, "deleting task in the shim");
                        false
                    }
                },
                Err(_) => false,
            },
            Err(_) => false,
        };
        if !deleted && rec.state != ContainerState::Created {
            // The shim is gone (killed, or its pod removed behind our back):
            // the container may still run, orphaned. runc itself ends it.
            self.inner.force_delete(&rec).await;
        }
        // runc removes the container's cgroups only when it deletes the
        // container itself; after a lost shim, or in hierarchies it does not
        // manage (name=systemd, a hybrid v2 mount), they are crust's to remove.
        let t_task = t0.elapsed();
        if !rec.cgroups_path.contains(':') {
            // It may wait a little for a busy cgroup: off the async workers.
            let path = rec.cgroups_path.clone();
            let _ =
                tokio::task::spawn_blocking(move || crate::cgroup::remove_everywhere(&path)).await;
        }
        let t_cgroups = t0.elapsed();
        release_rootfs(
            self.inner.rootfs.as_ref(),
            &rec.id,
            &rec.bundle.join("rootfs"),
        )?;
        let t_rootfs = t0.elapsed();
        match std::fs::remove_dir_all(&rec.bundle) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
        let t_bundle = t0.elapsed();
        {
            // Under the records lock, as every write: a late update cannot
            // write the record back into the store.
            let mut records = self.inner.lock();
            self.inner.store.delete(&rec.id)?;
            records.remove(&rec.id);
        }
        self.inner.emit(&rec, ContainerEventKind::Deleted);
        self.inner
            .cpu_samples
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&rec.id);
        self.inner.exits_lock().remove(&rec.id);
        self.inner.update_metrics();
        drop(timer);
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        tracing::debug!(
            container = %rec.id,
            task_ms = ms(t_task),
            cgroups_ms = ms(t_cgroups),
            rootfs_ms = ms(t_rootfs),
            bundle_ms = ms(t_bundle),
            total_ms = ms(t0.elapsed()),
            "removed"
        );
        Ok(())
    }

    pub fn list(&self, f: &ContainerFilter) -> Result<Vec<ContainerRecord>> {
        let id = if f.id.is_empty() {
            None
        } else {
            match self.inner.resolve(&f.id) {
                Ok(Some(id)) => Some(id),
                // An id that matches nothing (or too much) filters everything out.
                _ => return Ok(Vec::new()),
            }
        };
        let pod_id = if f.pod_id.is_empty() {
            None
        } else {
            match self.inner.pods.get(&f.pod_id) {
                Ok(p) => Some(p.id),
                Err(_) => return Ok(Vec::new()),
            }
        };
        let mut out: Vec<ContainerRecord> = self
            .inner
            .lock()
            .values()
            .filter(|r| id.as_ref().is_none_or(|i| &r.id == i))
            .filter(|r| pod_id.as_ref().is_none_or(|p| &r.pod_id == p))
            .filter(|r| f.state.is_none_or(|s| r.state == s))
            .filter(|r| {
                f.labels
                    .iter()
                    .all(|(k, v)| r.config.labels.get(k) == Some(v))
            })
            .cloned()
            .collect();
        out.sort_by_key(|r| r.created_at_ns);
        Ok(out)
    }

    /// Every container event from now on (GetContainerEvents).
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<ContainerEvent> {
        self.inner.events.subscribe()
    }

    /// Usage of the containers the filter selects (ContainerStats, ListContainerStats).
    pub async fn stats(&self, f: &ContainerFilter) -> Result<Vec<ContainerUsage>> {
        let records = self.list(f)?;
        let inner = self.inner.clone();
        // Cgroup files and the walk of writable layers: blocking file work,
        // off the async workers.
        tokio::task::spawn_blocking(move || {
            let now = now_ns();
            records
                .into_iter()
                .map(|record| ContainerUsage {
                    cgroup: (record.state == ContainerState::Running)
                        .then(|| inner.cgroup_usage(&record.id, &record.cgroups_path, now))
                        .flatten(),
                    writable: inner.rootfs.usage(&record.id),
                    record,
                })
                .collect()
        })
        .await
        .map_err(|e| Error::Internal(format!("stats task: {e}")))
    }

    /// Usage of a pod's own cgroup (PodSandboxStats), when it has one.
    pub fn pod_usage(&self, pod: &PodRecord) -> Option<CgroupUsage> {
        let cg = pod.cgroup.as_ref()?;
        self.inner
            .cgroup_usage(&format!("pod:{}", pod.id), &cg.path, now_ns())
    }

    /// Drops the cached connection to a removed pod's shim.
    pub async fn forget_pod(&self, pod_id: &str) {
        self.inner.shims.lock().await.remove(pod_id);
    }

    /// Ids of every container of a pod (StopPodSandbox, RemovePodSandbox).
    pub fn of_pod(&self, pod_id: &str) -> Vec<String> {
        self.inner
            .lock()
            .values()
            .filter(|r| r.pod_id == pod_id)
            .map(|r| r.id.clone())
            .collect()
    }

    /// The OCI spec the container was created with.
    pub fn oci_spec(&self, id: &str) -> Result<serde_json::Value> {
        let rec = self.get(id)?;
        let text = std::fs::read(rec.bundle.join("config.json"))?;
        serde_json::from_slice(&text).map_err(|e| Error::Internal(e.to_string()))
    }

    /// ExecSync: runs `cmd` in the container, with its user, env and working
    /// dir; kills it after `timeout` (zero: no timeout).
    pub async fn exec_sync(
        &self,
        id: &str,
        cmd: Vec<String>,
        timeout: Duration,
    ) -> Result<ExecOutput> {
        if cmd.is_empty() {
            return Err(Error::InvalidArgument("exec command is empty".into()));
        }
        let (rec, shim) = self.running(id).await?;
        let this = self.clone();
        // The exec runs in a task of its own, so that a caller going away (its
        // deadline passed, its connection closed: this future is dropped) still
        // has it cleaned up: dropping `_abandon` closes `abandoned`, and the task
        // kills the process as when its own timeout passes, then removes its
        // task in the shim and its FIFOs.
        let (_abandon, abandoned) = oneshot::channel::<()>();
        tokio::spawn(async move { this.exec_in(rec, shim, cmd, timeout, abandoned).await })
            .await
            .map_err(|e| Error::Internal(format!("exec task: {e}")))?
    }

    async fn exec_in(
        &self,
        rec: ContainerRecord,
        shim: ShimClient,
        cmd: Vec<String>,
        timeout: Duration,
        abandoned: oneshot::Receiver<()>,
    ) -> Result<ExecOutput> {
        let mut process = self.oci_spec(&rec.id)?["process"].take();
        process["args"] = serde_json::json!(cmd);
        process["terminal"] = serde_json::json!(false);
        let exec_id = new_id()?[..16].to_string();
        let dir = rec.bundle.join("exec");
        crust_state::private::create_dir(&dir).map_err(|e| Error::write("create", &dir, e))?;
        let out_path = dir.join(format!("{exec_id}.out"));
        let err_path = dir.join(format!("{exec_id}.err"));
        let (done_tx, done_rx) = watch::channel(false);
        let mut readers = Vec::new();
        for p in [&out_path, &err_path] {
            nix::unistd::mkfifo(p.as_path(), nix::sys::stat::Mode::from_bits_truncate(0o600))
                .map_err(|e| Error::Internal(format!("mkfifo {}: {e}", p.display())))?;
            // Opened read-write, so the open never waits for a writer and the
            // reader never sees an end of file: it stops when told the process exited.
            let rx = tokio::net::unix::pipe::OpenOptions::new()
                .read_write(true)
                .open_receiver(p)?;
            readers.push(tokio::spawn(collect_output(rx, done_rx.clone())));
        }
        let io = TaskIo {
            stdin: None,
            output: Output::Paths {
                stdout: Some(out_path.clone()),
                stderr: Some(err_path.clone()),
            },
            terminal: false,
        };
        let run = async {
            shim.exec(&rec.id, &exec_id, &process, &io).await?;
            shim.start(&rec.id, &exec_id).await?;
            let wait = shim.wait(&rec.id, &exec_id);
            let expiry = async {
                if timeout.is_zero() {
                    std::future::pending().await
                } else {
                    tokio::time::sleep(timeout).await
                }
            };
            tokio::select! {
                r = wait => Ok::<_, ShimError>(Ok(r?)),
                _ = expiry => Ok(Err(Ended::TimedOut)),
                // Resolves with an error once the caller's future is dropped.
                _ = abandoned => Ok(Err(Ended::Abandoned)),
            }
        }
        .await;
        let result = match run {
            Ok(Ok(exit)) => Ok(exit.exit_status as i32),
            Ok(Err(ended)) => {
                let _ = shim
                    .kill(&rec.id, &exec_id, libc::SIGKILL as u32, false)
                    .await;
                let _ = shim.wait(&rec.id, &exec_id).await;
                Err(match ended {
                    Ended::TimedOut => Error::DeadlineExceeded(format!(
                        "command {cmd:?} timed out after {timeout:?}"
                    )),
                    Ended::Abandoned => {
                        tracing::info!(container = %rec.id, exec = %exec_id, "exec killed: its caller went away");
                        Error::DeadlineExceeded(format!("command {cmd:?}: the caller went away"))
                    }
                })
            }
            Err(e) => Err(Error::from(e)),
        };
        let _ = shim.delete(&rec.id, &exec_id).await;
        let _ = done_tx.send(true);
        let mut outputs = Vec::new();
        for r in readers {
            outputs.push(r.await.unwrap_or_default());
        }
        let _ = std::fs::remove_file(&out_path);
        let _ = std::fs::remove_file(&err_path);
        let exit_code = result?;
        let stderr = outputs.pop().unwrap_or_default();
        let stdout = outputs.pop().unwrap_or_default();
        Ok(ExecOutput {
            stdout,
            stderr,
            exit_code,
        })
    }

    /// UpdateContainerResources on a running or created container.
    pub async fn update_resources(
        &self,
        id: &str,
        resources: &k8s_cri::v1::LinuxContainerResources,
    ) -> Result<()> {
        let rec = self.get(id)?;
        if !matches!(rec.state, ContainerState::Running | ContainerState::Created) {
            return Err(Error::FailedPrecondition(format!(
                "container {} is not running",
                rec.id
            )));
        }
        let mut config = rec.config.clone();
        let linux = config.linux.get_or_insert_with(Default::default);
        // kubelet may send only what changes (the CPU manager sends a cpuset
        // alone): what it leaves unset keeps its value.
        let merged = merge_resources(linux.resources.take().unwrap_or_default(), resources);
        linux.resources = Some(merged);
        let r = spec::resources_json(linux).map_err(Error::from)?;
        if rec.state == ContainerState::Running {
            let pod = self.inner.pods.get(&rec.pod_id)?;
            let shim = self.inner.shim(&pod).await?;
            shim.update(&rec.id, &r).await?;
        }
        // Keep the bundle and the record in step with what was applied; the
        // device rules in config.json stay as they are.
        let mut oci = self.oci_spec(&rec.id)?;
        if let (Some(target), Some(new)) =
            (oci["linux"]["resources"].as_object_mut(), r.as_object())
        {
            for (k, v) in new {
                if k != "devices" {
                    target.insert(k.clone(), v.clone());
                }
            }
        }
        let text = serde_json::to_vec_pretty(&oci).map_err(|e| Error::Internal(e.to_string()))?;
        let spec_path = rec.bundle.join("config.json");
        crust_state::private::write_file(&spec_path, &text)
            .map_err(|e| Error::write("write", &spec_path, e))?;
        self.inner.update(&rec.id, |r| r.config = config)?;
        Ok(())
    }

    /// ReopenContainerLog: only for a running container.
    pub async fn reopen_log(&self, id: &str) -> Result<()> {
        let (rec, shim) = self.running(id).await?;
        shim.reopen_log(&rec.id).await?;
        Ok(())
    }

    /// A running container and its pod's shim; FailedPrecondition when not running.
    pub(crate) async fn running(&self, id: &str) -> Result<(ContainerRecord, ShimClient)> {
        let rec = self.get(id)?;
        if rec.state != ContainerState::Running {
            return Err(Error::FailedPrecondition(format!(
                "container {} is not running",
                rec.id
            )));
        }
        let pod = self.inner.pods.get(&rec.pod_id)?;
        let shim = self.inner.shim(&pod).await?;
        Ok((rec, shim))
    }
}

/// `new` over `old`: every field `new` sets (non-zero, non-empty) replaces
/// the old value, the rest is kept.
fn merge_resources(
    mut old: k8s_cri::v1::LinuxContainerResources,
    new: &k8s_cri::v1::LinuxContainerResources,
) -> k8s_cri::v1::LinuxContainerResources {
    if new.cpu_period != 0 {
        old.cpu_period = new.cpu_period;
    }
    if new.cpu_quota != 0 {
        old.cpu_quota = new.cpu_quota;
    }
    if new.cpu_shares != 0 {
        old.cpu_shares = new.cpu_shares;
    }
    if new.memory_limit_in_bytes != 0 {
        old.memory_limit_in_bytes = new.memory_limit_in_bytes;
    }
    if new.memory_swap_limit_in_bytes != 0 {
        old.memory_swap_limit_in_bytes = new.memory_swap_limit_in_bytes;
    }
    if new.oom_score_adj != 0 {
        old.oom_score_adj = new.oom_score_adj;
    }
    if !new.cpuset_cpus.is_empty() {
        old.cpuset_cpus = new.cpuset_cpus.clone();
    }
    if !new.cpuset_mems.is_empty() {
        old.cpuset_mems = new.cpuset_mems.clone();
    }
    // Per page size: runc update changes the sizes it is given and leaves the
    // others' cgroup limits as they were, and so does the record.
    for h in &new.hugepage_limits {
        match old
            .hugepage_limits
            .iter_mut()
            .find(|o| o.page_size == h.page_size)
        {
            Some(o) => o.limit = h.limit,
            None => old.hugepage_limits.push(h.clone()),
        }
    }
    old.unified
        .extend(new.unified.iter().map(|(k, v)| (k.clone(), v.clone())));
    old
}

/// Why an exec was killed before it exited.
enum Ended {
    /// Its own `timeout` passed.
    TimedOut,
    /// The ExecSync call was dropped.
    Abandoned,
}

/// Reads an exec's output FIFO, keeping the first [`EXEC_OUTPUT_CAP`] bytes
/// and reading (and dropping) the rest so the process never blocks on a full
/// pipe. Once `done` says the process exited, what is left in the pipe is
/// taken and the reader stops, even if a child the command left behind still
/// holds the pipe open.
async fn collect_output(
    rx: tokio::net::unix::pipe::Receiver,
    mut done: watch::Receiver<bool>,
) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let keep = |out: &mut Vec<u8>, bytes: &[u8]| {
        let room = EXEC_OUTPUT_CAP.saturating_sub(out.len());
        out.extend_from_slice(&bytes[..bytes.len().min(room)]);
    };
    loop {
        tokio::select! {
            biased;
            ready = rx.readable() => {
                if ready.is_err() {
                    break;
                }
                match rx.try_read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => keep(&mut out, &buf[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(_) => break,
                }
            }
            _ = done.wait_for(|d| *d) => {
                while let Ok(n) = rx.try_read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    keep(&mut out, &buf[..n]);
                }
                break;
            }
        }
    }
    out
}

/// `SIGTERM`, `TERM`, `15` → the signal number.
pub fn parse_signal(s: &str) -> Option<i32> {
    if let Ok(n) = s.parse::<i32>() {
        return (1..=64).contains(&n).then_some(n);
    }
    let name = s.to_uppercase();
    let name = name.strip_prefix("SIG").unwrap_or(&name);
    let sig: nix::sys::signal::Signal = format!("SIG{name}").parse().ok()?;
    Some(sig as i32)
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, ContainerRecord>> {
        self.records.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn exits_lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, watch::Sender<bool>>> {
        self.exits.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn resolve(&self, id: &str) -> Result<Option<String>> {
        if id.is_empty() {
            return Err(Error::InvalidArgument("container id is empty".into()));
        }
        let records = self.lock();
        if records.contains_key(id) {
            return Ok(Some(id.to_string()));
        }
        let mut matches = records.keys().filter(|k| k.starts_with(id));
        match (matches.next(), matches.next()) {
            (Some(one), None) => Ok(Some(one.clone())),
            (None, _) => Ok(None),
            (Some(_), Some(_)) => Err(Error::InvalidArgument(format!(
                "container id prefix {id:?} is ambiguous"
            ))),
        }
    }

    fn names(&self) -> std::sync::MutexGuard<'_, Names> {
        self.names.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes a container name for a new create, or finds the create (running,
    /// or finished for a caller that left) that this identical request retries.
    fn reserve(&self, key: &str, request: &str) -> Result<Reserved> {
        let mut names = self.names();
        if let Some(c) = names.creating.get(key) {
            if c.request == request {
                return Ok(Reserved::Wait(c.done.clone()));
            }
            return Err(Error::AlreadyExists(format!(
                "container name {key:?} is reserved for {}",
                c.id
            )));
        }
        if let Some(holder) = self.lock().values().find(|r| r.name_key() == key) {
            // kubelet retries a create it gave up on with the same request:
            // while the container it made is untouched, that retry gets it.
            if holder.state == ContainerState::Created && request_key(holder) == request {
                return Ok(Reserved::Made(holder.id.clone()));
            }
            return Err(Error::AlreadyExists(format!(
                "container name {key:?} is already used by {}",
                holder.id
            )));
        }
        let id = new_id()?;
        let (tx, rx) = watch::channel(None);
        names.creating.insert(
            key.to_string(),
            Creating {
                id: id.clone(),
                request: request.to_string(),
                done: rx,
            },
        );
        Ok(Reserved::Fresh(id, tx))
    }

    async fn create(
        &self,
        id: &str,
        pod: &PodRecord,
        config: ContainerConfig,
        image: ImageInfo,
    ) -> Result<String> {
        let bundle = self.cfg.state_dir.join("containers").join(id);
        let rootfs = bundle.join("rootfs");
        let t0 = std::time::Instant::now();
        let mut t_made = Duration::ZERO;
        // Owner-only from `containers/` down: the bundle holds the env (config.json) and
        // the way into the container's files.
        let made = crust_state::private::create_dir(&rootfs)
            .map_err(|e| Error::write("create", &rootfs, e))
            .and_then(|()| self.create_in(id, pod, config, image, &bundle, &rootfs))
            .and_then(|rec| {
                t_made = t0.elapsed();
                let mut records = self.lock();
                self.store.put(&rec)?;
                records.insert(rec.id.clone(), rec.clone());
                Ok(rec)
            });
        match made {
            Ok(rec) => {
                tracing::debug!(
                    container = id,
                    bundle_ms = t_made.as_secs_f64() * 1e3,
                    record_ms = (t0.elapsed() - t_made).as_secs_f64() * 1e3,
                    "created"
                );
                self.emit(&rec, ContainerEventKind::Created);
                self.update_metrics();
                Ok(id.to_string())
            }
            Err(e) => {
                match release_rootfs(self.rootfs.as_ref(), id, &rootfs) {
                    // A mount left in the bundle: deleting through it would delete its files.
                    Err(u) => tracing::error!(container = id, error = %u, "undoing rootfs"),
                    Ok(()) => {
                        let _ = std::fs::remove_dir_all(&bundle);
                    }
                }
                Err(e)
            }
        }
    }

    fn create_in(
        &self,
        id: &str,
        pod: &PodRecord,
        config: ContainerConfig,
        image: ImageInfo,
        bundle: &Path,
        rootfs: &Path,
    ) -> Result<ContainerRecord> {
        super::userns::check_mounts(&config, pod)?;
        let userns = super::userns::PodUserns::of(pod);
        match &userns {
            Some(u) => {
                let (rootfs_impl, dir) = (self.rootfs.as_ref(), &self.cfg.state_dir);
                super::userns::mount_rootfs(rootfs_impl, dir, id, &image.id, rootfs, u)?
            }
            None => self.rootfs.mount(id, &image.id, rootfs)?,
        }
        let handler = self
            .pods
            .config()
            .handler(&pod.runtime_handler)
            .ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "runtime handler {:?} is not configured",
                    pod.runtime_handler
                ))
            })?;
        let runtime_binary = crate::resolve_binary(handler.1.oci_runtime())
            .ok_or_else(|| {
                Error::FailedPrecondition(format!(
                    "runtime binary {} not found",
                    handler.1.oci_runtime().display()
                ))
            })?
            .display()
            .to_string();
        let cgroups_path = match &pod.cgroup {
            // runc's systemd form: the pod's slice, a prefix, the container's name.
            Some(cg) if self.cfg.systemd_cgroup => {
                format!("{}:crust:{id}", cg.slice().unwrap_or("system.slice"))
            }
            Some(cg) => format!("{}/{id}", cg.path.trim_end_matches('/')),
            None => format!("/crust/{id}"),
        };
        let pid_ns = self.pid_namespace(pod, &config)?;
        let ctx = PodContext {
            pod_id: pod.id.clone(),
            hostname: pod.hostname.clone(),
            net_ns: pod.namespaces.net.clone(),
            ipc_ns: pod.namespaces.ipc.clone(),
            uts_ns: pod.namespaces.uts.clone(),
            pid_ns,
            hosts_file: Some(pod.hosts_path.clone()).filter(|p| !p.as_os_str().is_empty()),
            resolv_conf: Some(pod.resolv_conf_path.clone()).filter(|p| !p.as_os_str().is_empty()),
            hostname_file: Some(pod.hostname_path.clone()).filter(|p| !p.as_os_str().is_empty()),
            shm: pod.shm.clone(),
            cgroups_path: cgroups_path.clone(),
        };
        let mut built = spec::build(&config, image.config.as_ref(), rootfs, &ctx, &self.node)?;
        if let Some(u) = &userns {
            let dir = &self.cfg.state_dir;
            super::userns::adapt_spec(&mut built.spec, &config, pod, u, dir, bundle)?;
        }
        let profile = built
            .spec
            .process()
            .as_ref()
            .and_then(|p| p.apparmor_profile().clone());
        if profile.as_deref() == Some(super::apparmor::DEFAULT_PROFILE) {
            super::apparmor::ensure_default().map_err(|e| {
                Error::FailedPrecondition(format!(
                    "AppArmor profile {}: {e}",
                    super::apparmor::DEFAULT_PROFILE
                ))
            })?;
        }
        let text = serde_json::to_vec_pretty(&built.spec)
            .map_err(|e| Error::Internal(format!("serializing the OCI spec: {e}")))?;
        let spec_path = bundle.join("config.json");
        crust_state::private::write_file(&spec_path, &text)
            .map_err(|e| Error::write("write", &spec_path, e))?;

        let log_path = if pod.spec.log_directory.is_empty() || config.log_path.is_empty() {
            None
        } else {
            let p = Path::new(&pod.spec.log_directory).join(&config.log_path);
            if let Some(parent) = p.parent() {
                std::fs::create_dir_all(parent)?;
            }
            Some(p)
        };
        Ok(ContainerRecord {
            version: RECORD_VERSION,
            id: id.to_string(),
            pod_id: pod.id.clone(),
            config,
            image: image.name,
            image_ref: image.id,
            state: ContainerState::Created,
            created_at_ns: now_ns(),
            started_at_ns: 0,
            finished_at_ns: 0,
            exit_code: 0,
            reason: String::new(),
            message: String::new(),
            pid: 0,
            bundle: bundle.to_path_buf(),
            log_path,
            stop_signal: built.stop_signal,
            cgroups_path,
            runtime_binary,
            runtime_root: Some(self.runtime_root(pod)),
        })
    }

    /// Removes what a create cut short by a crash left without a record: a
    /// bundle directory, a mounted rootfs, a writable snapshot. Runs at open,
    /// before any create can be in flight.
    fn remove_orphans(&self) {
        // Every id the store holds, also a record it could not read: such a
        // container may well be running on its rootfs.
        let mut known: HashSet<String> = self.lock().keys().cloned().collect();
        match self.store.ids() {
            Ok(ids) => known.extend(ids),
            Err(e) => {
                tracing::warn!(error = %e, "listing container records; no orphan removed");
                return;
            }
        }
        let dir = self.cfg.state_dir.join("containers");
        let mut orphans: HashSet<String> = std::fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        match self.rootfs.keys() {
            Ok(keys) => orphans.extend(keys),
            Err(e) => tracing::warn!(error = %e, "listing container snapshots"),
        }
        for id in orphans.difference(&known) {
            let bundle = dir.join(id);
            match release_rootfs(self.rootfs.as_ref(), id, &bundle.join("rootfs")) {
                Ok(()) => match std::fs::remove_dir_all(&bundle) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        tracing::warn!(container = %id, error = %e, "removing an orphan bundle")
                    }
                    _ => tracing::info!(container = %id, "removed what a cut-short create left"),
                },
                Err(e) => tracing::warn!(container = %id, error = %e, "releasing an orphan rootfs"),
            }
        }
    }

    /// The container's PID namespace: its own mode, else the pod's.
    fn pid_namespace(&self, pod: &PodRecord, config: &ContainerConfig) -> Result<PidNamespace> {
        let opts = config
            .linux
            .as_ref()
            .and_then(|l| l.security_context.as_ref())
            .and_then(|s| s.namespace_options.as_ref());
        let mode = match opts.map(|o| o.pid) {
            Some(m) if m == k8s_cri::v1::NamespaceMode::Pod as i32 => NamespaceMode::Pod,
            Some(m) if m == k8s_cri::v1::NamespaceMode::Node as i32 => NamespaceMode::Node,
            Some(m) if m == k8s_cri::v1::NamespaceMode::Target as i32 => NamespaceMode::Target,
            Some(_) => NamespaceMode::Container,
            None => pod.spec.namespaces.pid,
        };
        Ok(match mode {
            NamespaceMode::Node => PidNamespace::Node,
            NamespaceMode::Pod => match &pod.namespaces.pid {
                Some(p) => PidNamespace::Pod(p.clone()),
                None => PidNamespace::Container,
            },
            NamespaceMode::Target => {
                let target = opts.map(|o| o.target_id.clone()).unwrap_or_default();
                let target = self
                    .resolve(&target)?
                    .and_then(|t| self.lock().get(&t).cloned())
                    .ok_or_else(|| {
                        Error::NotFound(format!("target container {target:?} not found"))
                    })?;
                if target.pod_id != pod.id {
                    return Err(Error::InvalidArgument(format!(
                        "target container {} is not in pod {}",
                        target.id, pod.id
                    )));
                }
                if target.state != ContainerState::Running || target.pid == 0 {
                    return Err(Error::FailedPrecondition(format!(
                        "target container {} is not running",
                        target.id
                    )));
                }
                PidNamespace::Target(PathBuf::from(format!("/proc/{}/ns/pid", target.pid)))
            }
            NamespaceMode::Container => PidNamespace::Container,
        })
    }

    /// The pod's shim, connected once and kept.
    async fn shim(&self, pod: &PodRecord) -> Result<ShimClient> {
        let mut shims = self.shims.lock().await;
        if let Some(s) = shims.get(&pod.id) {
            return Ok(s.clone());
        }
        let s = ShimClient::reconnect(&pod.dir).await.map_err(|e| {
            Error::FailedPrecondition(format!("shim of pod {} is not reachable: {e}", pod.id))
        })?;
        shims.insert(pod.id.clone(), s.clone());
        Ok(s)
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

    /// Reads a cgroup and works out its CPU rate from the previous sample.
    fn cgroup_usage(&self, key: &str, cgroups_path: &str, now: i64) -> Option<CgroupUsage> {
        let path = cgroupfs_path(cgroups_path)?;
        let mut u = read_cgroup(Path::new(CGROUP_ROOT), &path, now);
        if let Some(cpu) = u.cpu_usage_ns {
            let mut samples = self.cpu_samples.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(prev) = samples.insert(key.to_string(), (now, cpu)) {
                u.cpu_nano_cores = nano_cores(prev, (now, cpu));
            }
        }
        Some(u)
    }

    fn exit_receiver(&self, id: &str) -> watch::Receiver<bool> {
        let mut exits = self.exits_lock();
        exits
            .entry(id.to_string())
            .or_insert_with(|| watch::channel(false).0)
            .subscribe()
    }

    fn update(&self, id: &str, f: impl FnOnce(&mut ContainerRecord)) -> Result<ContainerRecord> {
        let updated = {
            // The store is written under the records lock: two updates of a
            // record reach it in the order they were made, and none after a
            // remove.
            let mut records = self.lock();
            let rec = records
                .get_mut(id)
                .ok_or_else(|| Error::NotFound(format!("container {id} not found")))?;
            // Memory follows what happened even when the store cannot (a full
            // disk): an exit must not be lost until the next restart.
            f(rec);
            self.store.put(rec)?;
            rec.clone()
        };
        self.update_metrics();
        Ok(updated)
    }

    fn mark_unknown(&self, id: &str, why: &str) {
        let _ = self.update(id, |r| {
            if r.state == ContainerState::Running {
                r.state = ContainerState::Unknown;
                r.message = why.to_string();
            }
        });
        if let Some(tx) = self.exits_lock().get(id) {
            let _ = tx.send(true);
        }
    }

    /// Waits for the container's exit in the background and records it.
    fn watch_exit(self: Arc<Self>, id: String) {
        // Arm the channel now so a stop that starts right away sees the exit.
        drop(self.exit_receiver(&id));
        tokio::spawn(async move {
            let Some((pod_id, bundle, log_path)) = self
                .lock()
                .get(&id)
                .map(|r| (r.pod_id.clone(), r.bundle.clone(), r.log_path.clone()))
            else {
                return;
            };
            let pod = match self.pods.get(&pod_id) {
                Ok(p) => p,
                Err(e) => return self.mark_unknown(&id, &format!("pod is gone: {e}")),
            };
            let shim = match self.shim(&pod).await {
                Ok(shim) => shim,
                Err(e) => return self.mark_unknown(&id, &e.to_string()),
            };
            // After a restart, output crustd copies for the shim flows again.
            shim.follow_output(&id, &bundle, log_path.as_deref());
            match shim.wait(&id, "").await {
                Ok(exit) => {
                    self.record_exit(&id, exit.exit_status as i32, exit.exited_at);
                    // As containerd does: once the exit is recorded the task
                    // goes from the shim (runc delete), so RemoveContainer
                    // has only crust's own parts left to remove.
                    match shim.delete(&id, "").await {
                        Ok(_) | Err(ShimError::NotFound(_)) => {}
                        Err(e) => {
                            tracing::debug!(container = %id, error = %e, "deleting the exited task")
                        }
                    }
                }
                Err(ShimError::NotFound(_)) => {
                    // The shim does not know the container: it was restarted
                    // or the container was deleted behind crust's back.
                    self.record_exit(&id, 255, None);
                    let _ = self.update(&id, |r| r.reason = "Unknown".into());
                }
                Err(e) => {
                    self.shims.lock().await.remove(&pod_id);
                    self.mark_unknown(&id, &format!("shim lost: {e}"));
                }
            }
        });
    }

    fn record_exit(&self, id: &str, code: i32, at: Option<SystemTime>) {
        let oom = self
            .lock()
            .get(id)
            .is_some_and(|r| oom_killed(&r.cgroups_path));
        let updated = self.update(id, |r| {
            r.state = ContainerState::Exited;
            r.exit_code = code;
            r.finished_at_ns = to_ns(at).max(r.started_at_ns);
            r.pid = 0;
            r.reason = if oom {
                "OOMKilled".into()
            } else if code == 0 {
                "Completed".into()
            } else {
                "Error".into()
            };
        });
        if let Ok(rec) = &updated {
            super::metrics::container_exited(oom);
            self.emit(rec, ContainerEventKind::Stopped);
        }
        if let Some(tx) = self.exits_lock().get(id) {
            let _ = tx.send(true);
        }
    }

    /// The state root of the runtime the pod's shim drives (`runc --root`).
    fn runtime_root(&self, pod: &PodRecord) -> PathBuf {
        crate::shim::ShimFlavour::of_pod_dir(&pod.dir)
            .runc_root(&self.cfg.state_dir.join("runc"), crate::pod::SHIM_NAMESPACE)
    }

    /// `runc delete --force` with the container's runtime and state root: kills
    /// whatever is left of a container whose shim is gone.
    async fn force_delete(&self, rec: &ContainerRecord) {
        let root = match &rec.runtime_root {
            Some(root) => root.clone(),
            // Records made before the root was kept: from the pod, while it is there.
            None => match self.pods.get(&rec.pod_id) {
                Ok(pod) => self.runtime_root(&pod),
                Err(_) => self.cfg.state_dir.join("runc"),
            },
        };
        let out = tokio::process::Command::new(&rec.runtime_binary)
            .arg("--root")
            .arg(root)
            .args(["delete", "--force", &rec.id])
            .output()
            .await;
        match out {
            Ok(o) if o.status.success() => {
                tracing::info!(container = %rec.id, "deleted with runc; its shim was gone")
            }
            Ok(o) => tracing::debug!(
                container = %rec.id,
                stderr = %String::from_utf8_lossy(&o.stderr).trim(),
                "runc delete --force"
            ),
            Err(e) => tracing::warn!(container = %rec.id, error = %e, "running runc delete"),
        }
    }

    fn update_metrics(&self) {
        let mut counts = [0i64; 4];
        for r in self.lock().values() {
            counts[r.state as usize] += 1;
        }
        super::metrics::set_containers(&[
            ("created", counts[ContainerState::Created as usize]),
            ("running", counts[ContainerState::Running as usize]),
            ("exited", counts[ContainerState::Exited as usize]),
            ("unknown", counts[ContainerState::Unknown as usize]),
        ]);
    }
}

/// Whether the kernel OOM-killed a process in this cgroup (v1 `memory.oom_control`
/// or v2 `memory.events`).
/// A container's cgroup as a path below each hierarchy's mount: the path
/// itself, or for runc's systemd form `slice:prefix:name` the scope runc has
/// systemd make, `<expanded slice>/<prefix>-<name>.scope`. None if malformed.
fn cgroupfs_path(cgroups_path: &str) -> Option<String> {
    let mut parts = cgroups_path.split(':');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(path), None, None, None) => Some(path.to_string()),
        (Some(slice), Some(prefix), Some(name), None) => {
            let slice = if slice.is_empty() {
                "system.slice"
            } else {
                slice
            };
            let dir = crate::cgroup::expand_slice(slice).ok()?;
            Some(format!(
                "{}/{prefix}-{name}.scope",
                dir.trim_end_matches('/')
            ))
        }
        _ => None,
    }
}

fn oom_killed(cgroups_path: &str) -> bool {
    let Some(path) = cgroupfs_path(cgroups_path) else {
        return false;
    };
    let rel = path.trim_start_matches('/');
    let count = |path: PathBuf, key: &str| {
        std::fs::read_to_string(path).ok().and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.trim().parse::<u64>().ok())
        })
    };
    let v1 = count(
        Path::new("/sys/fs/cgroup/memory")
            .join(rel)
            .join("memory.oom_control"),
        "oom_kill ",
    );
    let v2 = count(
        Path::new("/sys/fs/cgroup").join(rel).join("memory.events"),
        "oom_kill ",
    );
    v1.or(v2).is_some_and(|n| n > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_updates_keep_what_they_do_not_set() {
        let old = k8s_cri::v1::LinuxContainerResources {
            cpu_shares: 512,
            memory_limit_in_bytes: 64 << 20,
            cpuset_cpus: "0".into(),
            ..Default::default()
        };
        let new = k8s_cri::v1::LinuxContainerResources {
            cpuset_cpus: "1".into(),
            ..Default::default()
        };
        let m = merge_resources(old, &new);
        assert_eq!(m.cpu_shares, 512);
        assert_eq!(m.memory_limit_in_bytes, 64 << 20);
        assert_eq!(m.cpuset_cpus, "1");
    }

    #[test]
    fn resource_updates_merge_hugepage_limits_by_page_size() {
        use k8s_cri::v1::{HugepageLimit, LinuxContainerConfig, LinuxContainerResources};
        let hp = |page_size: &str, limit: u64| HugepageLimit {
            page_size: page_size.into(),
            limit,
        };
        let old = LinuxContainerResources {
            memory_limit_in_bytes: 64 << 20,
            hugepage_limits: vec![hp("2MB", 4 << 20), hp("1GB", 1 << 30)],
            ..Default::default()
        };
        // An update without hugepages (the CPU manager's cpuset) keeps them.
        let kept = merge_resources(
            old.clone(),
            &LinuxContainerResources {
                cpuset_cpus: "1".into(),
                ..Default::default()
            },
        );
        assert_eq!(kept.hugepage_limits, old.hugepage_limits);
        assert_eq!(kept.cpuset_cpus, "1");
        // An update with hugepages changes the sizes it names, keeps the others
        // (as runc update leaves their cgroup limits), adds new ones, and keeps
        // what it does not set.
        let m = merge_resources(
            old.clone(),
            &LinuxContainerResources {
                hugepage_limits: vec![hp("2MB", 8 << 20), hp("16KB", 0)],
                ..Default::default()
            },
        );
        assert_eq!(
            m.hugepage_limits,
            [hp("2MB", 8 << 20), hp("1GB", 1 << 30), hp("16KB", 0)]
        );
        assert_eq!(m.memory_limit_in_bytes, 64 << 20);
        // And runc is handed the merged limits.
        let r = spec::resources_json(&LinuxContainerConfig {
            resources: Some(m),
            ..Default::default()
        })
        .expect("resources");
        assert_eq!(
            r["hugepageLimits"],
            serde_json::json!([
                {"pageSize": "2MB", "limit": 8 << 20},
                {"pageSize": "1GB", "limit": 1u64 << 30},
                {"pageSize": "16KB", "limit": 0},
            ])
        );
        assert_eq!(r["memory"]["limit"], 64 << 20);
    }

    #[test]
    fn systemd_cgroups_paths_map_to_their_scope() {
        assert_eq!(
            cgroupfs_path("/crust/pod/c1").as_deref(),
            Some("/crust/pod/c1")
        );
        assert_eq!(
            cgroupfs_path("kubepods-pod1-crustp.slice:crust:c1").as_deref(),
            Some("/kubepods.slice/kubepods-pod1.slice/kubepods-pod1-crustp.slice/crust-c1.scope")
        );
        assert_eq!(
            cgroupfs_path(":crust:c1").as_deref(),
            Some("/system.slice/crust-c1.scope")
        );
        assert_eq!(cgroupfs_path("a:b"), None);
        assert_eq!(cgroupfs_path("bad:crust:c1"), None);
    }

    #[test]
    fn signals_parse_by_name_and_number() {
        assert_eq!(parse_signal("SIGTERM"), Some(libc::SIGTERM));
        assert_eq!(parse_signal("quit"), Some(libc::SIGQUIT));
        assert_eq!(parse_signal("9"), Some(9));
        assert_eq!(parse_signal("SIGNOPE"), None);
        assert_eq!(parse_signal("0"), None);
    }
}

//! CreateContainer: a bundle with the OCI spec and a mounted rootfs, not yet running.
//!
//! The name `(pod, name, attempt)` is reserved (`registry::Names`) and the work runs in a
//! task of its own, so a cancelled RPC cannot leave it half done. kubelet retries a create
//! it gave up on with the same request: an identical request waits for the create still
//! running, or gets the container an identical request made while that container is still
//! CREATED; any other request for the name is AlreadyExists naming the holder. A create
//! that panics frees its name and its waiters get Internal. Any failure unmounts and
//! removes the snapshot and the bundle. The create holds the pod's op lock and needs the
//! pod READY, so a StopPodSandbox or RemovePodSandbox waits for it or makes it fail cleanly.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_cri::v1::ContainerConfig;
use tokio::sync::oneshot;

use super::bundle::{bundles_dir, release_rootfs, write_spec};
use super::record::{ContainerRecord, ContainerState, RECORD_VERSION, RunAs, name_key};
use super::spec::{self, PidNamespace, PodContext};
use super::{ContainerEventKind, Containers, ImageInfo, Inner, now_ns};
use crate::error::{Error, Result};
use crate::pod::{NamespaceMode, PodRecord, PodState};
use crate::registry::{Holder, NameGuard, Reserved, wait_outcome};

/// What makes a kubelet retry "the same request": the config and the image.
fn request_key_of(config: &ContainerConfig, image: &str) -> String {
    serde_json::to_string(&(config, image)).unwrap_or_default()
}

impl Containers {
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
            // kubelet retries a create it gave up on with the same request: while the
            // container it made is untouched, that retry gets it.
            let holder = || {
                let rec = self
                    .inner
                    .records
                    .filter(|r| r.name_key() == key)
                    .into_iter()
                    .next()?;
                Some(
                    if rec.state == ContainerState::Created
                        && request_key_of(&rec.config, &rec.image) == request
                    {
                        Holder::Reusable(rec.id)
                    } else {
                        Holder::Taken(rec.id)
                    },
                )
            };
            match self.inner.names.reserve(&key, &request, holder)? {
                Reserved::Made(id) => return Ok(id),
                Reserved::Fresh(guard) => {
                    return self.start_create(guard, &pod.id, config, image).await;
                }
                // A retry of a create still running: its outcome is ours. If it
                // failed, this request tries again.
                Reserved::Wait(done) => {
                    if let Some(id) = wait_outcome(done, "container").await? {
                        return Ok(id);
                    }
                }
            }
        }
    }

    /// Runs a create to its end even if the caller goes away, so that nothing
    /// is left half made; the caller's retry then finds it.
    async fn start_create(
        &self,
        guard: NameGuard<String>,
        pod_id: &str,
        config: ContainerConfig,
        image: ImageInfo,
    ) -> Result<String> {
        let inner = self.inner.clone();
        let (tx, rx) = oneshot::channel();
        let pod_id = pod_id.to_string();
        tokio::spawn(async move {
            let id = guard.id().to_string();
            // The pod stays READY while the container is made: a concurrent
            // Stop/RemovePodSandbox waits, or this create fails cleanly.
            let r = match inner.pods.hold_ready(&pod_id).await {
                Ok((pod, _held)) => inner.create(&id, &pod, config, image).await,
                Err(e) => Err(e),
            };
            guard.finish(r.as_deref().map_err(|e| e.to_string()), false);
            let _ = tx.send(r);
        });
        rx.await
            .map_err(|_| Error::Internal("create task ended without an answer".into()))?
    }
}

impl Inner {
    async fn create(
        &self,
        id: &str,
        pod: &PodRecord,
        config: ContainerConfig,
        image: ImageInfo,
    ) -> Result<String> {
        let bundle = bundles_dir(&self.cfg.state_dir).join(id);
        let rootfs = bundle.join("rootfs");
        let t0 = Instant::now();
        let mut t_made = Duration::ZERO;
        // Owner-only from `containers/` down: the bundle holds the env (config.json) and
        // the way into the container's files.
        let made = crust_state::private::create_dir(&rootfs)
            .map_err(|e| Error::write("create", &rootfs, e))
            .and_then(|()| self.create_in(id, pod, config, image, &bundle, &rootfs))
            .and_then(|rec| {
                t_made = t0.elapsed();
                self.records.insert(rec.clone())?;
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
                if let Err(u) = self.volumes.detach(id) {
                    tracing::error!(container = id, error = %u, "undoing image volumes");
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
        // Image volumes first (an absent image fails before anything is mounted). Their
        // mounts get the volume's path as host path, for the spec only: the record keeps
        // the request as it came (a retry is compared with it).
        let volumes = self.volumes.attach(id, &pod.id, &config)?;
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
        let ctx = PodContext {
            pod_id: pod.id.clone(),
            hostname: pod.hostname.clone(),
            net_ns: pod.namespaces.net.clone(),
            ipc_ns: pod.namespaces.ipc.clone(),
            uts_ns: pod.namespaces.uts.clone(),
            pid_ns: self.pid_namespace(pod, &config)?,
            hosts_file: Some(pod.hosts_path.clone()).filter(|p| !p.as_os_str().is_empty()),
            resolv_conf: Some(pod.resolv_conf_path.clone()).filter(|p| !p.as_os_str().is_empty()),
            hostname_file: Some(pod.hostname_path.clone()).filter(|p| !p.as_os_str().is_empty()),
            shm: pod.shm.clone(),
            cgroups_path: cgroups_path.clone(),
        };
        let spec_config = volumes.as_ref().unwrap_or(&config);
        let mut built = spec::build(spec_config, image.config.as_ref(), rootfs, &ctx, &self.node)?;
        if let Some(u) = &userns {
            let dir = &self.cfg.state_dir;
            super::userns::adapt_spec(&mut built.spec, spec_config, pod, u, dir, bundle)?;
        }
        let process = built.spec.process().as_ref();
        if process.and_then(|p| p.apparmor_profile().as_deref())
            == Some(super::apparmor::DEFAULT_PROFILE)
        {
            super::apparmor::ensure_default().map_err(|e| {
                Error::FailedPrecondition(format!(
                    "AppArmor profile {}: {e}",
                    super::apparmor::DEFAULT_PROFILE
                ))
            })?;
        }
        let user = process.map(|p| RunAs::of(p.user()));
        write_spec(bundle, &built.spec)?;
        let log_path = log_path(pod, &config)?;
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
            user,
        })
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
                    .records
                    .resolve(&target)?
                    .and_then(|t| self.records.find(&t))
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

    /// The state root of the runtime the pod's shim drives (`runc --root`).
    pub(super) fn runtime_root(&self, pod: &PodRecord) -> PathBuf {
        crate::shim::ShimFlavour::of_pod_dir(&pod.dir)
            .runc_root(&self.cfg.state_dir.join("runc"), crate::pod::SHIM_NAMESPACE)
    }
}

/// The CRI log file: `PodSandboxConfig.log_directory` joined with `ContainerConfig.log_path`
/// (its directory made), when both are given.
fn log_path(pod: &PodRecord, config: &ContainerConfig) -> Result<Option<PathBuf>> {
    if pod.spec.log_directory.is_empty() || config.log_path.is_empty() {
        return Ok(None);
    }
    let p = Path::new(&pod.spec.log_directory).join(&config.log_path);
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent)?;
    }
    Ok(Some(p))
}

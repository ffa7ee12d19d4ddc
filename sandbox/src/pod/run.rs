//! RunPodSandbox: every step registers its undo, and a failing step undoes all before it.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::oneshot;

use super::record::PodRecord;
use super::spec::{NamespaceMode, PodSpec, PodState};
use super::{Inner, PodSandboxes, now_ns};
use crate::cgroup::{self, PodCgroup};
use crate::cni::{self, RuntimeConf, result_ips};
use crate::error::{Error, Result};
use crate::namespaces::{self, NamespaceRequest, PodNamespaces};
use crate::pod::files;
use crate::registry::{Holder, NameGuard, Reserved, wait_outcome};
use crate::sysctl;

/// What to undo if a later step fails, in the order the steps were done.
enum Undo {
    Dir(PathBuf),
    Cgroup(PodCgroup),
    Namespaces(PodNamespaces),
    Shm(PathBuf),
    Network(String),
    Shim {
        id: String,
        dir: PathBuf,
        pid: Option<u32>,
    },
}

impl PodSandboxes {
    /// Creates a pod and returns its id. See `registry::names` for what happens to a
    /// retried request.
    pub async fn run(&self, spec: PodSpec) -> Result<String> {
        validate(&self.inner, &spec)?;
        let key = spec.metadata.key();
        loop {
            let holder = || {
                self.inner
                    .pods
                    .filter(|p| p.spec.metadata == spec.metadata)
                    .into_iter()
                    .next()
                    .map(|p| Holder::Taken(p.id))
            };
            match self.inner.names.reserve(&key, &spec, holder)? {
                Reserved::Made(id) => return Ok(id),
                Reserved::Fresh(guard) => return self.start_run(guard, spec).await,
                Reserved::Wait(done) => {
                    // A retry of a create still running: wait for it. If it failed, try again.
                    if let Some(id) = wait_outcome(done, "pod sandbox").await? {
                        self.inner.names.claim(&key, &id);
                        return Ok(id);
                    }
                }
            }
        }
    }

    async fn start_run(&self, guard: NameGuard<PodSpec>, spec: PodSpec) -> Result<String> {
        let inner = self.inner.clone();
        let (tx, rx) = oneshot::channel();
        // The create runs to its end even if the RPC that asked for it is cancelled; should
        // it panic, the guard frees the name and the waiters learn the outcome is lost.
        tokio::spawn(async move {
            let id = guard.id().to_string();
            let result = create(&inner, &id, &spec).await;
            let left = tx.is_closed();
            if left && result.is_ok() {
                tracing::info!(pod = %id, name = ?guard.key(), "pod created after its caller left; kept for a retry");
            }
            guard.finish(result.as_deref().map_err(|e| e.to_string()), left);
            let _ = tx.send(result);
        });
        rx.await
            .map_err(|_| Error::Internal("pod creation task ended without a result".into()))?
    }
}

/// Checks what needs the node's configuration before touching it; what needs only
/// the request (names, paths, modes, ports, DNS, hostname) the CRI edge has checked.
fn validate(inner: &Inner, spec: &PodSpec) -> Result<()> {
    if inner.config.handler(&spec.runtime_handler).is_none() {
        return Err(Error::InvalidArgument(format!(
            "unknown runtime handler {:?} (configured: {})",
            spec.runtime_handler,
            inner
                .config
                .runtime_handlers
                .keys()
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    let ns = &spec.namespaces;
    for (k, v) in &spec.sysctls {
        sysctl::validate(
            k,
            v,
            ns.network == NamespaceMode::Node,
            ns.ipc == NamespaceMode::Node,
        )
        .map_err(Error::InvalidArgument)?;
    }
    cgroup::pod_cgroup_path(inner.cgroup_driver, &spec.cgroup_parent, &"0".repeat(64))
        .map_err(Error::InvalidArgument)?;
    if let Some(u) = &ns.userns {
        crate::userns::check_pod(u, ns, &inner.config, &spec.runtime_handler, &inner.paths)?;
    }
    Ok(())
}

async fn create(inner: &Arc<Inner>, id: &str, spec: &PodSpec) -> Result<String> {
    let mut undo = Vec::new();
    match create_steps(inner, id, spec, &mut undo).await {
        Ok(rec) => {
            if let Err(e) = inner.save(rec) {
                rollback(inner, undo).await;
                return Err(e);
            }
            tracing::info!(pod = %id, name = ?spec.metadata.key(), "pod sandbox ready");
            Ok(id.to_string())
        }
        Err(e) => {
            tracing::warn!(pod = %id, name = ?spec.metadata.key(), error = %e.to_string().escape_debug(), "RunPodSandbox failed; rolling back");
            rollback(inner, undo).await;
            Err(e)
        }
    }
}

async fn create_steps(
    inner: &Arc<Inner>,
    id: &str,
    spec: &PodSpec,
    undo: &mut Vec<Undo>,
) -> Result<PodRecord> {
    let (handler, _) = inner
        .config
        .handler(&spec.runtime_handler)
        .ok_or_else(|| Error::InvalidArgument("unknown runtime handler".into()))?;
    let handler = handler.to_string();
    let started = std::time::Instant::now();
    let host_network = spec.namespaces.network == NamespaceMode::Node;
    let host_ipc = spec.namespaces.ipc == NamespaceMode::Node;

    // 1. The pod's directory.
    let dir = inner.paths.state_dir.join("pods").join(id);
    // Owner-only (crust_state::private): shim state, namespace pins, the CNI netns path.
    crust_state::private::create_dir(dir.parent().unwrap_or(Path::new("/")))
        .map_err(|e| Error::write("create", &dir, e))?;
    std::fs::create_dir(&dir).map_err(|e| Error::write("create", &dir, e))?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
    undo.push(Undo::Dir(dir.clone()));

    // 2. The pod cgroup.
    let mut pod_cgroup = None;
    if let Some(h) = &inner.hierarchies {
        let path = cgroup::pod_cgroup_path(inner.cgroup_driver, &spec.cgroup_parent, id)
            .map_err(Error::InvalidArgument)?;
        let limits = cgroup::pod_limits(spec.overhead.as_ref(), spec.resources.as_ref());
        let cg = cgroup::create(h, &path, limits.as_ref())?;
        undo.push(Undo::Cgroup(cg.clone()));
        // Should crustd die before the record is written, start-up finds the cgroup here.
        let path = dir.join(super::gc::CGROUP_FILE);
        crust_state::private::write_file(&path, &serde_json::to_vec(&cg).unwrap_or_default())
            .map_err(|e| Error::write("write", &path, e))?;
        pod_cgroup = Some(cg);
    }

    // 3. Namespaces, hostname, lo, sysctls.
    let hostname = if !spec.hostname.is_empty() && !host_network {
        spec.hostname.clone()
    } else {
        node_hostname()
    };
    let sysctls = spec
        .sysctls
        .iter()
        .map(|(k, v)| {
            sysctl::validate(k, v, host_network, host_ipc)
                .map(|p| (p, v.clone()))
                .map_err(Error::InvalidArgument)
        })
        .collect::<Result<Vec<_>>>()?;
    let req = NamespaceRequest {
        dir: dir.join("ns"),
        net: !host_network,
        ipc: !host_ipc,
        uts: !host_network,
        pid: spec.namespaces.pid == NamespaceMode::Pod,
        hostname: hostname.clone(),
        sysctls,
        userns: spec.namespaces.userns.clone(),
    };
    let ns = tokio::task::spawn_blocking(move || namespaces::create(&req))
        .await
        .map_err(|e| Error::Internal(format!("namespace task: {e}")))??;
    undo.push(Undo::Namespaces(ns.clone()));
    tracing::debug!(pod = %id, ms = started.elapsed().as_millis() as u64, "namespaces pinned");
    if let (Some(h), Some(cg), Some(pid)) = (&inner.hierarchies, &pod_cgroup, ns.infra_pid) {
        cgroup::add_process(h, &cg.path, pid)?;
    }

    // 4. /dev/shm.
    let shm = if host_ipc {
        None
    } else {
        let shm = dir.join("shm");
        namespaces::mount_shm(&shm, inner.config.pod_shm_size_bytes)?;
        undo.push(Undo::Shm(shm.clone()));
        Some(shm)
    };

    // 5. Network and the pod's shim, concurrently: neither needs the other.
    let network_step = async {
        let Some(netns) = &ns.net else {
            return Ok((None, Vec::new(), None));
        };
        let conf = cni::find_network_config(&inner.config.cni_conf_dir)?;
        let rt = runtime_conf(id, netns, spec);
        let result = inner.cni.add(&conf, &rt).await?;
        let ips = result_ips(&result);
        Ok::<_, Error>((Some(conf.name.clone()), ips, Some(result)))
    };
    let shim_step = async {
        if inner.spawn_shims {
            Some(inner.start_shim(id, &dir, &handler).await)
        } else {
            None
        }
    };
    let (network_result, shim_result) = tokio::join!(network_step, shim_step);
    if ns.net.is_some() {
        // ADD undoes itself when it fails; this covers a later step failing.
        undo.push(Undo::Network(id.to_string()));
    }
    let shim_pid = match shim_result {
        None => None,
        Some(r) => {
            // Registered even when the start failed half-way: a shim may be running anyway.
            undo.push(Undo::Shim {
                id: id.to_string(),
                dir: dir.clone(),
                pid: r.as_ref().ok().copied(),
            });
            Some(r?)
        }
    };
    let (network, ips, cni_result) = network_result?;
    tracing::debug!(pod = %id, ms = started.elapsed().as_millis() as u64, "network and shim ready");

    // 6. Files for the containers: bind-mounted in, so readable (0644) by any container
    // user; the pod directory keeps them from the host's other users.
    let hostname_path = dir.join("hostname");
    container_file(&hostname_path, format!("{hostname}\n"))?;
    let hosts_path = dir.join("hosts");
    let hosts = if host_network {
        std::fs::read_to_string("/etc/hosts").unwrap_or_default()
    } else {
        files::render_hosts(&hostname, &ips)
    };
    container_file(&hosts_path, hosts)?;
    let resolv_conf_path = dir.join("resolv.conf");
    let host_resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    container_file(
        &resolv_conf_path,
        files::render_resolv_conf(spec.dns.as_ref(), &host_resolv),
    )?;

    Ok(PodRecord {
        version: super::store::RECORD_VERSION,
        id: id.to_string(),
        spec: spec.clone(),
        runtime_handler: handler,
        state: PodState::Ready,
        created_at_ns: now_ns(),
        dir,
        namespaces: ns,
        shm,
        hostname,
        hostname_path,
        hosts_path,
        resolv_conf_path,
        ips,
        network,
        cni_result,
        cgroup: pod_cgroup,
        shim_pid,
    })
}

/// CNI's per-pod inputs, with the CNI_ARGS kubelet's networking expects.
pub(super) fn runtime_conf(id: &str, netns: &Path, spec: &PodSpec) -> RuntimeConf {
    let m = &spec.metadata;
    RuntimeConf {
        container_id: id.to_string(),
        netns: netns.to_path_buf(),
        ifname: "eth0".into(),
        args: vec![
            ("IgnoreUnknown".into(), "1".into()),
            ("K8S_POD_NAMESPACE".into(), m.namespace.clone()),
            ("K8S_POD_NAME".into(), m.name.clone()),
            ("K8S_POD_INFRA_CONTAINER_ID".into(), id.to_string()),
            ("K8S_POD_UID".into(), m.uid.clone()),
        ],
        port_mappings: spec.port_mappings.clone(),
    }
}

async fn rollback(inner: &Arc<Inner>, undo: Vec<Undo>) {
    for step in undo.into_iter().rev() {
        match step {
            Undo::Shim { id, dir, pid } => super::shim::stop_shim(&id, &dir, pid).await,
            Undo::Network(id) => {
                if let Err(e) = inner.cni.del(&id, None, &RuntimeConf::default()).await {
                    tracing::warn!(pod = %id, error = %e, "rollback: CNI DEL");
                }
            }
            Undo::Shm(p) => {
                if let Err(e) = namespaces::unmount(&p) {
                    tracing::warn!(error = %e, "rollback: unmount shm");
                }
            }
            Undo::Namespaces(ns) => {
                let _ = tokio::task::spawn_blocking(move || namespaces::destroy(&ns)).await;
            }
            Undo::Cgroup(cg) => {
                if let Err(e) = cgroup::remove(&cg) {
                    tracing::warn!(error = %e, "rollback: cgroup");
                }
            }
            Undo::Dir(d) => {
                if let Err(e) = std::fs::remove_dir_all(&d) {
                    tracing::warn!(dir = %d.display(), error = %e, "rollback: pod dir");
                }
            }
        }
    }
}

fn node_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}

/// Writes a file containers read through a bind mount: 0644 whatever the umask.
fn container_file(path: &Path, text: String) -> Result<()> {
    std::fs::write(path, text)
        .and_then(|()| std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)))
        .map_err(|e| Error::write("write", path, e))
}

//! The OCI runtime spec of a container, built from its CRI config, its image's
//! config and its pod, merged the way Docker and containerd merge them.
//!
//! One file per concern: `process.rs` (command, env, user, capabilities),
//! `mounts.rs`, `namespaces.rs`, `resources.rs` (limits and devices),
//! `security.rs` (masked paths, seccomp, AppArmor); this file puts them together.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use k8s_cri::v1::ContainerConfig;
use oci_spec::image::Config as ImageConfig;
use oci_spec::runtime::{LinuxBuilder, RootBuilder, Spec, SpecBuilder};

use super::user::{self, ResolvedUser};

mod mounts;
mod namespaces;
mod process;
mod resources;
mod security;
#[cfg(test)]
mod tests;

use mounts::propagation_of;
pub use process::DEFAULT_CAPABILITIES;
pub use resources::resources_json;
pub use security::host_has_apparmor;

/// How the container's PID namespace is chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PidNamespace {
    /// A new one for this container (the CRI default).
    Container,
    /// The pod's shared one, pinned at this path.
    Pod(PathBuf),
    /// Another container's, pinned at this path (NamespaceMode TARGET).
    Target(PathBuf),
    /// The host's.
    Node,
}

/// What the container takes from its pod.
#[derive(Debug, Clone)]
pub struct PodContext {
    pub pod_id: String,
    pub hostname: String,
    /// Pinned namespace paths; `None` means the host's (hostNetwork, hostIPC).
    pub net_ns: Option<PathBuf>,
    pub ipc_ns: Option<PathBuf>,
    pub uts_ns: Option<PathBuf>,
    pub pid_ns: PidNamespace,
    pub hosts_file: Option<PathBuf>,
    pub resolv_conf: Option<PathBuf>,
    pub hostname_file: Option<PathBuf>,
    /// The pod's /dev/shm; `None` means the host's (hostIPC).
    pub shm: Option<PathBuf>,
    /// The container's cgroup path as runc takes it (`/parent/pod/ctr` for
    /// cgroupfs, `slice:prefix:name` for systemd).
    pub cgroups_path: String,
}

/// The node facts the spec depends on.
#[derive(Debug, Clone)]
pub struct NodeContext {
    /// crustd's own oom_score_adj: a container may not ask for less, since this
    /// host lacks CAP_SYS_RESOURCE (containerd's restrict_oom_score_adj).
    pub min_oom_score_adj: i32,
    /// Whether the host runs AppArmor.
    pub apparmor: bool,
    /// Directory `Localhost` seccomp profiles are resolved against when relative.
    pub seccomp_profile_root: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("container has no command: neither the request nor the image gives one")]
    NoCommand,
    #[error(transparent)]
    User(#[from] user::UserError),
    #[error("unknown capability {0:?}")]
    UnknownCapability(String),
    #[error("seccomp profile {path}: {message}")]
    SeccompProfile { path: PathBuf, message: String },
    #[error("unsupported seccomp profile {0:?}")]
    SeccompType(String),
    #[error("apparmor profile {0:?} requested but AppArmor is not enabled on this host")]
    AppArmor(String),
    #[error("device {host_path:?}: {message}")]
    Device { host_path: String, message: String },
    #[error("mount {container_path:?}: {message}")]
    Mount {
        container_path: String,
        message: String,
    },
    #[error("building the OCI spec: {0}")]
    Oci(#[from] oci_spec::OciSpecError),
}

/// The built spec and what crust keeps beside it.
pub struct BuiltSpec {
    pub spec: Spec,
    pub user: ResolvedUser,
    /// The image's StopSignal, when it has one.
    pub stop_signal: Option<String>,
}

/// Builds the spec. `rootfs` is the container's mounted root filesystem (the
/// user database is read from it); the spec itself names `rootfs_in_bundle`.
pub fn build(
    config: &ContainerConfig,
    image: Option<&ImageConfig>,
    rootfs: &Path,
    pod: &PodContext,
    node: &NodeContext,
) -> Result<BuiltSpec, SpecError> {
    let linux_cfg = config.linux.clone().unwrap_or_default();
    let sc = linux_cfg.security_context.clone().unwrap_or_default();
    let privileged = sc.privileged;

    let (process, resolved, caps) = process::process(config, image, rootfs, pod, node)?;

    let mut mounts = mounts::default_mounts(privileged);
    mounts::add_pod_mounts(&mut mounts, pod, config)?;
    // Read once, and only if a mount asks for propagation.
    let mountinfo = std::cell::OnceCell::new();
    let rootfs_propagation = mounts::add_cri_mounts(&mut mounts, config, &|p: &Path| {
        let text = match mountinfo.get() {
            Some(t) => t,
            None => {
                let t = crate::mountinfo::read()?;
                mountinfo.get_or_init(|| t)
            }
        };
        Ok(propagation_of(text, p))
    })?;

    let mut linux = LinuxBuilder::default()
        .namespaces(namespaces::namespaces(pod, &sc)?)
        .cgroups_path(PathBuf::from(&pod.cgroups_path))
        .resources(resources::resources(&linux_cfg, privileged)?)
        .build()?;
    if let Some(p) = rootfs_propagation {
        linux.set_rootfs_propagation(Some(p.to_string()));
    }
    let (mut devices, rules) = resources::cri_devices(config)?;
    if privileged {
        devices.extend(resources::host_devices());
        linux.set_masked_paths(Some(Vec::new()));
        linux.set_readonly_paths(Some(Vec::new()));
    } else if let Some(r) = linux.resources_mut() {
        let mut all = r.devices().clone().unwrap_or_default();
        all.extend(rules);
        r.set_devices(Some(all));
    }
    if !devices.is_empty() {
        linux.set_devices(Some(devices));
    }
    if !privileged {
        security::confine(&mut linux, &sc, &caps, node)?;
    }

    let mut spec = SpecBuilder::default()
        .version("1.0.2")
        .root(
            RootBuilder::default()
                .path("rootfs")
                .readonly(sc.readonly_rootfs)
                .build()?,
        )
        .process(process)
        .mounts(mounts)
        .linux(linux)
        .annotations(annotations(config, pod))
        .build()?;
    // The pod's UTS namespace already carries its hostname; runc refuses a
    // hostname without a UTS namespace of the container's own or its pod's
    // (hostNetwork pods use the host's).
    spec.set_hostname(pod.uts_ns.as_ref().map(|_| pod.hostname.clone()));
    Ok(BuiltSpec {
        spec,
        user: resolved,
        stop_signal: image.and_then(|i| i.stop_signal().clone()),
    })
}

/// The request's annotations and the ones containerd sets for a container.
fn annotations(config: &ContainerConfig, pod: &PodContext) -> HashMap<String, String> {
    let mut annotations: HashMap<String, String> = config.annotations.clone().into_iter().collect();
    annotations.insert(
        "io.kubernetes.cri.container-type".into(),
        "container".into(),
    );
    annotations.insert("io.kubernetes.cri.sandbox-id".into(), pod.pod_id.clone());
    if let Some(m) = &config.metadata {
        annotations.insert("io.kubernetes.cri.container-name".into(), m.name.clone());
    }
    annotations
}

//! Confinement: masked and read-only paths, seccomp and AppArmor profiles.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use k8s_cri::v1::security_profile::ProfileType;
use oci_spec::runtime::{Capability, LinuxSeccomp};

use super::super::seccomp;
use super::{NodeContext, SpecError};

/// Paths masked in every unprivileged container (the runc/containerd set).
pub(super) const MASKED_PATHS: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Paths read-only in every unprivileged container.
pub(super) const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

pub(super) fn seccomp_profile(
    profile: Option<&k8s_cri::v1::SecurityProfile>,
    legacy_path: &str,
    caps: &HashSet<Capability>,
    node: &NodeContext,
) -> Result<Option<LinuxSeccomp>, SpecError> {
    let (kind, localhost) = match profile {
        Some(p) => (
            ProfileType::try_from(p.profile_type).unwrap_or(ProfileType::Unconfined),
            p.localhost_ref.clone(),
        ),
        // The deprecated string field: "runtime/default", "unconfined", "localhost/<path>".
        None => match legacy_path {
            "" | "unconfined" => (ProfileType::Unconfined, String::new()),
            "runtime/default" | "docker/default" => (ProfileType::RuntimeDefault, String::new()),
            p => match p.strip_prefix("localhost/") {
                Some(path) => (ProfileType::Localhost, path.to_string()),
                None => return Err(SpecError::SeccompType(p.to_string())),
            },
        },
    };
    match kind {
        ProfileType::Unconfined => Ok(None),
        ProfileType::RuntimeDefault => Ok(Some(seccomp::runtime_default(caps))),
        ProfileType::Localhost => {
            let path = if Path::new(&localhost).is_absolute() {
                PathBuf::from(&localhost)
            } else {
                node.seccomp_profile_root.join(&localhost)
            };
            let text = std::fs::read_to_string(&path).map_err(|e| SpecError::SeccompProfile {
                path: path.clone(),
                message: e.to_string(),
            })?;
            serde_json::from_str(&text)
                .map(Some)
                .map_err(|e| SpecError::SeccompProfile {
                    path,
                    message: format!("not a valid seccomp profile: {e}"),
                })
        }
    }
}

pub(super) fn apparmor_profile(
    profile: Option<&k8s_cri::v1::SecurityProfile>,
    legacy: &str,
    node: &NodeContext,
    privileged: bool,
) -> Result<Option<String>, SpecError> {
    // As containerd: RuntimeDefault, and no choice at all (kubelet's default is
    // RuntimeDefault), is crust's default profile for an unprivileged container where
    // the host runs AppArmor (the caller makes sure it is loaded), nothing elsewhere
    // and nothing for a privileged one. A named profile is applied, privileged or not,
    // when the host has AppArmor, and refused when it does not rather than silently
    // dropped.
    let default = || {
        Ok((node.apparmor && !privileged)
            .then(|| super::super::apparmor::DEFAULT_PROFILE.to_string()))
    };
    let name = match profile {
        Some(p) => match ProfileType::try_from(p.profile_type) {
            Ok(ProfileType::Localhost) => p.localhost_ref.clone(),
            Ok(ProfileType::Unconfined) => return Ok(None),
            _ => return default(),
        },
        None => match legacy {
            "unconfined" => return Ok(None),
            "" | "runtime/default" => return default(),
            p => p.strip_prefix("localhost/").unwrap_or(p).to_string(),
        },
    };
    if !node.apparmor {
        return Err(SpecError::AppArmor(name));
    }
    Ok(Some(name))
}

/// Whether the host has AppArmor enabled.
pub fn host_has_apparmor() -> bool {
    std::fs::read_to_string("/sys/module/apparmor/parameters/enabled")
        .map(|s| s.trim() == "Y")
        .unwrap_or(false)
}

/// Masked and read-only paths and the seccomp profile of an unprivileged container.
pub(super) fn confine(
    linux: &mut oci_spec::runtime::Linux,
    sc: &k8s_cri::v1::LinuxContainerSecurityContext,
    caps: &HashSet<Capability>,
    node: &NodeContext,
) -> Result<(), SpecError> {
    // kubelet sends the masked and read-only lists itself (its ProcMount
    // "Default" set); when it sends them, they replace crust's.
    let (masked, readonly) = if !sc.masked_paths.is_empty() || !sc.readonly_paths.is_empty() {
        (sc.masked_paths.clone(), sc.readonly_paths.clone())
    } else {
        (
            MASKED_PATHS.iter().map(|s| s.to_string()).collect(),
            READONLY_PATHS.iter().map(|s| s.to_string()).collect(),
        )
    };
    linux.set_masked_paths(Some(masked));
    linux.set_readonly_paths(Some(readonly));
    #[allow(deprecated)]
    let legacy = &sc.seccomp_profile_path;
    if let Some(profile) = seccomp_profile(sc.seccomp.as_ref(), legacy, caps, node)? {
        linux.set_seccomp(Some(profile));
    }
    Ok(())
}

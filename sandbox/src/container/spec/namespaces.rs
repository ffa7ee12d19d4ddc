//! The namespaces of a container: a mount namespace of its own, the pod's
//! pinned network, IPC and UTS namespaces, and the PID namespace its mode picks.

use std::path::PathBuf;

use k8s_cri::v1::{LinuxContainerSecurityContext, NamespaceMode};
use oci_spec::runtime::{LinuxNamespace, LinuxNamespaceBuilder, LinuxNamespaceType};

use super::{PidNamespace, PodContext, SpecError};

pub(super) fn namespaces(
    pod: &PodContext,
    sc: &LinuxContainerSecurityContext,
) -> Result<Vec<LinuxNamespace>, SpecError> {
    let mut namespaces = Vec::new();
    let mut ns = |typ, path: Option<&PathBuf>| -> Result<(), SpecError> {
        let mut b = LinuxNamespaceBuilder::default().typ(typ);
        if let Some(p) = path {
            b = b.path(p.clone());
        }
        namespaces.push(b.build()?);
        Ok(())
    };
    ns(LinuxNamespaceType::Mount, None)?;
    if let Some(p) = &pod.net_ns {
        ns(LinuxNamespaceType::Network, Some(p))?;
    }
    if let Some(p) = &pod.ipc_ns {
        ns(LinuxNamespaceType::Ipc, Some(p))?;
    }
    if let Some(p) = &pod.uts_ns {
        ns(LinuxNamespaceType::Uts, Some(p))?;
    }
    // The container's own PID mode (from its namespace options) refines the pod's.
    let pid_mode = sc.namespace_options.as_ref().map(|o| o.pid);
    match (&pod.pid_ns, pid_mode) {
        (PidNamespace::Node, _) => {}
        (_, Some(m)) if m == NamespaceMode::Node as i32 => {}
        (PidNamespace::Pod(p), _) | (PidNamespace::Target(p), _) => {
            ns(LinuxNamespaceType::Pid, Some(p))?
        }
        (PidNamespace::Container, _) => ns(LinuxNamespaceType::Pid, None)?,
    }
    Ok(namespaces)
}

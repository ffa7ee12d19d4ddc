//! Which sysctls a pod may set: only namespaced ones, in a namespace the pod owns.
//!
//! The kernel scopes a few sysctls to a namespace: `net.*` to the network namespace,
//! `kernel.shm*`/`kernel.msg*`/`kernel.sem`/`fs.mqueue.*` to the IPC namespace and
//! `kernel.hostname`/`kernel.domainname` to the UTS namespace. Anything else would change the
//! whole node, so it is refused; so is a namespaced one when the pod shares that namespace with
//! the host (hostNetwork, hostIPC).

/// The namespace a sysctl belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SysctlNamespace {
    Net,
    Ipc,
    Uts,
}

const IPC_SYSCTLS: &[&str] = &[
    "kernel.msgmax",
    "kernel.msgmnb",
    "kernel.msgmni",
    "kernel.sem",
    "kernel.shmall",
    "kernel.shmmax",
    "kernel.shmmni",
    "kernel.shm_rmid_forced",
];

/// The namespace of a sysctl, or None when it is node-wide.
pub fn namespace_of(name: &str) -> Option<SysctlNamespace> {
    // kubelet allows '/' as separator too (net/ipv4/ip_forward).
    let name = name.replace('/', ".");
    if name.starts_with("net.") {
        return Some(SysctlNamespace::Net);
    }
    if IPC_SYSCTLS.contains(&name.as_str()) || name.starts_with("fs.mqueue.") {
        return Some(SysctlNamespace::Ipc);
    }
    if name == "kernel.hostname" || name == "kernel.domainname" {
        return Some(SysctlNamespace::Uts);
    }
    None
}

/// Checks one sysctl for a pod that owns (or shares with the host) its namespaces. Returns the
/// path under /proc/sys to write.
pub fn validate(
    name: &str,
    value: &str,
    host_network: bool,
    host_ipc: bool,
) -> Result<String, String> {
    let valid_name = !name.is_empty()
        && name.split(['.', '/']).all(|part| {
            !part.is_empty()
                && part != ".."
                && part
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        });
    if !valid_name {
        return Err(format!("invalid sysctl name {name:?}"));
    }
    if value.contains('\n') || value.contains('\0') {
        return Err(format!("invalid value for sysctl {name:?}"));
    }
    match namespace_of(name) {
        None => Err(format!(
            "sysctl {name:?} is not namespaced: it would change the whole node"
        )),
        Some(SysctlNamespace::Net) if host_network => Err(format!(
            "sysctl {name:?} cannot be set for a pod in the host's network namespace"
        )),
        Some(SysctlNamespace::Ipc) if host_ipc => Err(format!(
            "sysctl {name:?} cannot be set for a pod in the host's IPC namespace"
        )),
        Some(SysctlNamespace::Uts) => {
            Err(format!("sysctl {name:?}: set the pod's hostname instead"))
        }
        // With '/' as the separator a '.' is part of a name (net/ipv4/conf/eth0.100/...).
        Some(_) if name.contains('/') => Ok(format!("/proc/sys/{name}")),
        Some(_) => Ok(format!("/proc/sys/{}", name.replace('.', "/"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaced_ones_are_accepted() {
        assert_eq!(
            validate("net.ipv4.ip_unprivileged_port_start", "0", false, false),
            Ok("/proc/sys/net/ipv4/ip_unprivileged_port_start".into())
        );
        assert_eq!(
            validate("net/ipv4/ping_group_range", "0 1", false, false),
            Ok("/proc/sys/net/ipv4/ping_group_range".into())
        );
        assert_eq!(
            validate("net/ipv4/conf/eth0.100/forwarding", "1", false, false),
            Ok("/proc/sys/net/ipv4/conf/eth0.100/forwarding".into())
        );
        assert!(validate("kernel.shm_rmid_forced", "1", false, false).is_ok());
        assert!(validate("fs.mqueue.msg_max", "20", false, false).is_ok());
    }

    #[test]
    fn node_wide_ones_are_refused() {
        let e = validate("kernel.panic", "1", false, false).unwrap_err();
        assert!(e.contains("not namespaced"), "{e}");
        assert!(validate("vm.overcommit_memory", "1", false, false).is_err());
        assert!(validate("kernel.hostname", "x", false, false).is_err());
    }

    #[test]
    fn host_namespaces_refuse_their_sysctls() {
        assert!(validate("net.ipv4.ip_forward", "1", true, false).is_err());
        assert!(validate("kernel.shmmax", "1", false, true).is_err());
        assert!(validate("kernel.shmmax", "1", true, false).is_ok());
    }

    #[test]
    fn malformed_names_and_values_are_refused() {
        assert!(validate("net...x", "1", false, false).is_err());
        assert!(validate("net/../../etc", "1", false, false).is_err());
        assert!(validate("net.ipv4.ip_forward", "1\n2", false, false).is_err());
        assert!(validate("", "1", false, false).is_err());
    }
}

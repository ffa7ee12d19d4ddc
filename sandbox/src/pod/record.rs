//! What crust remembers about a pod, persisted in the state store.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::spec::{PodSpec, PodState};
use crate::cgroup::PodCgroup;
use crate::namespaces::PodNamespaces;

/// A pod sandbox as it is on the node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PodRecord {
    pub version: u32,
    /// 64 hex characters.
    pub id: String,
    pub spec: PodSpec,
    /// The handler actually used (the default one when the request named none).
    pub runtime_handler: String,
    pub state: PodState,
    /// Nanoseconds since the Unix epoch.
    pub created_at_ns: i64,
    /// `<state_dir>/pods/<id>`: ns pins, hostname, hosts, resolv.conf, shm.
    pub dir: PathBuf,
    pub namespaces: PodNamespaces,
    /// The pod's /dev/shm tmpfs; None with hostIPC (the host's /dev/shm is used).
    pub shm: Option<PathBuf>,
    pub hostname: String,
    pub hostname_path: PathBuf,
    pub hosts_path: PathBuf,
    pub resolv_conf_path: PathBuf,
    /// Primary IP first; empty with hostNetwork or after stop.
    pub ips: Vec<String>,
    /// The CNI network the pod was attached to (its cache entry holds the rest).
    pub network: Option<String>,
    /// The final CNI ADD result (PodSandboxStatus verbose shows it without running a
    /// plugin); None with hostNetwork, after stop, and in records of crustd before it.
    #[serde(default)]
    pub cni_result: Option<serde_json::Value>,
    pub cgroup: Option<PodCgroup>,
    /// The pod's shim process (its address is in `<dir>/address`).
    #[serde(default)]
    pub shim_pid: Option<u32>,
}

impl PodRecord {
    /// The pod's primary IP, or "".
    pub fn ip(&self) -> &str {
        self.ips.first().map(String::as_str).unwrap_or("")
    }

    pub fn host_network(&self) -> bool {
        self.namespaces.net.is_none()
    }

    #[cfg(test)]
    pub(crate) fn for_test() -> Self {
        Self {
            version: super::store::RECORD_VERSION,
            id: "0".repeat(64),
            spec: PodSpec::default(),
            runtime_handler: "runc".into(),
            state: PodState::Ready,
            created_at_ns: 1,
            dir: PathBuf::from("/run/crust/pods/x"),
            namespaces: PodNamespaces::default(),
            shm: None,
            hostname: "h".into(),
            hostname_path: PathBuf::new(),
            hosts_path: PathBuf::new(),
            resolv_conf_path: PathBuf::new(),
            ips: vec![],
            network: None,
            cni_result: None,
            cgroup: None,
            shim_pid: None,
        }
    }
}

//! What a pod is asked to be (the node-side view of CRI's PodSandboxConfig) and what it is.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A pod's name: unique on the node while the pod exists.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PodMetadata {
    pub name: String,
    pub uid: String,
    pub namespace: String,
    pub attempt: u32,
}

impl PodMetadata {
    /// The reservation key, as kubelet builds sandbox names: `name_namespace_uid_attempt`.
    pub fn key(&self) -> String {
        format!(
            "{}_{}_{}_{}",
            self.name, self.namespace, self.uid, self.attempt
        )
    }
}

/// CRI NamespaceMode.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum NamespaceMode {
    /// Shared by the pod's containers.
    #[default]
    Pod,
    /// One per container (PID only).
    Container,
    /// The host's.
    Node,
    /// Another container's (PID only; resolved when containers exist).
    Target,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamespaceOptions {
    pub network: NamespaceMode,
    pub pid: NamespaceMode,
    pub ipc: NamespaceMode,
    pub target_id: String,
    /// POD user namespace mode: the pod's own user namespace with these maps (None = NODE).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub userns: Option<crate::userns::UserNamespace>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsConfig {
    pub servers: Vec<String>,
    pub searches: Vec<String>,
    pub options: Vec<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
    Sctp,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortMapping {
    pub protocol: Protocol,
    pub container_port: i32,
    pub host_port: i32,
    pub host_ip: String,
}

/// Pod-level resources: the pod cgroup's limits (crate `crust-cgroups`).
pub use crust_cgroups::pod::PodResources;

/// Everything RunPodSandbox asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodSpec {
    pub metadata: PodMetadata,
    pub hostname: String,
    pub log_directory: String,
    pub dns: Option<DnsConfig>,
    pub port_mappings: Vec<PortMapping>,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub cgroup_parent: String,
    pub sysctls: BTreeMap<String, String>,
    pub namespaces: NamespaceOptions,
    pub overhead: Option<PodResources>,
    pub resources: Option<PodResources>,
    pub privileged: bool,
    /// RuntimeClass handler; empty = the configured default.
    pub runtime_handler: String,
}

/// CRI PodSandboxState.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum PodState {
    Ready,
    NotReady,
}

impl PodState {
    pub fn as_str(self) -> &'static str {
        match self {
            PodState::Ready => "ready",
            PodState::NotReady => "notready",
        }
    }
}

/// ListPodSandbox filter; every field that is set must match (ANDed).
#[derive(Debug, Clone, Default)]
pub struct PodFilter {
    /// Full id or unique prefix; empty = any.
    pub id: String,
    pub state: Option<PodState>,
    pub label_selector: BTreeMap<String, String>,
}

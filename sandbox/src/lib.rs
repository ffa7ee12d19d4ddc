//! Pod sandboxes and containers on the node.

pub mod cgroup;
pub mod cni;
mod config;
pub mod container;
mod error;
pub mod features;
pub mod idmap;
pub mod metrics;
pub mod mountinfo;
pub mod namespaces;
pub mod netstats;
pub mod pod;
pub mod registry;
pub mod shim;
pub mod sysctl;
pub mod task;
pub mod userns;

pub use cgroup::CgroupDriver;
pub use config::{
    Config, RuntimeHandler, RuntimeKind, commented_default, resolve_binary, runtime_ready,
};
pub use error::{Error, Result};
pub use pod::{Paths, PodRecord, PodSandboxes, Seams};

//! Containers: the OCI runtime spec built from CRI and image configs, the user
//! they run as, and their seccomp and AppArmor profiles.

pub mod apparmor;
pub mod attach;
pub mod checkpoint;
pub mod exec_stream;
pub mod metrics;
pub mod record;
pub mod seccomp;
pub mod service;
pub mod spec;
pub mod stats;
pub mod user;
mod userns;

pub use record::{ContainerRecord, ContainerState};
pub use service::{
    ContainerEvent, ContainerEventKind, ContainerFilter, ContainerUsage, Containers,
    ContainersConfig, EXEC_OUTPUT_CAP, ExecOutput, ImageInfo, Rootfs,
};
pub use spec::{BuiltSpec, NodeContext, PidNamespace, PodContext, SpecError, build};

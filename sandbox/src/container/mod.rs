//! Containers: the OCI runtime spec built from CRI and image configs, the user
//! they run as, and their seccomp profile.

pub mod seccomp;
pub mod spec;
pub mod user;

pub use spec::{BuiltSpec, NodeContext, PidNamespace, PodContext, SpecError, build};

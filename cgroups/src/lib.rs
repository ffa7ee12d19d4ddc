//! cgroups as crustd and crust-shim use them, v1 (one hierarchy per controller) and v2
//! (the unified hierarchy):
//!
//! - [`hierarchy`]: the node's hierarchies (v1 controllers or the v2 mount), from mountinfo;
//! - [`pod`]: pod cgroups — made in every hierarchy with their limits (pod overhead plus
//!   resources), processes added and killed, removed (only what crust made);
//! - [`path`]: the cgroupfs and systemd drivers — a pod's cgroup path, systemd slice names
//!   expanded, runc's `slice:prefix:name` form mapped to its scope;
//! - [`files`]: the file formats (a number, flat keyed `key value` lines);
//! - [`stats`]: a cgroup's usage (CPU, memory, working set, pids) for the CRI stats;
//! - [`oom`]: the kernel's OOM-kill counter of a memory cgroup.
//!
//! The sandbox makes pod cgroups with [`pod`]; the shim builds containerd's `Metrics` from
//! [`files`].

pub mod files;
pub mod hierarchy;
pub mod oom;
pub mod path;
pub mod pod;
pub mod stats;

pub use path::CgroupDriver;

/// Where cgroup hierarchies are mounted on a real node.
pub const ROOT: &str = "/sys/fs/cgroup";

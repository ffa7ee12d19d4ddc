//! cgroups as crustd and crust-shim read them, v1 (one hierarchy per controller) and v2
//! (the unified hierarchy):
//!
//! - [`path`]: the cgroupfs and systemd drivers — a pod's cgroup path, systemd slice names
//!   expanded, runc's `slice:prefix:name` form mapped to its scope;
//! - [`files`]: the file formats (a number, flat keyed `key value` lines);
//! - [`stats`]: a cgroup's usage (CPU, memory, working set, pids) for the CRI stats;
//! - [`oom`]: the kernel's OOM-kill counter of a memory cgroup.
//!
//! Creating, limiting and removing pod cgroups is the sandbox's (`crust_sandbox::cgroup`);
//! the shim's containerd `Metrics` are built from [`files`] in the shim.

pub mod files;
pub mod oom;
pub mod path;
pub mod stats;

pub use path::CgroupDriver;

/// Where cgroup hierarchies are mounted on a real node.
pub const ROOT: &str = "/sys/fs/cgroup";

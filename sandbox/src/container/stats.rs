//! Resource usage read straight from the cgroup files (crate `crust-cgroups`): what
//! ContainerStats, ListContainerStats and the pod stats answer.

pub use crust_cgroups::path::cgroupfs_path;
pub use crust_cgroups::stats::{CgroupUsage, nano_cores, read_cgroup};

//! Pod cgroups (crate `crust-cgroups`: [`crust_cgroups::pod`] makes, limits and removes
//! them in every hierarchy; [`crust_cgroups::path`] names them under both drivers).

pub use crust_cgroups::hierarchy::Hierarchies;
pub use crust_cgroups::path::{CgroupDriver, expand_slice, pod_cgroup_path};
pub use crust_cgroups::pod::{
    PodCgroup, PodResources, add_process, create, kill_all, pod_limits, remove, remove_everywhere,
    shares_to_weight,
};

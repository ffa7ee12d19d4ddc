//! CNI: network configuration discovery and plugin invocation.

mod config;
mod exec;

pub use config::{NetworkConfigList, find_network_config};
pub use exec::{
    CachedAttachment, Cni, PluginRunner, ProcessRunner, RunFailure, RunFuture, RuntimeConf,
    result_ips,
};

use std::path::PathBuf;

/// What can go wrong with CNI.
#[derive(Debug, thiserror::Error)]
pub enum CniError {
    /// No usable network configuration in the conf dir; `reason` says why (for NetworkReady).
    #[error("no CNI network config in {dir}: {reason}")]
    NoNetworkConfig { dir: PathBuf, reason: String },
    /// A plugin binary named by the config is in none of the bin dirs.
    #[error("CNI plugin {plugin:?} not found in {dirs:?}")]
    PluginNotFound { plugin: String, dirs: Vec<PathBuf> },
    /// A plugin ran and reported an error (CNI error object or a non-zero exit).
    #[error("CNI plugin {plugin} {command} failed: {message}")]
    Plugin {
        plugin: String,
        command: String,
        message: String,
    },
    /// Writing the result cache failed for lack of space: the path and the bytes left.
    #[error("CNI result cache: {0}")]
    NoSpace(crust_state::NoSpace),
    #[error("CNI I/O: {0}")]
    Io(#[from] std::io::Error),
}

//! Pod sandboxes and containers on the node.

pub mod cni;
mod config;

pub use config::{
    Config, RuntimeHandler, RuntimeKind, commented_default, resolve_binary, runtime_ready,
};

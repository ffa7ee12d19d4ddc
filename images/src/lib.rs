//! Images: references, registry pulls, content store, overlay snapshots.

pub mod config;
pub mod content;
pub mod digest;
pub mod error;
pub mod reference;
pub mod unpack;

pub use config::{Config, RegistryConfig, commented_default};
pub use error::{Error, Result};
pub use reference::Reference;

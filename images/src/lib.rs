//! Images: references, registry pulls, content store, overlay snapshots.
//!
//! ```text
//! <root>/content/blobs/sha256/<hex>   manifests, configs, compressed layers (content.rs)
//! <root>/content/ingest/              downloads in progress
//! <root>/snapshots/<n>/fs             one unpacked layer per chain ID (snapshot.rs)
//! state.redb: images.images, images.snapshots, images.meta
//! ```
//! [`ImageStore`] is the API cri calls (pull, list, status, remove, gc, fs info, and
//! [`ImageStore::reload`] of the registry set-up on SIGHUP); [`Snapshotter`] and
//! [`snapshot::mount`] are what containers use; [`Config`] is the `[images]` section.
//! The registry client (`registry/`), the pull (`store/`) and the layer unpacker
//! (`unpack/`, `tar_reader/`) are private: images/README.md maps them.

mod config;
mod content;
pub mod digest;
mod error;
mod keyed;
mod metrics;
mod reference;
mod registry;
pub mod snapshot;
mod store;
mod tar_reader;
mod unpack;

#[cfg(test)]
mod fuzz;

pub use config::{Config, RegistryConfig, commented_default};
pub use content::{BlobWriter, ContentStore};
pub use error::{Error, Result};
pub use reference::Reference;
pub use registry::Auth;
pub use snapshot::{Mount, Snapshotter};
pub use store::{FsInfo, FsUsage, GcReport, Image, ImageStore};

//! The CRI edge of crust: the gRPC services on the unix socket, the instrument
//! layer, configuration, the state store, metrics and the `crustd` daemon.
//!
//! Linux plumbing lives in `crust-sandbox` and `crust-images`; this crate
//! validates requests, calls them, and maps their typed errors to gRPC codes
//! (in `error.rs`, nowhere else).

pub mod config;
pub mod daemon;
pub mod deadline;
pub mod error;
pub mod instrument;
pub mod logging;
pub mod memory;
pub mod metrics;
pub mod notify;
pub mod reload;
pub mod rootfs;
pub mod rpc;
pub mod server;
pub mod store;
pub mod streaming;
pub mod validate;
pub mod version;

use std::pin::Pin;

use k8s_cri::v1::ContainerEventResponse;

pub const RUNTIME_NAME: &str = "crust";
pub const RUNTIME_VERSION: &str = env!("CARGO_PKG_VERSION");

/// The stream type of GetContainerEvents.
pub type EventStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<ContainerEventResponse, tonic::Status>> + Send>>;

/// Everything the RPCs share: configuration and the services of the other crates.
pub struct Cri {
    pub config: config::Config,
    pub store: store::Store,
    pub pods: crust_sandbox::PodSandboxes,
    pub images: crust_images::ImageStore,
    pub containers: crust_sandbox::container::Containers,
    /// The server behind Exec URLs.
    pub streaming: crust_streaming::Server,
}

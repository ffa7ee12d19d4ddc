//! Talking to registries over the distribution v2 API, with `reqwest`, as a one-way
//! stack (each module imports only those listed before it):
//!
//! ```text
//! tls          CA certificates, client certificate (files read and checked)
//! hosts        containerd's and Docker's host directories (hosts.toml, certs.d)
//! endpoint     where to go (mirrors in order, then the host) and how to connect
//! credentials  what to authenticate with (request, config, credentials file)
//! challenge    what a 401's WWW-Authenticate asks for
//! token        bearer tokens from a token service, kept per endpoint and scope
//! authorize    the Authorization of each request, learnt from 401s
//! client       GET with redirects, 401, 429, errors and retries
//! manifest     manifests and indexes → this node's image manifest
//! blob         configs whole, layers streamed with resume
//! ```

mod authorize;
mod blob;
mod challenge;
mod client;
mod credentials;
mod endpoint;
mod hosts;
mod manifest;
mod tls;
mod token;

pub use authorize::Authorizer;
pub use client::{Policy, RegistryClient};
pub use credentials::{Auth, credentials};
pub use endpoint::{Endpoint, Registries, Transport};
pub use manifest::{Descriptor, Manifest, Resolved};

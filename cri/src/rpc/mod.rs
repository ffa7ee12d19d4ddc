//! One async function per CRI RPC, grouped by what they act on.

pub mod containers;
pub mod images;
pub mod metrics;
pub mod pods;
pub mod runtime;
pub mod stats;
pub mod streaming;

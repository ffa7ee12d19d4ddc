//! SPDY/3.1 as Kubernetes' streaming clients speak it (moby/spdystream): frames,
//! compressed header blocks and the server side of a connection.
//!
//! No crate on crates.io serves SPDY/3.1 over a raw HTTP/1.1 upgrade under a licence
//! crust can ship (the one there is, `spdy-mux`, is GPL-3.0 and a client over
//! WebSocket), so crust has its own.

pub mod conn;
pub mod frame;
#[cfg(test)]
mod fuzz;
pub mod headers;

pub use conn::{Conn, Limits, Stream, StreamReader, StreamWriter};

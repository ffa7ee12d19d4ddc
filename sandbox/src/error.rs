//! The sandbox crate's errors, named by meaning so cri can map them to gRPC codes.

use crust_state::{NoSpace, StateError};

use crate::cni::CniError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    FailedPrecondition(String),
    /// An operation that ran out of its time (ExecSync's timeout).
    #[error("{0}")]
    DeadlineExceeded(String),
    #[error(transparent)]
    Cni(#[from] CniError),
    /// A record the state store holds that this crust cannot use.
    #[error("state store: {0}")]
    Store(String),
    #[error(transparent)]
    State(StateError),
    /// A write failed because the filesystem is full (the state store's too).
    #[error("{0}")]
    NoSpace(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Internal(String),
}

impl From<StateError> for Error {
    fn from(e: StateError) -> Self {
        match e {
            StateError::NoSpace(n) => Error::NoSpace(n.to_string()),
            e => Error::State(e),
        }
    }
}

impl Error {
    /// An I/O error writing `path`: [`Error::NoSpace`] when the filesystem is full.
    pub(crate) fn write(what: &str, path: &std::path::Path, e: std::io::Error) -> Error {
        match NoSpace::from_io(what, path, &e) {
            Some(n) => Error::NoSpace(n.to_string()),
            None => Error::Io(std::io::Error::new(
                e.kind(),
                format!("{what} {}: {e}", path.display()),
            )),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

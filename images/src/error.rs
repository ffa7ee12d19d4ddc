//! The one error type of this crate. Variants are named by meaning so that cri can map
//! each to a gRPC code without looking inside the message.

/// Errors from the images crate. Cheap to clone, so that one failed download can be
/// reported to every pull that waited on it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The caller asked for something malformed (a bad reference, a bad filter).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The image, tag or snapshot does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// The thing exists already (a snapshot key).
    #[error("already exists: {0}")]
    AlreadyExists(String),
    /// The registry refused our credentials.
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    /// The registry could not be reached, dropped us, or stalled; retrying later may work.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The registry limits our requests (429) and asked for a longer wait than a pull
    /// makes: not retried here; the next endpoint may serve, or a later pull.
    #[error("rate limited: {0}")]
    RateLimited(String),
    /// What the registry sent is wrong: a digest mismatch, a truncated blob, an unusable
    /// manifest, or a layer that tries to escape its snapshot.
    #[error("bad content: {0}")]
    BadContent(String),
    /// The operation is not possible in the current state (an image in use, a pinned image).
    #[error("failed precondition: {0}")]
    FailedPrecondition(String),
    /// Local failure: disk, database, kernel.
    #[error("internal: {0}")]
    Internal(String),
}

impl Error {
    pub(crate) fn io(context: impl std::fmt::Display, err: std::io::Error) -> Self {
        Error::Internal(format!("{context}: {err}"))
    }
}

impl From<redb::Error> for Error {
    fn from(e: redb::Error) -> Self {
        Error::Internal(format!("state store: {e}"))
    }
}

macro_rules! redb_from {
    ($($t:ty),*) => {$(
        impl From<$t> for Error {
            fn from(e: $t) -> Self {
                Error::Internal(format!("state store: {e}"))
            }
        }
    )*};
}
redb_from!(
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

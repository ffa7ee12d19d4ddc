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
    /// A write failed because the filesystem is full; the message names the path (and
    /// the space left when known).
    #[error("{0}")]
    NoSpace(String),
    /// Local failure: disk, database, kernel.
    #[error("internal: {0}")]
    Internal(String),
}

impl Error {
    pub(crate) fn io(context: impl std::fmt::Display, err: std::io::Error) -> Self {
        if crust_state::is_no_space(&err) {
            return Error::NoSpace(format!("{context}: {err}"));
        }
        Error::Internal(format!("{context}: {err}"))
    }

    /// An I/O error writing `path`: [`Error::NoSpace`] naming the path and the space left
    /// on its filesystem when the filesystem is full.
    pub(crate) fn write(what: &str, path: &std::path::Path, err: std::io::Error) -> Self {
        match crust_state::NoSpace::from_io(what, path, &err) {
            Some(n) => Error::NoSpace(n.to_string()),
            None => Error::Internal(format!("{what} {}: {err}", path.display())),
        }
    }

    /// Adds the space left on the filesystem of `dir` to a [`Error::NoSpace`] whose
    /// context did not know it (a layer's files, written relative to their snapshot).
    pub(crate) fn with_space_of(self, dir: &std::path::Path) -> Self {
        match self {
            Error::NoSpace(m) if !m.contains("bytes free") => {
                let free = crust_state::free_bytes(dir).map_or_else(
                    || "free space unknown".into(),
                    |b| format!("{b} bytes free"),
                );
                Error::NoSpace(format!("{m} (in {}: {free})", dir.display()))
            }
            e => e,
        }
    }
}

impl From<crust_state::StateError> for Error {
    fn from(e: crust_state::StateError) -> Self {
        match e {
            crust_state::StateError::NoSpace(n) => Error::NoSpace(n.to_string()),
            e => Error::Internal(e.to_string()),
        }
    }
}

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

//! The one place where crust's typed errors become gRPC status codes.

use tonic::{Code, Status};

use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum CriError {
    /// An RPC whose issue has not built it yet.
    #[error("{0} is not implemented by crust yet")]
    Unimplemented(&'static str),
    #[error("{0}")]
    InvalidArgument(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    // Each crate's error joins here with #[from]; its codes are mapped below.
}

pub type CriResult<T> = Result<T, CriError>;

impl From<CriError> for Status {
    fn from(e: CriError) -> Status {
        let code = match &e {
            CriError::Unimplemented(_) => Code::Unimplemented,
            CriError::InvalidArgument(_) => Code::InvalidArgument,
            CriError::Store(_) => Code::Internal,
        };
        Status::new(code, e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unimplemented_names_the_rpc() {
        let s = Status::from(CriError::Unimplemented("RunPodSandbox"));
        assert_eq!(s.code(), Code::Unimplemented);
        assert!(s.message().contains("RunPodSandbox"));
    }
}

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
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Internal(String),
    /// The client's deadline passed before the answer (the instrument layer).
    #[error("{0}")]
    DeadlineExceeded(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Sandbox(#[from] crust_sandbox::Error),
    #[error(transparent)]
    Images(#[from] crust_images::Error),
    // Each crate's error joins here with #[from]; its codes are mapped below.
}

pub type CriResult<T> = Result<T, CriError>;

impl From<CriError> for Status {
    fn from(e: CriError) -> Status {
        let code = match &e {
            CriError::Unimplemented(_) => Code::Unimplemented,
            CriError::InvalidArgument(_) => Code::InvalidArgument,
            CriError::NotFound(_) => Code::NotFound,
            CriError::Internal(_) => Code::Internal,
            CriError::DeadlineExceeded(_) => Code::DeadlineExceeded,
            CriError::Store(StoreError::State(e)) if e.is_no_space() => Code::ResourceExhausted,
            CriError::Store(_) => Code::Internal,
            CriError::Sandbox(e) => sandbox_code(e),
            CriError::Images(e) => images_code(e),
        };
        Status::new(code, e.to_string())
    }
}

fn images_code(e: &crust_images::Error) -> Code {
    use crust_images::Error as E;
    match e {
        E::InvalidArgument(_) => Code::InvalidArgument,
        E::NotFound(_) => Code::NotFound,
        E::AlreadyExists(_) => Code::AlreadyExists,
        E::Unauthenticated(_) => Code::Unauthenticated,
        E::Unavailable(_) => Code::Unavailable,
        E::RateLimited(_) => Code::ResourceExhausted,
        // The node's disk is full: kubelet's image GC and eviction free space, then retry.
        E::NoSpace(_) => Code::ResourceExhausted,
        // Corrupt or hostile registry content: a digest mismatch, an escaping layer.
        E::BadContent(_) => Code::DataLoss,
        E::FailedPrecondition(_) => Code::FailedPrecondition,
        E::Internal(_) => Code::Internal,
    }
}

fn sandbox_code(e: &crust_sandbox::Error) -> Code {
    use crust_sandbox::Error as E;
    use crust_sandbox::cni::CniError;
    match e {
        E::NotFound(_) => Code::NotFound,
        E::AlreadyExists(_) => Code::AlreadyExists,
        E::InvalidArgument(_) => Code::InvalidArgument,
        E::FailedPrecondition(_) => Code::FailedPrecondition,
        E::Cni(CniError::NoNetworkConfig { .. }) => Code::FailedPrecondition,
        E::Cni(CniError::NoSpace(_)) => Code::ResourceExhausted,
        E::DeadlineExceeded(_) => Code::DeadlineExceeded,
        E::NoSpace(_) => Code::ResourceExhausted,
        E::State(e) if e.is_no_space() => Code::ResourceExhausted,
        E::Cni(_) | E::Store(_) | E::State(_) | E::Io(_) | E::Internal(_) => Code::Internal,
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

    #[test]
    fn a_full_disk_is_resource_exhausted_from_every_crate() {
        let full = crust_state::NoSpace {
            what: "write".into(),
            path: "/r/containers/c/config.json".into(),
            free: Some(0),
        };
        let errors = [
            CriError::from(crust_sandbox::Error::NoSpace(full.to_string())),
            CriError::from(crust_sandbox::Error::Cni(
                crust_sandbox::cni::CniError::NoSpace(full.clone()),
            )),
            CriError::from(crust_images::Error::NoSpace(full.to_string())),
            CriError::from(StoreError::State(crust_state::StateError::NoSpace(
                full.clone(),
            ))),
        ];
        for e in errors {
            let s = Status::from(e);
            assert_eq!(s.code(), Code::ResourceExhausted, "{}", s.message());
            assert!(
                s.message()
                    .contains("/r/containers/c/config.json: no space left on device (0 bytes free"),
                "{}",
                s.message()
            );
        }
    }
}

//! What the shim client speaks in: its errors by meaning, spawn settings, a task's stdio,
//! runtime options, create requests, task status and exit.

use std::{
    path::PathBuf,
    time::{Duration, SystemTime},
};

use containerd_shim_protos::{
    protobuf::MessageField,
    ttrpc::{self, Code},
};

use super::{CRI_LOG_SCHEME, ShimFlavour};

/// Errors talking to a shim, named by meaning.
#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    #[error("not found: {0}")]
    NotFound(String),
    #[error("already exists: {0}")]
    AlreadyExists(String),
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("failed precondition: {0}")]
    FailedPrecondition(String),
    /// The shim is gone or not answering.
    #[error("shim unavailable: {0}")]
    Unavailable(String),
    /// Starting the shim process failed.
    #[error("starting shim: {0}")]
    Start(String),
    #[error("shim i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("shim: {0}")]
    Internal(String),
}

pub type Result<T> = std::result::Result<T, ShimError>;

impl From<ttrpc::Error> for ShimError {
    fn from(e: ttrpc::Error) -> Self {
        match e {
            ttrpc::Error::RpcStatus(s) => {
                let msg = s.message().to_string();
                match s.code() {
                    Code::NOT_FOUND => ShimError::NotFound(msg),
                    Code::ALREADY_EXISTS => ShimError::AlreadyExists(msg),
                    Code::INVALID_ARGUMENT => ShimError::InvalidArgument(msg),
                    Code::FAILED_PRECONDITION => ShimError::FailedPrecondition(msg),
                    Code::UNAVAILABLE | Code::DEADLINE_EXCEEDED => ShimError::Unavailable(msg),
                    _ => ShimError::Internal(msg),
                }
            }
            ttrpc::Error::Socket(m) => ShimError::Unavailable(m),
            ttrpc::Error::RemoteClosed | ttrpc::Error::LocalClosed => {
                ShimError::Unavailable("connection closed".into())
            }
            other => ShimError::Internal(other.to_string()),
        }
    }
}

/// How to start shims.
#[derive(Debug, Clone)]
pub struct SpawnConfig {
    /// The shim binary (`crust-shim`, or another shim v2).
    pub binary: PathBuf,
    /// containerd-style namespace passed to the shim (`k8s.io`).
    pub namespace: String,
    /// Directory for the shims' ttrpc sockets (under crust's state dir; at most 42 bytes:
    /// sockets are `<dir>/<sha256 hex>` and a unix socket path holds 107).
    pub socket_dir: PathBuf,
    pub debug: bool,
    /// How long `start` may take.
    pub start_timeout: Duration,
    /// How the binary expects to be started and fed.
    pub flavour: ShimFlavour,
}

impl Default for SpawnConfig {
    fn default() -> Self {
        SpawnConfig {
            binary: PathBuf::from("crust-shim"),
            namespace: "k8s.io".to_string(),
            socket_dir: PathBuf::from("/run/crust/s"),
            debug: false,
            start_timeout: Duration::from_secs(10),
            flavour: ShimFlavour::Crust,
        }
    }
}

/// Where a process's output goes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Output {
    /// Discarded.
    #[default]
    Null,
    /// The shim writes stdout and stderr to this file in the CRI log format.
    CriLog(PathBuf),
    /// Raw bytes into these paths (FIFOs the caller reads, or files).
    Paths {
        stdout: Option<PathBuf>,
        stderr: Option<PathBuf>,
    },
}

/// Stdio of a container's init process or of an exec.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskIo {
    /// A FIFO the caller writes the process's stdin into (attach); `CloseIO` ends it.
    pub stdin: Option<PathBuf>,
    pub output: Output,
    /// Allocate a pty (its output is the `stdout` stream).
    pub terminal: bool,
}

impl TaskIo {
    /// The stdin, stdout and stderr fields of a create or exec request.
    pub(super) fn fields(&self) -> (String, String, String) {
        let p = |p: &Option<PathBuf>| {
            p.as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        };
        let (out, err) = match &self.output {
            Output::Null => (String::new(), String::new()),
            Output::CriLog(path) => (format!("{CRI_LOG_SCHEME}{}", path.display()), String::new()),
            Output::Paths { stdout, stderr } => (p(stdout), p(stderr)),
        };
        (p(&self.stdin), out, err)
    }
}

/// Which OCI runtime the shim drives for a container.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuntimeOptions {
    /// runc-compatible binary (default `runc` from PATH).
    pub binary: Option<String>,
    /// The runtime's state root (`runc --root`); default `/run/crust/runc`.
    pub root: Option<PathBuf>,
    pub systemd_cgroup: bool,
}

/// A mount the shim performs at `<bundle>/rootfs` before creating the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootfsMount {
    pub kind: String,
    pub source: String,
    pub options: Vec<String>,
}

/// A container to create: `bundle` holds `config.json` (and `rootfs` unless mounts are given).
#[derive(Debug, Clone, Default)]
pub struct CreateTask {
    pub id: String,
    pub bundle: PathBuf,
    pub rootfs: Vec<RootfsMount>,
    pub io: TaskIo,
    pub runtime: RuntimeOptions,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskStatus {
    Unknown,
    Created,
    Running,
    Stopped,
    Paused,
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitInfo {
    pub pid: u32,
    /// Exit code, or 128 + signal.
    pub exit_status: u32,
    pub exited_at: Option<SystemTime>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskState {
    pub id: String,
    pub exec_id: String,
    pub pid: u32,
    pub status: TaskStatus,
    pub exit_status: u32,
    pub exited_at: Option<SystemTime>,
    pub bundle: String,
    pub terminal: bool,
}

pub(super) fn to_time(
    t: &MessageField<containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp>,
) -> Option<SystemTime> {
    t.as_ref()
        .filter(|t| t.seconds > 0 || t.nanos > 0)
        .map(|t| {
            std::time::UNIX_EPOCH + Duration::new(t.seconds.max(0) as u64, t.nanos.max(0) as u32)
        })
}

//! The task-runtime seam: what containers need from their pod's shim.
//!
//! [`TaskRuntime`] is implemented by the ttrpc [`ShimClient`] (any shim v2) and, in unit
//! tests, by an in-memory fake (`task::fake`). Pods own the connections
//! ([`crate::PodSandboxes::task_runtime`]): one per pod, made through a [`Connector`] on
//! first use and dropped with the pod or when the shim is lost.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use containerd_shim_protos::cgroups::metrics::Metrics;
use oci_spec::runtime::{LinuxResources, Process};

use crate::pod::PodRecord;
use crate::shim::{CreateTask, ExitInfo, Result, ShimClient, ShimError, TaskIo, TaskState};

/// A pod's tasks: its containers (`exec_id` empty) and their execs.
#[async_trait]
pub trait TaskRuntime: Send + Sync {
    /// Creates and starts a container; its pid.
    async fn create_and_start(&self, t: &CreateTask) -> Result<u32>;
    /// Starts an added exec; its pid.
    async fn start(&self, id: &str, exec_id: &str) -> Result<u32>;
    /// Signals the init (`all`: every process of the container) or an exec.
    async fn kill(&self, id: &str, exec_id: &str, signal: u32, all: bool) -> Result<()>;
    /// Waits, without a timeout, until the process exited.
    async fn wait(&self, id: &str, exec_id: &str) -> Result<ExitInfo>;
    /// Deletes a stopped container or exec.
    async fn delete(&self, id: &str, exec_id: &str) -> Result<ExitInfo>;
    async fn state(&self, id: &str, exec_id: &str) -> Result<TaskState>;
    /// Adds an exec of `process`; [`start`](TaskRuntime::start) runs it.
    async fn exec(&self, id: &str, exec_id: &str, process: &Process, io: &TaskIo) -> Result<()>;
    /// Applies new resources to a running container.
    async fn update(&self, id: &str, resources: &LinuxResources) -> Result<()>;
    /// Reopens the container's CRI log (FailedPrecondition unless it runs with one).
    async fn reopen_log(&self, id: &str) -> Result<()>;
    async fn close_stdin(&self, id: &str, exec_id: &str) -> Result<()>;
    async fn resize_pty(&self, id: &str, exec_id: &str, width: u32, height: u32) -> Result<()>;
    /// cgroup statistics as the shim reads them (crustd reads cgroups itself for CRI stats).
    async fn stats(&self, id: &str) -> Result<Metrics>;
    /// After a crustd restart: copies the container's output into its CRI log again, for
    /// shims that do not write the log themselves.
    fn follow_output(&self, id: &str, bundle: &Path, log_path: Option<&Path>);
    /// CRIU dump of a running container into `images`, left running (CheckpointContainer).
    async fn checkpoint(
        &self,
        id: &str,
        _images: &Path,
        _work: &Path,
        _timeout: Duration,
    ) -> Result<()> {
        Err(ShimError::FailedPrecondition(format!(
            "cannot checkpoint {id}: this task runtime has no checkpoint"
        )))
    }
    /// Creates the container restored from CRIU `images`, so running; its pid.
    async fn restore(&self, t: &CreateTask, _images: &Path) -> Result<u32> {
        Err(ShimError::FailedPrecondition(format!(
            "cannot restore {}: this task runtime has no restore",
            t.id
        )))
    }
}

/// Reaches the task runtime of a pod.
#[async_trait]
pub trait Connector: Send + Sync {
    async fn connect(&self, pod: &PodRecord) -> Result<Arc<dyn TaskRuntime>>;
}

/// The pod's shim, through the address it left in the pod directory.
pub struct ShimConnector;

#[async_trait]
impl Connector for ShimConnector {
    async fn connect(&self, pod: &PodRecord) -> Result<Arc<dyn TaskRuntime>> {
        Ok(Arc::new(ShimClient::reconnect(&pod.dir).await?))
    }
}

#[async_trait]
impl TaskRuntime for ShimClient {
    async fn create_and_start(&self, t: &CreateTask) -> Result<u32> {
        ShimClient::create_and_start(self, t).await
    }
    async fn start(&self, id: &str, exec_id: &str) -> Result<u32> {
        ShimClient::start(self, id, exec_id).await
    }
    async fn kill(&self, id: &str, exec_id: &str, signal: u32, all: bool) -> Result<()> {
        ShimClient::kill(self, id, exec_id, signal, all).await
    }
    async fn wait(&self, id: &str, exec_id: &str) -> Result<ExitInfo> {
        ShimClient::wait(self, id, exec_id).await
    }
    async fn delete(&self, id: &str, exec_id: &str) -> Result<ExitInfo> {
        ShimClient::delete(self, id, exec_id).await
    }
    async fn state(&self, id: &str, exec_id: &str) -> Result<TaskState> {
        ShimClient::state(self, id, exec_id).await
    }
    async fn exec(&self, id: &str, exec_id: &str, process: &Process, io: &TaskIo) -> Result<()> {
        ShimClient::exec(self, id, exec_id, process, io).await
    }
    async fn update(&self, id: &str, resources: &LinuxResources) -> Result<()> {
        ShimClient::update(self, id, resources).await
    }
    async fn reopen_log(&self, id: &str) -> Result<()> {
        ShimClient::reopen_log(self, id).await
    }
    async fn close_stdin(&self, id: &str, exec_id: &str) -> Result<()> {
        ShimClient::close_stdin(self, id, exec_id).await
    }
    async fn resize_pty(&self, id: &str, exec_id: &str, width: u32, height: u32) -> Result<()> {
        ShimClient::resize_pty(self, id, exec_id, width, height).await
    }
    async fn checkpoint(
        &self,
        id: &str,
        images: &Path,
        work: &Path,
        timeout: Duration,
    ) -> Result<()> {
        ShimClient::checkpoint(self, id, images, work, timeout).await
    }
    async fn restore(&self, t: &CreateTask, images: &Path) -> Result<u32> {
        ShimClient::restore(self, t, images).await
    }
    async fn stats(&self, id: &str) -> Result<Metrics> {
        ShimClient::stats(self, id).await
    }
    fn follow_output(&self, id: &str, bundle: &Path, log_path: Option<&Path>) {
        ShimClient::follow_output(self, id, bundle, log_path)
    }
}

#[cfg(test)]
pub mod fake;

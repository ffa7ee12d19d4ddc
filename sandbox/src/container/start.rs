//! StartContainer: a task created and started in the pod's shim, with the CRI log as its
//! output (the shim writes the log itself, so logs keep flowing while crustd is down).
//!
//! Under the pod's op lock with the pod READY: a StopPodSandbox waits for the start (and
//! then stops the container), and a retried StartContainer of the same container finds it
//! no longer CREATED. A failed start leaves the container EXITED with reason `StartError`,
//! as containerd does, and kills whatever the runtime may have started.

use std::time::{Duration, Instant};

use super::record::{ContainerRecord, ContainerState};
use super::{ContainerEventKind, Containers, STDIN_FIFO, now_ns};
use crate::error::{Error, Result};
use crate::shim::{CreateTask, Output, RuntimeOptions, ShimError, TaskIo};
use crate::task::TaskRuntime;

impl Containers {
    /// StartContainer.
    pub async fn start(&self, id: &str) -> Result<()> {
        let pod_id = self.get(id)?.pod_id;
        let (pod, _held) = self.inner.pods.hold_ready(&pod_id).await?;
        let rec = self.get(id)?;
        if rec.state != ContainerState::Created {
            return Err(Error::FailedPrecondition(format!(
                "container {} is {:?}, not CREATED",
                rec.id, rec.state
            )));
        }
        if let Some(u) = super::userns::PodUserns::of(&pod) {
            // Start-up may have tightened the path runc's init walks as the pod's root.
            super::userns::allow_init_in(&self.inner.cfg.state_dir, &rec.bundle, &u.maps)?;
        }
        let stdin = if rec.config.stdin {
            let fifo = rec.bundle.join(STDIN_FIFO);
            match nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)) {
                Ok(()) | Err(nix::errno::Errno::EEXIST) => Some(fifo),
                Err(e) => {
                    return Err(Error::Internal(format!("making the stdin FIFO: {e}")));
                }
            }
        } else {
            None
        };
        let t0 = Instant::now();
        let shim = self.inner.pods.task_runtime(&pod).await?;
        let t_shim = t0.elapsed();
        let task = CreateTask {
            id: rec.id.clone(),
            bundle: rec.bundle.clone(),
            rootfs: Vec::new(),
            io: TaskIo {
                // The shim keeps it open read-write (see STDIN_FIFO).
                stdin,
                output: rec
                    .log_path
                    .clone()
                    .map(Output::CriLog)
                    .unwrap_or(Output::Null),
                terminal: rec.config.tty,
            },
            runtime: RuntimeOptions {
                binary: Some(rec.runtime_binary.clone()),
                root: Some(self.inner.cfg.state_dir.join("runc")),
                systemd_cgroup: self.inner.cfg.systemd_cgroup,
            },
        };
        let timer = super::metrics::OpTimer::new("start");
        // The start time is taken before the process can run, so that a
        // container that exits at once never finishes before it started.
        let started_at = now_ns();
        let started = match super::checkpoint_restore::images_of(&rec.bundle) {
            Some(images) => super::checkpoint_restore::restore(&*shim, &task, &images).await,
            None => shim.create_and_start(&task).await,
        };
        drop(timer);
        tracing::debug!(
            container = %rec.id,
            shim_ms = t_shim.as_secs_f64() * 1e3,
            runtime_ms = (t0.elapsed() - t_shim).as_secs_f64() * 1e3,
            "create and start in the shim"
        );
        match started {
            Ok(pid) => {
                // The exit watch is armed before the record says RUNNING, so
                // no exit can slip between the two.
                let rec = self.inner.update(&rec.id, |r| {
                    r.state = ContainerState::Running;
                    r.pid = pid;
                    r.started_at_ns = started_at;
                })?;
                self.inner.emit(&rec, ContainerEventKind::Started);
                self.inner.clone().watch_exit(rec.id.clone());
                Ok(())
            }
            Err(e) => {
                self.undo_start(&rec, shim.as_ref()).await;
                let rec = self.inner.update(&rec.id, |r| {
                    r.state = ContainerState::Exited;
                    r.finished_at_ns = now_ns();
                    r.exit_code = 128;
                    r.reason = "StartError".into();
                    r.message = e.to_string();
                })?;
                self.inner.emit(&rec, ContainerEventKind::Stopped);
                Err(Error::from(e))
            }
        }
    }

    /// The process may run although the start failed (a create and start that timed out):
    /// it must not live on unrecorded.
    async fn undo_start(&self, rec: &ContainerRecord, shim: &dyn TaskRuntime) {
        let _ = shim.kill(&rec.id, "", libc::SIGKILL as u32, true).await;
        let _ = tokio::time::timeout(Duration::from_secs(10), shim.wait(&rec.id, "")).await;
        if !matches!(
            shim.delete(&rec.id, "").await,
            Ok(_) | Err(ShimError::NotFound(_))
        ) {
            self.inner.force_delete(rec).await;
        }
    }
}

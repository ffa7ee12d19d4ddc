//! StopContainer: the image's StopSignal (else SIGTERM), `timeout` seconds, then SIGKILL to
//! every process of the container; timeout 0 is SIGKILL at once. Idempotent; an unknown
//! container is success.
//!
//! An UNKNOWN container is first asked for through its shim (a passing error may have made
//! it UNKNOWN): if the shim runs it, it is RUNNING again and stops gracefully; otherwise
//! its process, if any, is killed with `runc delete --force` in the runtime state root kept
//! in its record, and it is recorded EXITED with 255 and reason `Unknown`.

use std::time::{Duration, SystemTime};

/// How long a stop waits for killed processes to leave the container's cgroup.
const CGROUP_DRAIN: Duration = Duration::from_secs(2);

use super::Containers;
use super::record::{ContainerRecord, ContainerState};
use crate::error::{Error, Result};
use crate::shim::{ShimError, TaskStatus};

impl Containers {
    /// StopContainer: the stop signal, `timeout` seconds, then SIGKILL.
    /// Unknown containers and containers not running are success.
    pub async fn stop(&self, id: &str, timeout: Duration) -> Result<()> {
        let Some(full) = self.inner.records.resolve(id)? else {
            return Ok(());
        };
        let Some(rec) = self.inner.records.find(&full) else {
            return Ok(());
        };
        let rec = if rec.state == ContainerState::Unknown {
            match self.settle_unknown(rec).await? {
                Some(rec) => rec,
                None => return Ok(()),
            }
        } else {
            rec
        };
        if rec.state != ContainerState::Running {
            return Ok(());
        }
        self.stop_running(rec, timeout).await?;
        // The shim lost on the way (unreachable, or the exit signal was its loss: the watch
        // marked the container UNKNOWN) stopped nothing: what is left is settled as for an
        // UNKNOWN container, so that an OK means nothing of the container runs.
        if let Some(rec) = self.inner.records.find(&full)
            && rec.state == ContainerState::Unknown
            && let Some(rec) = self.settle_unknown(rec).await?
        {
            // Its shim runs it after all: killed now.
            self.stop_running(rec, Duration::ZERO).await?;
        }
        Ok(())
    }

    /// The stop signal, `timeout` seconds, then SIGKILL, through the pod's shim.
    async fn stop_running(&self, rec: ContainerRecord, timeout: Duration) -> Result<()> {
        let _timer = super::metrics::OpTimer::new("stop");
        let pod = self.inner.pods.get(&rec.pod_id)?;
        let shim = match self.inner.pods.task_runtime(&pod).await {
            Ok(s) => s,
            Err(e) => {
                self.inner.mark_unknown(&rec.id, &e.to_string());
                return Ok(());
            }
        };
        let mut exited = self.inner.exit_receiver(&rec.id);
        if !timeout.is_zero() {
            let signal = rec
                .stop_signal
                .as_deref()
                .and_then(parse_signal)
                .unwrap_or(libc::SIGTERM);
            match shim.kill(&rec.id, "", signal as u32, false).await {
                Ok(()) => {}
                Err(ShimError::NotFound(_)) => return Ok(()),
                Err(e) => tracing::warn!(container = %rec.id, error = %e, "stop signal"),
            }
            if tokio::time::timeout(timeout, exited.wait_for(|e| *e))
                .await
                .is_ok()
            {
                // Not waited for: what the init left in a shared PID namespace was not
                // killed (a container of its own loses the rest with its init).
                return Ok(());
            }
            tracing::info!(container = %rec.id, "did not stop within {timeout:?}; SIGKILL");
        }
        match shim.kill(&rec.id, "", libc::SIGKILL as u32, true).await {
            Ok(()) | Err(ShimError::NotFound(_)) => {}
            Err(e) => return Err(e.into()),
        }
        // SIGKILL cannot be ignored; the bound is for a wedged shim.
        if tokio::time::timeout(Duration::from_secs(30), exited.wait_for(|e| *e))
            .await
            .is_err()
        {
            return Err(Error::Internal(format!(
                "container {} did not exit after SIGKILL",
                rec.id
            )));
        }
        self.wait_cgroup_empty(&rec).await;
        Ok(())
    }

    /// After SIGKILL to all of them (or `runc delete --force`) the init's exit is reported
    /// once it is reaped; the container's other processes may still be leaving its cgroup. Waits (briefly, bounded) until none
    /// is left, so that StopContainer's OK means nothing of the container runs.
    async fn wait_cgroup_empty(&self, rec: &ContainerRecord) {
        let Some(h) = self.inner.pods.hierarchies() else {
            return;
        };
        let Some(path) = crust_cgroups::path::cgroupfs_path(&rec.cgroups_path) else {
            return;
        };
        let deadline = std::time::Instant::now() + CGROUP_DRAIN;
        loop {
            let left = crust_cgroups::pod::procs(h, &path);
            if left.is_empty() {
                return;
            }
            if std::time::Instant::now() > deadline {
                tracing::warn!(container = %rec.id, ?left, "processes still in the stopped container's cgroup");
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// An UNKNOWN container: RUNNING again when its shim still runs it (returned, to be
    /// stopped), else whatever is left is killed and it is EXITED (None).
    async fn settle_unknown(&self, rec: ContainerRecord) -> Result<Option<ContainerRecord>> {
        let running = match self.inner.pods.get(&rec.pod_id) {
            Ok(pod) => match self.inner.pods.task_runtime(&pod).await {
                Ok(shim) => shim
                    .state(&rec.id, "")
                    .await
                    .is_ok_and(|s| s.status == TaskStatus::Running),
                Err(_) => false,
            },
            Err(_) => false,
        };
        if !running {
            // Its shim is gone, its process maybe not: the runtime kills
            // what is left; how it would have exited is not known.
            self.inner.force_delete(&rec).await;
            self.wait_cgroup_empty(&rec).await;
            self.inner
                .record_exit(&rec.id, 255, Some(SystemTime::now()));
            let _ = self.inner.update(&rec.id, |r| r.reason = "Unknown".into());
            return Ok(None);
        }
        let rec = self
            .inner
            .update(&rec.id, |r| r.state = ContainerState::Running)?;
        // The exit signal UNKNOWN fired is taken back: it runs again.
        if let Some(tx) = self.inner.exits_lock().get(&rec.id) {
            tx.send_replace(false);
        }
        self.inner.clone().watch_exit(rec.id.clone());
        Ok(Some(rec))
    }
}

/// `SIGTERM`, `TERM`, `15` → the signal number.
pub fn parse_signal(s: &str) -> Option<i32> {
    if let Ok(n) = s.parse::<i32>() {
        return (1..=64).contains(&n).then_some(n);
    }
    let name = s.to_uppercase();
    let name = name.strip_prefix("SIG").unwrap_or(&name);
    let sig: nix::sys::signal::Signal = format!("SIG{name}").parse().ok()?;
    Some(sig as i32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_parse_by_name_and_number() {
        assert_eq!(parse_signal("SIGTERM"), Some(libc::SIGTERM));
        assert_eq!(parse_signal("quit"), Some(libc::SIGQUIT));
        assert_eq!(parse_signal("9"), Some(9));
        assert_eq!(parse_signal("SIGNOPE"), None);
        assert_eq!(parse_signal("0"), None);
    }
}

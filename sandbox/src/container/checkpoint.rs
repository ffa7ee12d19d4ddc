//! CheckpointContainer: a CRIU dump of a running container, taken through its
//! pod's shim (the task API's `Checkpoint`, `runc checkpoint --leave-running`)
//! and written with its spec, config, status, log and writable layer as the
//! archive CRI-O and containerd write ([`super::checkpoint_archive`]). The
//! container keeps running.
//!
//! CRIU is asked each time (checkpoints are rare) whether it is installed and
//! whether `criu check` passes on this kernel: if not, FailedPrecondition
//! carrying CRIU's own error (Debian's criu 3.17 fails on kernel 6.18).

use std::{
    path::Path,
    process::Command,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use super::{
    ContainerRecord, Containers,
    checkpoint_archive::{self as archive, ConfigDump, Staging},
};
use crate::{Error, Result};

/// The bound on a checkpoint whose request gives no timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

/// Whether CRIU can checkpoint here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Criu {
    /// No `criu` binary in PATH.
    Missing,
    /// `criu check` failed; its own error lines.
    Unusable(String),
    /// `criu check` passed.
    Usable,
}

/// Runs `criu check`.
pub fn criu() -> Criu {
    let Some(bin) = crate::resolve_binary(std::path::Path::new("criu")) else {
        return Criu::Missing;
    };
    match Command::new(&bin).arg("check").output() {
        Err(e) => Criu::Unusable(format!("running {}: {e}", bin.display())),
        Ok(o) if o.status.success() => Criu::Usable,
        Ok(o) => Criu::Unusable(check_errors(
            &String::from_utf8_lossy(&o.stderr),
            &String::from_utf8_lossy(&o.stdout),
        )),
    }
}

/// FailedPrecondition unless CRIU works here.
async fn require_criu() -> Result<()> {
    let criu = tokio::task::spawn_blocking(criu)
        .await
        .map_err(|e| Error::Internal(format!("criu check task: {e}")))?;
    match criu {
        Criu::Usable => Ok(()),
        Criu::Missing => Err(Error::FailedPrecondition(
            "cannot checkpoint: criu is not installed on this node".to_string(),
        )),
        Criu::Unusable(e) => Err(Error::FailedPrecondition(format!(
            "cannot checkpoint: criu does not work on this node: {e}"
        ))),
    }
}

/// RFC 3339 UTC time of nanoseconds since the epoch.
fn rfc3339(ns: i64) -> String {
    crust_crilog::rfc3339_nano(UNIX_EPOCH + Duration::from_nanos(ns.max(0) as u64))
}

fn config_dump(r: &ContainerRecord, now: SystemTime) -> ConfigDump {
    ConfigDump {
        id: r.id.clone(),
        name: r.name().to_string(),
        rootfs_image: r.image.clone(),
        rootfs_image_ref: r.image_ref.clone(),
        rootfs_image_name: r.image.clone(),
        runtime: r.runtime_binary.clone(),
        created_time: rfc3339(r.created_at_ns),
        checkpointed_time: crust_crilog::rfc3339_nano(now),
    }
}

impl Containers {
    /// CheckpointContainer: dumps the running container `id` and writes the
    /// archive at `location` within `timeout` (zero: [`DEFAULT_TIMEOUT`]).
    /// `status_dump` is its CRI status as JSON. A failed, timed-out or
    /// abandoned checkpoint leaves no archive and no staging files.
    pub async fn checkpoint(
        &self,
        id: &str,
        location: &Path,
        timeout: Duration,
        status_dump: Vec<u8>,
    ) -> Result<()> {
        let (rec, shim) = self.running(id).await?;
        archive::check_location(location)?;
        require_criu().await?;
        let timeout = if timeout.is_zero() {
            DEFAULT_TIMEOUT
        } else {
            timeout
        };
        let upper = self.writable_layer(&rec.id).ok_or_else(|| {
            Error::Internal(format!("container {} has no writable layer", rec.id))
        })?;
        let staging = Staging::new(location, &crate::registry::new_id()?[..12])?;
        let work = async {
            shim.checkpoint(&rec.id, &staging.images(), &staging.work(), timeout)
                .await?;
            let now = SystemTime::now();
            tokio::task::spawn_blocking(move || {
                write_archive(staging, &rec, &upper, now, &status_dump)
            })
            .await
            .map_err(|e| Error::Internal(format!("checkpoint archive task: {e}")))?
        };
        tokio::time::timeout(timeout, work).await.map_err(|_| {
            Error::DeadlineExceeded(format!(
                "checkpoint of container {id} did not finish within {timeout:?}"
            ))
        })?
    }
}

/// Everything but CRIU's images, then the tar renamed into place.
fn write_archive(
    staging: Staging,
    rec: &ContainerRecord,
    upper: &Path,
    now: SystemTime,
    status_dump: &[u8],
) -> Result<()> {
    staging.keep_criu_files()?;
    let config = serde_json::to_vec_pretty(&config_dump(rec, now))
        .map_err(|e| Error::Internal(e.to_string()))?;
    staging.write(archive::CONFIG_DUMP, &config)?;
    staging.copy(&rec.bundle.join("config.json"), archive::SPEC_DUMP)?;
    staging.write(archive::STATUS_DUMP, status_dump)?;
    if let Some(log) = rec.log_path.as_deref().filter(|p| p.is_file()) {
        staging.copy(log, archive::CONTAINER_LOG)?;
    }
    staging.write_rootfs_diff(upper)?;
    staging.finish()
}

/// CRIU's `Error (...)` lines, else the last lines it printed.
fn check_errors(stderr: &str, stdout: &str) -> String {
    let all: Vec<&str> = stderr
        .lines()
        .chain(stdout.lines())
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let errors: Vec<&str> = all
        .iter()
        .copied()
        .filter(|l| l.starts_with("Error"))
        .collect();
    let chosen = if errors.is_empty() {
        &all[all.len().saturating_sub(3)..]
    } else {
        &errors[..]
    };
    if chosen.is_empty() {
        "criu check failed without a message".into()
    } else {
        chosen.join("; ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn criu_errors_are_its_error_lines() {
        let stderr = "Warn (x): something\nError (criu/vdso.c:613): vdso: Failed to fill self vdso symtable\nError (criu/crtools.c:260): Could not initialize kernel features detection.\n";
        assert_eq!(
            check_errors(stderr, ""),
            "Error (criu/vdso.c:613): vdso: Failed to fill self vdso symtable; Error (criu/crtools.c:260): Could not initialize kernel features detection."
        );
        assert_eq!(check_errors("a\nb\nc\nd\n", ""), "b; c; d");
        assert_eq!(check_errors("", ""), "criu check failed without a message");
    }
}

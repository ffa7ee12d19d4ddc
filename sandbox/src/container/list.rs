//! ContainerStatus, ListContainers and the stats of containers and pods.
//!
//! Stats read the cgroup files directly (`stats.rs`): working set = usage − inactive file,
//! the CPU rate from the previous sample of the same cgroup; the writable layer's bytes
//! and inodes come from the snapshot's upper dir (the `Rootfs::usage` seam).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::record::{ContainerRecord, ContainerState};
use super::stats::{CgroupUsage, cgroupfs_path, nano_cores, read_cgroup};
use super::{Containers, Inner, now_ns};
use crate::error::{Error, Result};
use crate::pod::PodRecord;
use crate::task::TaskRuntime;

/// ListContainers filter; every set field must match.
#[derive(Debug, Clone, Default)]
pub struct ContainerFilter {
    pub id: String,
    pub pod_id: String,
    pub state: Option<ContainerState>,
    pub labels: HashMap<String, String>,
}

/// A container's resource usage, for the stats RPCs.
#[derive(Debug, Clone)]
pub struct ContainerUsage {
    pub record: ContainerRecord,
    /// None unless the container is running.
    pub cgroup: Option<CgroupUsage>,
    /// (bytes, inodes) of its writable layer.
    pub writable: Option<(u64, u64)>,
}

impl Containers {
    /// Full id for a full id or unique prefix.
    pub fn resolve(&self, id: &str) -> Result<Option<String>> {
        self.inner.records.resolve(id)
    }

    pub fn get(&self, id: &str) -> Result<ContainerRecord> {
        self.inner.records.get(id)
    }

    pub fn list(&self, f: &ContainerFilter) -> Result<Vec<ContainerRecord>> {
        let id = if f.id.is_empty() {
            None
        } else {
            match self.inner.records.resolve(&f.id) {
                Ok(Some(id)) => Some(id),
                // An id that matches nothing (or too much) filters everything out.
                _ => return Ok(Vec::new()),
            }
        };
        let pod_id = if f.pod_id.is_empty() {
            None
        } else {
            match self.inner.pods.get(&f.pod_id) {
                Ok(p) => Some(p.id),
                Err(_) => return Ok(Vec::new()),
            }
        };
        let mut out = self.inner.records.filter(|r| {
            id.as_ref().is_none_or(|i| &r.id == i)
                && pod_id.as_ref().is_none_or(|p| &r.pod_id == p)
                && f.state.is_none_or(|s| r.state == s)
                && f.labels
                    .iter()
                    .all(|(k, v)| r.config.labels.get(k) == Some(v))
        });
        out.sort_by_key(|r| r.created_at_ns);
        Ok(out)
    }

    /// Ids of every container of a pod (StopPodSandbox, RemovePodSandbox).
    pub fn of_pod(&self, pod_id: &str) -> Vec<String> {
        self.inner
            .records
            .filter(|r| r.pod_id == pod_id)
            .into_iter()
            .map(|r| r.id)
            .collect()
    }

    /// Usage of the containers the filter selects (ContainerStats, ListContainerStats).
    pub async fn stats(&self, f: &ContainerFilter) -> Result<Vec<ContainerUsage>> {
        let records = self.list(f)?;
        let inner = self.inner.clone();
        // Cgroup files and the walk of writable layers: blocking file work,
        // off the async workers.
        tokio::task::spawn_blocking(move || {
            let now = now_ns();
            records
                .into_iter()
                .map(|record| ContainerUsage {
                    cgroup: (record.state == ContainerState::Running)
                        .then(|| inner.cgroup_usage(&record.id, &record.cgroups_path, now))
                        .flatten(),
                    writable: inner.rootfs.usage(&record.id),
                    record,
                })
                .collect()
        })
        .await
        .map_err(|e| Error::Internal(format!("stats task: {e}")))
    }

    /// Usage of a pod's own cgroup (PodSandboxStats), when it has one.
    pub fn pod_usage(&self, pod: &PodRecord) -> Option<CgroupUsage> {
        let cg = pod.cgroup.as_ref()?;
        self.inner
            .cgroup_usage(&format!("pod:{}", pod.id), &cg.path, now_ns())
    }

    /// The directory of what the container wrote to its root filesystem.
    pub(crate) fn writable_layer(&self, id: &str) -> Option<PathBuf> {
        self.inner.rootfs.upper_dir(id)
    }

    /// A running container and its pod's task runtime; FailedPrecondition when not running.
    pub(crate) async fn running(
        &self,
        id: &str,
    ) -> Result<(ContainerRecord, Arc<dyn TaskRuntime>)> {
        let rec = self.get(id)?;
        if rec.state != ContainerState::Running {
            return Err(Error::FailedPrecondition(format!(
                "container {} is not running",
                rec.id
            )));
        }
        let pod = self.inner.pods.get(&rec.pod_id)?;
        let shim = self.inner.pods.task_runtime(&pod).await?;
        Ok((rec, shim))
    }
}

impl Inner {
    /// Reads a cgroup and works out its CPU rate from the previous sample.
    fn cgroup_usage(&self, key: &str, cgroups_path: &str, now: i64) -> Option<CgroupUsage> {
        let path = cgroupfs_path(cgroups_path)?;
        let mut u = read_cgroup(Path::new(crust_cgroups::ROOT), &path, now);
        if let Some(cpu) = u.cpu_usage_ns {
            let mut samples = self.cpu_samples.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(prev) = samples.insert(key.to_string(), (now, cpu)) {
                u.cpu_nano_cores = nano_cores(prev, (now, cpu));
            }
        }
        Some(u)
    }
}

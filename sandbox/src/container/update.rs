//! UpdateContainerResources and ReopenContainerLog.
//!
//! An update merges what kubelet sets into the current resources (a sparse update keeps the
//! rest; hugepage limits merge by page size, as runc applies them), sends the limits to the
//! shim (runc update) of a running container and rewrites them in `config.json`, leaving its
//! device rules alone.

use k8s_cri::v1::LinuxContainerResources;
use oci_spec::runtime::LinuxResources;

use super::Containers;
use super::bundle::{read_spec, write_spec};
use super::record::ContainerState;
use super::spec;
use crate::error::{Error, Result};

impl Containers {
    /// UpdateContainerResources on a running or created container.
    pub async fn update_resources(
        &self,
        id: &str,
        resources: &LinuxContainerResources,
    ) -> Result<()> {
        let rec = self.get(id)?;
        if !matches!(rec.state, ContainerState::Running | ContainerState::Created) {
            return Err(Error::FailedPrecondition(format!(
                "container {} is not running",
                rec.id
            )));
        }
        let mut config = rec.config.clone();
        let linux = config.linux.get_or_insert_with(Default::default);
        // kubelet may send only what changes (the CPU manager sends a cpuset
        // alone): what it leaves unset keeps its value.
        let merged = merge_resources(linux.resources.take().unwrap_or_default(), resources);
        linux.resources = Some(merged);
        let r: LinuxResources = serde_json::from_value(spec::resources_json(linux)?)
            .map_err(|e| Error::Internal(format!("resources: {e}")))?;
        if rec.state == ContainerState::Running {
            let pod = self.inner.pods.get(&rec.pod_id)?;
            let shim = self.inner.pods.task_runtime(&pod).await?;
            shim.update(&rec.id, &r).await?;
        }
        // Keep the bundle and the record in step with what was applied; the
        // device rules in config.json stay as they are.
        let mut oci = read_spec(&rec.bundle)?;
        if let Some(linux) = oci.linux_mut()
            && let Some(old) = linux.resources().clone()
        {
            linux.set_resources(Some(overlay(old, r)));
        }
        write_spec(&rec.bundle, &oci)?;
        self.inner.update(&rec.id, |r| r.config = config)?;
        Ok(())
    }

    /// ReopenContainerLog: only for a running container.
    pub async fn reopen_log(&self, id: &str) -> Result<()> {
        let (rec, shim) = self.running(id).await?;
        shim.reopen_log(&rec.id).await?;
        Ok(())
    }
}

/// Every part `new` has replaces the old one, devices excepted.
fn overlay(mut old: LinuxResources, new: LinuxResources) -> LinuxResources {
    macro_rules! take {
        ($($get:ident => $set:ident),*) => {$(
            if new.$get().is_some() {
                old.$set(new.$get().clone());
            }
        )*};
    }
    take!(cpu => set_cpu, block_io => set_block_io, hugepage_limits => set_hugepage_limits,
        network => set_network, rdma => set_rdma, unified => set_unified);
    if new.memory().is_some() {
        old.set_memory(*new.memory());
    }
    if new.pids().is_some() {
        old.set_pids(*new.pids());
    }
    old
}

/// `new` over `old`: every field `new` sets (non-zero, non-empty) replaces
/// the old value, the rest is kept.
fn merge_resources(
    mut old: LinuxContainerResources,
    new: &LinuxContainerResources,
) -> LinuxContainerResources {
    macro_rules! set {
        ($($field:ident),*) => {$(
            if new.$field != 0 {
                old.$field = new.$field;
            }
        )*};
    }
    set!(
        cpu_period,
        cpu_quota,
        cpu_shares,
        memory_limit_in_bytes,
        memory_swap_limit_in_bytes,
        oom_score_adj
    );
    if !new.cpuset_cpus.is_empty() {
        old.cpuset_cpus = new.cpuset_cpus.clone();
    }
    if !new.cpuset_mems.is_empty() {
        old.cpuset_mems = new.cpuset_mems.clone();
    }
    // Per page size: runc update changes the sizes it is given and leaves the
    // others' cgroup limits as they were, and so does the record.
    for h in &new.hugepage_limits {
        match old
            .hugepage_limits
            .iter_mut()
            .find(|o| o.page_size == h.page_size)
        {
            Some(o) => o.limit = h.limit,
            None => old.hugepage_limits.push(h.clone()),
        }
    }
    old.unified
        .extend(new.unified.iter().map(|(k, v)| (k.clone(), v.clone())));
    old
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_updates_keep_what_they_do_not_set() {
        let old = LinuxContainerResources {
            cpu_shares: 512,
            memory_limit_in_bytes: 64 << 20,
            cpuset_cpus: "0".into(),
            ..Default::default()
        };
        let new = LinuxContainerResources {
            cpuset_cpus: "1".into(),
            ..Default::default()
        };
        let m = merge_resources(old, &new);
        assert_eq!(m.cpu_shares, 512);
        assert_eq!(m.memory_limit_in_bytes, 64 << 20);
        assert_eq!(m.cpuset_cpus, "1");
    }

    #[test]
    fn resource_updates_merge_hugepage_limits_by_page_size() {
        use k8s_cri::v1::{HugepageLimit, LinuxContainerConfig};
        let hp = |page_size: &str, limit: u64| HugepageLimit {
            page_size: page_size.into(),
            limit,
        };
        let old = LinuxContainerResources {
            memory_limit_in_bytes: 64 << 20,
            hugepage_limits: vec![hp("2MB", 4 << 20), hp("1GB", 1 << 30)],
            ..Default::default()
        };
        // An update without hugepages (the CPU manager's cpuset) keeps them.
        let kept = merge_resources(
            old.clone(),
            &LinuxContainerResources {
                cpuset_cpus: "1".into(),
                ..Default::default()
            },
        );
        assert_eq!(kept.hugepage_limits, old.hugepage_limits);
        assert_eq!(kept.cpuset_cpus, "1");
        // An update with hugepages changes the sizes it names, keeps the others
        // (as runc update leaves their cgroup limits), adds new ones, and keeps
        // what it does not set.
        let m = merge_resources(
            old.clone(),
            &LinuxContainerResources {
                hugepage_limits: vec![hp("2MB", 8 << 20), hp("16KB", 0)],
                ..Default::default()
            },
        );
        assert_eq!(
            m.hugepage_limits,
            [hp("2MB", 8 << 20), hp("1GB", 1 << 30), hp("16KB", 0)]
        );
        assert_eq!(m.memory_limit_in_bytes, 64 << 20);
        // And runc is handed the merged limits.
        let r = spec::resources_json(&LinuxContainerConfig {
            resources: Some(m),
            ..Default::default()
        })
        .expect("resources");
        assert_eq!(
            r["hugepageLimits"],
            serde_json::json!([
                {"pageSize": "2MB", "limit": 8 << 20},
                {"pageSize": "1GB", "limit": 1u64 << 30},
                {"pageSize": "16KB", "limit": 0},
            ])
        );
        assert_eq!(r["memory"]["limit"], 64 << 20);
    }

    #[test]
    fn an_update_keeps_the_device_rules_and_what_it_does_not_name() {
        let old: LinuxResources = serde_json::from_value(serde_json::json!({
            "devices": [{"allow": false, "access": "rwm"}],
            "pids": {"limit": 10},
            "memory": {"limit": 1}
        }))
        .unwrap();
        let new: LinuxResources =
            serde_json::from_value(serde_json::json!({"memory": {"limit": 2}})).unwrap();
        let m = serde_json::to_value(overlay(old, new)).unwrap();
        assert_eq!(m["memory"]["limit"], 2);
        assert_eq!(m["pids"]["limit"], 10);
        assert_eq!(m["devices"][0]["access"], "rwm");
    }
}

//! Leftovers of creates a crashed crustd never finished: a pod directory (pins, shm, shim,
//! cgroup) or a CNI cache entry (an IPAM lease) that no record owns. They are listed once at
//! start, before any RPC can begin a new create, and released in the background.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::Inner;
use crate::cgroup::{self, PodCgroup};
use crate::cni::RuntimeConf;
use crate::namespaces;

/// Where a create in progress records its cgroup, so a crash does not lose it.
pub(super) const CGROUP_FILE: &str = "cgroup.json";

#[derive(Debug, Default)]
pub(super) struct Orphans {
    pub dirs: Vec<PathBuf>,
    pub cni: Vec<String>,
    /// CNI cache entries written aside whose rename a crash cut short (`<id>.json.tmp`).
    pub temps: Vec<PathBuf>,
}

impl Orphans {
    pub fn is_empty(&self) -> bool {
        self.dirs.is_empty() && self.cni.is_empty() && self.temps.is_empty()
    }
}

pub(super) fn find(state_dir: &Path, cni_cache: &Path, pods: &HashSet<String>) -> Orphans {
    let names = |dir: &Path| -> Vec<(String, PathBuf)> {
        std::fs::read_dir(dir)
            .map(|d| {
                d.filter_map(Result::ok)
                    .filter_map(|e| Some((e.file_name().to_str()?.to_string(), e.path())))
                    .collect()
            })
            .unwrap_or_default()
    };
    let cache = names(cni_cache);
    Orphans {
        temps: cache
            .iter()
            .filter(|(name, _)| name.ends_with(".json.tmp"))
            .map(|(_, p)| p.clone())
            .collect(),
        dirs: names(&state_dir.join("pods"))
            .into_iter()
            .filter(|(id, _)| !pods.contains(id))
            .map(|(_, p)| p)
            .collect(),
        cni: cache
            .into_iter()
            .filter_map(|(name, _)| name.strip_suffix(".json").map(str::to_string))
            .filter(|id| !pods.contains(id))
            .collect(),
    }
}

pub(super) async fn release(inner: Arc<Inner>, orphans: Orphans) {
    // Found before any RPC could begin a write: none is in progress.
    for t in &orphans.temps {
        tracing::warn!(file = %t.display(), "removing a CNI cache entry a crash left half-renamed");
        let _ = std::fs::remove_file(t);
    }
    for dir in orphans.dirs {
        let id = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        tracing::warn!(pod = %id, "releasing what an unfinished create left");
        let shim_pid = std::fs::read_to_string(dir.join("shim.pid"))
            .ok()
            .and_then(|p| p.trim().parse().ok());
        super::shim::stop_shim(&id, &dir, shim_pid).await;
        let hierarchies = inner.hierarchies.clone();
        let done = tokio::task::spawn_blocking(move || {
            if let Some(cg) = std::fs::read(dir.join(CGROUP_FILE))
                .ok()
                .and_then(|b| serde_json::from_slice::<PodCgroup>(&b).ok())
            {
                if let Some(h) = &hierarchies {
                    // The infra process is the only thing a pod cgroup holds before READY.
                    cgroup::kill_all(h, &cg.path);
                }
                if let Err(e) = cgroup::remove(&cg) {
                    tracing::warn!(error = %e, "orphan pod cgroup");
                }
            }
            if let Err(e) = namespaces::unmount_all_below(&dir) {
                tracing::warn!(error = %e, "orphan mount");
            }
            if let Err(e) = std::fs::remove_dir_all(&dir) {
                tracing::warn!(dir = %dir.display(), error = %e, "orphan pod dir");
            }
        })
        .await;
        if let Err(e) = done {
            tracing::warn!(error = %e, "orphan cleanup task");
        }
    }
    for id in orphans.cni {
        if let Err(e) = inner.cni.del(&id, None, &RuntimeConf::default()).await {
            tracing::warn!(pod = %id, error = %e, "CNI DEL of an unfinished create");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cni_cache_temps_are_leftovers_whoever_owns_the_pod() {
        let state = tempfile::tempdir().unwrap();
        let cache = tempfile::tempdir().unwrap();
        for name in ["a.json", "a.json.tmp", "b.json", "b.json.tmp"] {
            std::fs::write(cache.path().join(name), b"{}").unwrap();
        }
        let pods: HashSet<String> = ["a".to_string()].into();
        let o = find(state.path(), cache.path(), &pods);
        assert_eq!(o.cni, vec!["b".to_string()]);
        let mut temps: Vec<String> = o
            .temps
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        temps.sort();
        assert_eq!(temps, ["a.json.tmp", "b.json.tmp"]);
        assert!(!o.is_empty());
    }
}

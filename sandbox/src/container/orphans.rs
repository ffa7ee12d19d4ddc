//! What a crash left, removed at start before any RPC is served: bundles in the trash (a
//! removal whose background cleanup did not finish), and what a create cut short left
//! without a record — a bundle directory, a mounted rootfs, a writable snapshot.

use std::collections::HashSet;

use super::Inner;
use super::bundle::{bundles_dir, read_spec, release_rootfs, remove_tree};
use super::record::ContainerRecord;
use super::remove::{REMOVED_RECORD, clean_up, trash_dir};

impl Inner {
    pub(super) fn remove_orphans(&self) {
        self.empty_trash();
        // Every id the store holds, also a record it could not read: such a
        // container may well be running on its rootfs.
        let mut known: HashSet<String> = self
            .records
            .filter(|_| true)
            .into_iter()
            .map(|r| r.id)
            .collect();
        match self.records.table().keys() {
            Ok(ids) => known.extend(ids),
            Err(e) => {
                tracing::warn!(error = %e, "listing container records; no orphan removed");
                return;
            }
        }
        let dir = bundles_dir(&self.cfg.state_dir);
        let mut orphans: HashSet<String> = std::fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        match self.rootfs.keys() {
            Ok(keys) => orphans.extend(keys),
            Err(e) => tracing::warn!(error = %e, "listing container snapshots"),
        }
        for id in orphans.difference(&known) {
            let bundle = dir.join(id);
            match release_rootfs(self.rootfs.as_ref(), id, &bundle.join("rootfs")) {
                Ok(()) => match remove_tree(&bundle) {
                    Err(e) => {
                        tracing::warn!(container = %id, error = %e, "removing an orphan bundle")
                    }
                    Ok(()) => {
                        tracing::info!(container = %id, "removed what a cut-short create left")
                    }
                },
                Err(e) => tracing::warn!(container = %id, error = %e, "releasing an orphan rootfs"),
            }
        }
    }

    /// Finishes the removals a crash cut short: each bundle in the trash has its rootfs
    /// unmounted, its snapshot, cgroups (from its `config.json`) and tree removed.
    fn empty_trash(&self) {
        let trash = trash_dir(&self.cfg.state_dir);
        for entry in std::fs::read_dir(&trash).into_iter().flatten().flatten() {
            let Ok(id) = entry.file_name().into_string() else {
                continue;
            };
            let bundle = entry.path();
            let cgroups_path = read_spec(&bundle)
                .ok()
                .and_then(|s| s.linux().as_ref()?.cgroups_path().clone())
                .map(|p| p.display().to_string())
                .unwrap_or_default();
            tracing::info!(container = %id, "finishing a removal cut short");
            // Its task may still be in the shim (and runc's state with it).
            if let Some(rec) = std::fs::read(bundle.join(REMOVED_RECORD))
                .ok()
                .and_then(|b| serde_json::from_slice::<ContainerRecord>(&b).ok())
            {
                self.force_delete_blocking(&rec);
            }
            clean_up(self.rootfs.as_ref(), &id, &bundle, &cgroups_path);
        }
    }
}

//! Garbage collection (at open, after RemoveImage, after a bad-content pull; never
//! while a pull runs — pulls hold the gc lock shared): blobs not listed by any image
//! record, committed snapshots not reachable from an image's chain or an active
//! snapshot's parent, directories without a record (interrupted unpacks) and every
//! ingest file.

use std::collections::HashSet;

use tokio::sync::OwnedRwLockWriteGuard;

use super::ImageStore;
use crate::error::{Error, Result};

/// What a gc pass removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Blobs removed.
    pub blobs: usize,
    /// Snapshot directories removed (unreferenced or half-unpacked).
    pub snapshots: usize,
    /// Ingest files of interrupted downloads removed.
    pub ingests: usize,
}

impl ImageStore {
    /// Removes blobs and snapshots that no image or active snapshot needs, ingest files
    /// and half-unpacked snapshots of interrupted pulls. Waits for running pulls.
    pub async fn gc(&self) -> Result<GcReport> {
        let guard = self.inner.gc_lock.clone().write_owned().await;
        self.gc_locked(guard).await
    }

    pub(super) async fn gc_locked(&self, guard: OwnedRwLockWriteGuard<()>) -> Result<GcReport> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || {
            let _guard = guard;
            let records = store.records()?;
            let mut blobs: HashSet<String> = HashSet::new();
            let mut chains: HashSet<String> = HashSet::new();
            for r in &records {
                blobs.extend(r.blobs.iter().cloned());
                chains.extend(r.chain_id.iter().cloned());
            }
            let mut report = GcReport {
                ingests: store.inner.content.clean_ingest()?,
                snapshots: store.inner.snapshots.gc(&chains)?,
                ..Default::default()
            };
            for d in store.inner.content.list()? {
                if !blobs.contains(&d) {
                    store.inner.content.delete(&d)?;
                    report.blobs += 1;
                }
            }
            Ok(report)
        })
        .await
        .map_err(|e| Error::Internal(format!("gc task: {e}")))?
    }
}

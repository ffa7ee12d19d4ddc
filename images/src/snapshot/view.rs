//! Views: read-only holds on a committed chain, for image volumes. A view is recorded
//! like an active snapshot (`view/<key>`, kind active, the chain as parent), so gc keeps
//! its chain — also after the image is removed — but it has no directory of its own.

use redb::ReadableTable;

use super::{Kind, Mount, RECORD_VERSION, Record, SNAPSHOTS, Snapshotter, committed};
use crate::error::{Error, Result};

const VIEW_PREFIX: &str = "view/";

impl Snapshotter {
    /// Holds the committed chain `chain_id` for a read-only user (an image volume) under
    /// `key` and returns its read-only mounts: a bind of the one layer, or an overlay of
    /// lower dirs only. The chain stays safe from gc — also after its image is removed —
    /// until `remove_view(key)`. Holding the same key again is fine when it holds the same
    /// chain.
    pub fn view(&self, key: &str, chain_id: &str) -> Result<Vec<Mount>> {
        let full = format!("{VIEW_PREFIX}{key}");
        let id = self.alloc_id()?;
        let r = Record {
            version: RECORD_VERSION,
            id,
            kind: Kind::Active,
            parent: Some(chain_id.to_string()),
        };
        let bytes = serde_json::to_vec(&r).map_err(|e| Error::Internal(e.to_string()))?;
        // Checked and recorded in one write transaction, as `prepare` does: gc cannot
        // take the chain in between. Durable: the caller mounts it next.
        self.db.write(|tx| {
            let mut t = tx.open_table(SNAPSHOTS)?;
            if let Some(v) = t.get(full.as_str())? {
                let same = serde_json::from_slice::<Record>(v.value())
                    .is_ok_and(|r| r.parent.as_deref() == Some(chain_id));
                return Ok(if same {
                    Ok(())
                } else {
                    Err(Error::AlreadyExists(format!("view {key} of another chain")))
                });
            }
            if !committed(&t, chain_id)? {
                return Ok(Err(Error::NotFound(format!("snapshot {chain_id}"))));
            }
            t.insert(full.as_str(), bytes.as_slice())?;
            Ok(Ok(()))
        })??;
        self.view_mounts(key)
    }

    /// The read-only mounts of the view `key`.
    pub fn view_mounts(&self, key: &str) -> Result<Vec<Mount>> {
        let chain = self
            .record(&format!("{VIEW_PREFIX}{key}"))?
            .and_then(|r| r.parent)
            .ok_or_else(|| Error::NotFound(format!("view {key}")))?;
        self.mounts(&chain)
    }

    /// Drops the view `key` (already unmounted); absent is fine. Its chain goes with the
    /// next gc if nothing else needs it.
    pub fn remove_view(&self, key: &str) -> Result<()> {
        let full = format!("{VIEW_PREFIX}{key}");
        self.db.write(|tx| {
            tx.open_table(SNAPSHOTS)?.remove(full.as_str())?;
            Ok(())
        })?;
        Ok(())
    }

    /// Keys of the views (for the image volumes side to reconcile).
    pub fn view_keys(&self) -> Result<Vec<String>> {
        Ok(self
            .records()?
            .into_keys()
            .filter_map(|k| k.strip_prefix(VIEW_PREFIX).map(str::to_string))
            .collect())
    }
}

//! Image records (table `images.images`, id → JSON with a `version`): finding an image
//! by id, id prefix, tag or digest; listing; removing; and saving a pulled image, its
//! tags moved from any other image.

use crust_state::{StateDb, StateError};
use redb::{ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use super::ImageStore;
use crate::digest::hex_of;
use crate::error::{Error, Result};
use crate::reference::{Reference, is_hex64};

const IMAGES: TableDefinition<&str, &[u8]> = TableDefinition::new("images.images");
pub(super) const RECORD_VERSION: u32 = 1;

/// What the state store keeps of an image.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct ImageRecord {
    pub(super) version: u32,
    pub(super) id: String,
    pub(super) repo_tags: Vec<String>,
    pub(super) repo_digests: Vec<String>,
    pub(super) size: u64,
    pub(super) manifest_digest: String,
    /// Every blob the image needs kept: manifests, config, layers.
    pub(super) blobs: Vec<String>,
    /// Chain ID of the top layer (the rootfs); `None` for an image without layers.
    pub(super) chain_id: Option<String>,
    /// `User` from the image config.
    pub(super) user: String,
}

/// An image as cri reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// The config digest, `sha256:<hex>`.
    pub id: String,
    /// `name:tag` references.
    pub repo_tags: Vec<String>,
    /// `name@digest` references.
    pub repo_digests: Vec<String>,
    /// Bytes of config and (compressed) layers.
    pub size: u64,
    /// Numeric user from the config's `User`, if it is numeric.
    pub uid: Option<i64>,
    /// User name from the config's `User`, if it is a name.
    pub username: String,
    /// In the configured pinned list.
    pub pinned: bool,
    /// Chain ID of the rootfs: the parent for [`crate::Snapshotter::prepare`].
    pub chain_id: Option<String>,
}

/// Creates the table if it is not there.
pub(super) fn create_table(db: &StateDb) -> Result<()> {
    db.write(|tx| {
        tx.open_table(IMAGES)?;
        Ok(())
    })?;
    Ok(())
}

/// Reads every record in `t`.
fn read_all(
    t: &impl ReadableTable<&'static str, &'static [u8]>,
) -> Result<Vec<ImageRecord>, StateError> {
    let mut out = Vec::new();
    for item in t.iter()? {
        let (k, v) = item?;
        let r: ImageRecord = serde_json::from_slice(v.value())
            .map_err(|e| StateError::record(format!("image record {}: {e}", k.value())))?;
        out.push(r);
    }
    Ok(out)
}

impl ImageStore {
    pub(super) fn records(&self) -> Result<Vec<ImageRecord>> {
        Ok(self.inner.db.read(|tx| read_all(&tx.open_table(IMAGES)?))?)
    }

    fn to_image(&self, r: &ImageRecord) -> Image {
        let user = r.user.split(':').next().unwrap_or("");
        let (uid, username) = match user.parse::<i64>() {
            Ok(n) => (Some(n), String::new()),
            Err(_) => (None, user.to_string()),
        };
        Image {
            id: r.id.clone(),
            repo_tags: r.repo_tags.clone(),
            repo_digests: r.repo_digests.clone(),
            size: r.size,
            uid,
            username,
            pinned: r.repo_tags.iter().any(|t| self.inner.pinned.contains(t)),
            chain_id: r.chain_id.clone(),
        }
    }

    /// Finds the record for an image id (`sha256:<hex>` or `<hex>`), a unique id
    /// prefix of at least 12 hex digits, or a reference (by tag or by digest).
    fn find(&self, records: &[ImageRecord], what: &str) -> Result<Option<usize>> {
        let id = what.strip_prefix("sha256:").unwrap_or(what);
        if is_hex64(id) {
            let full = format!("sha256:{id}");
            if let Some(i) = records.iter().position(|r| r.id == full) {
                return Ok(Some(i));
            }
            // `sha256:<hex>` may also be a manifest digest; fall through.
        } else if id.len() >= 12 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
            let hits: Vec<usize> = (0..records.len())
                .filter(|&i| hex_of(&records[i].id).is_some_and(|h| h.starts_with(id)))
                .collect();
            if hits.len() == 1 {
                return Ok(Some(hits[0]));
            }
        }
        if what.starts_with("sha256:") {
            return Ok(records
                .iter()
                .position(|r| r.repo_digests.iter().any(|d| d.ends_with(what))));
        }
        let r = match Reference::parse(what) {
            Ok(r) => r,
            Err(_) if is_hex64(id) => return Ok(None),
            Err(e) => return Err(e),
        };
        if let Some(d) = r.digest() {
            let rd = r.with_digest(d);
            return Ok(records.iter().position(|x| x.repo_digests.contains(&rd)));
        }
        let tagged = r.tagged().unwrap_or_default();
        Ok(records.iter().position(|x| x.repo_tags.contains(&tagged)))
    }

    /// The image `what` names (id, reference or digest), if present.
    pub fn status(&self, what: &str) -> Result<Option<Image>> {
        let records = self.records()?;
        Ok(self
            .find(&records, what)?
            .map(|i| self.to_image(&records[i])))
    }

    /// The image config JSON of image `id` (for verbose status and for containers).
    pub fn config_json(&self, id: &str) -> Result<Vec<u8>> {
        self.inner.content.read(id)
    }

    /// All images, or those matching `filter` (a reference or id) when given.
    pub fn list(&self, filter: Option<&str>) -> Result<Vec<Image>> {
        let records = self.records()?;
        match filter.filter(|f| !f.is_empty()) {
            None => Ok(records.iter().map(|r| self.to_image(r)).collect()),
            Some(f) => Ok(self
                .find(&records, f)?
                .map(|i| vec![self.to_image(&records[i])])
                .unwrap_or_default()),
        }
    }

    /// Removes the image `what` names with all its tags and digests; absent is fine.
    /// Unreferenced blobs and snapshots are collected afterwards.
    pub async fn remove(&self, what: &str) -> Result<()> {
        let records = self.records()?;
        let Some(i) = self.find(&records, what)? else {
            return Ok(());
        };
        let id = records[i].id.clone();
        self.inner.db.write(|tx| {
            tx.open_table(IMAGES)?.remove(id.as_str())?;
            Ok(())
        })?;
        // Collect now if no pull is running; otherwise the next gc will.
        if let Ok(guard) = self.inner.gc_lock.clone().try_write_owned() {
            self.gc_locked(guard).await?;
        }
        Ok(())
    }

    /// Stores `new`, merging with an existing record of the same id, and moves its tags
    /// away from any other image (an image left with no name is dropped).
    pub(super) fn save(&self, new: ImageRecord) -> Result<()> {
        let encode = |r: &ImageRecord| {
            serde_json::to_vec(r).map_err(|e| StateError::record(format!("image record: {e}")))
        };
        self.inner.db.write(|tx| {
            // The layers' records are lazy commits: a write error that made the state
            // store reopen meanwhile lost them, and the image must not name a chain
            // that is not there.
            if let Some(chain) = &new.chain_id
                && !crate::snapshot::committed_in(tx, chain)?
            {
                return Ok(Err(Error::Unavailable(format!(
                    "the layers of {} were lost when the state store was reopened after a write error; pull again",
                    new.id
                ))));
            }
            let mut t = tx.open_table(IMAGES)?;
            let others = read_all(&t)?;
            let mut merged = new.clone();
            for mut o in others {
                if o.id == new.id {
                    for t in o.repo_tags {
                        if !merged.repo_tags.contains(&t) {
                            merged.repo_tags.push(t);
                        }
                    }
                    for d in o.repo_digests {
                        if !merged.repo_digests.contains(&d) {
                            merged.repo_digests.push(d);
                        }
                    }
                    continue;
                }
                let before = o.repo_tags.len();
                o.repo_tags.retain(|t| !new.repo_tags.contains(t));
                if o.repo_tags.len() != before {
                    if o.repo_tags.is_empty() && o.repo_digests.is_empty() {
                        t.remove(o.id.as_str())?;
                    } else {
                        let bytes = encode(&o)?;
                        t.insert(o.id.as_str(), bytes.as_slice())?;
                    }
                }
            }
            let bytes = encode(&merged)?;
            t.insert(merged.id.as_str(), bytes.as_slice())?;
            Ok(Ok(()))
        })?
    }
}

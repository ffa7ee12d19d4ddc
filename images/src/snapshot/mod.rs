//! The overlay snapshotter.
//!
//! ```text
//! <root>/snapshots/<id>/fs      committed: one unpacked layer, keyed by its chain ID and
//!                               shared by every image and container with that chain
//!                               active: the writable upper dir of a container
//! <root>/snapshots/<id>/work    active only: overlay's work dir
//! ```
//! Ids are small numbers so that long lowerdir lists stay short. A directory is only
//! meaningful once its record is in the state store (table `images.snapshots`):
//!
//! ```text
//!  begin() ──▶ staging dir (no record) ──commit()──▶ committed record + dir
//!                  │ error / drop / crash
//!                  ▼
//!              removed (Drop, or gc at start: a dir without a record is garbage)
//!
//!  prepare(key, parent) ──▶ active record + dir ──remove(key)──▶ gone
//!  view(key, chain)     ──▶ view record (no dir) ──remove_view(key)──▶ gone
//! ```

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crust_state::{StateDb, StateError};
use redb::{ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

mod mount;
#[cfg(test)]
mod tests;
mod view;

pub use mount::{Mount, mount};

const SNAPSHOTS: TableDefinition<&str, &[u8]> = TableDefinition::new("images.snapshots");
const META: TableDefinition<&str, u64> = TableDefinition::new("images.meta");
const NEXT_ID: &str = "next_snapshot_id";
const RECORD_VERSION: u32 = 1;
/// Active snapshot keys live beside chain IDs in one table; the prefix keeps them apart.
const ACTIVE_PREFIX: &str = "active/";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Kind {
    Committed,
    Active,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    version: u32,
    id: u64,
    kind: Kind,
    /// Chain ID of the snapshot below, if any.
    parent: Option<String>,
}

/// Overlay snapshots: committed layers by chain ID, active container snapshots by key.
#[derive(Debug, Clone)]
pub struct Snapshotter {
    root: PathBuf,
    /// `<root>/../trash`: removed snapshot directories are renamed here (instant) and
    /// deleted by a background thread, so RemoveImage does not wait for unlinking an
    /// image's worth of files. Whatever a crash leaves here goes at the next open.
    trash: PathBuf,
    db: Arc<StateDb>,
    /// Active snapshots prepared by this process, key → id: `remove` finds the directory
    /// even when the record is gone (a lazy commit lost when the state store was reopened
    /// after a write error).
    prepared: Arc<Mutex<HashMap<String, u64>>>,
}

/// A directory a layer is being unpacked into. Removed on drop unless committed.
#[derive(Debug)]
pub struct Staging {
    id: u64,
    dir: PathBuf,
    done: bool,
}

impl Staging {
    /// The empty directory to unpack into.
    pub fn fs(&self) -> PathBuf {
        self.dir.join("fs")
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.done {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// Marks `dir` as the top of independent directory hierarchies (`FS_TOPDIR_FL`,
/// `chattr +T`): ext4 then spreads the snapshot directories made in it over its block
/// groups (the Orlov allocator) instead of packing each next to the last. Each
/// snapshot is an independent tree; packed, a new layer's inodes land among those of a
/// snapshot just removed, which ext4 without a journal scans past one by one
/// (measured: a 200 MB, 6-layer pull right after a removal took about 20% longer).
/// Filesystems without the flag ignore it.
fn spread_subdirectories(dir: &Path) {
    let set = || -> std::io::Result<()> {
        let fd = rustix::fs::open(
            dir,
            rustix::fs::OFlags::RDONLY
                | rustix::fs::OFlags::DIRECTORY
                | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )?;
        let flags = rustix::fs::ioctl_getflags(&fd)?;
        if !flags.contains(rustix::fs::IFlags::TOPDIR) {
            rustix::fs::ioctl_setflags(&fd, flags | rustix::fs::IFlags::TOPDIR)?;
        }
        Ok(())
    };
    if let Err(e) = set() {
        tracing::debug!(dir = %dir.display(), "no FS_TOPDIR_FL on the snapshot root: {e}");
    }
}

impl Snapshotter {
    /// Opens the snapshot store at `root` (`<images root>/snapshots`).
    pub fn open(root: impl Into<PathBuf>, db: Arc<StateDb>) -> Result<Self> {
        let root = root.into();
        private_dir(&root)?;
        db.write(|tx| {
            tx.open_table(SNAPSHOTS)?;
            tx.open_table(META)?;
            Ok(())
        })?;
        let trash = root
            .parent()
            .map_or_else(|| root.join(".trash"), |p| p.join("trash"));
        private_dir(&trash)?;
        spread_subdirectories(&root);
        let s = Snapshotter {
            root,
            trash,
            db,
            prepared: Arc::default(),
        };
        s.empty_trash();
        Ok(s)
    }

    /// The directory holding every snapshot.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn alloc_id(&self) -> Result<u64> {
        // Not synced: see `commit`.
        Ok(self.db.write_lazy(|tx| {
            let mut t = tx.open_table(META)?;
            let id = t.get(NEXT_ID)?.map_or(1, |v| v.value());
            t.insert(NEXT_ID, id + 1)?;
            Ok(id)
        })?)
    }

    fn record(&self, key: &str) -> Result<Option<Record>> {
        let raw = self.db.read(|tx| {
            let t = tx.open_table(SNAPSHOTS)?;
            Ok(t.get(key)?.map(|v| v.value().to_vec()))
        })?;
        let Some(v) = raw else {
            return Ok(None);
        };
        let r = serde_json::from_slice(&v)
            .map_err(|e| Error::Internal(format!("snapshot record {key}: {e}")))?;
        Ok(Some(r))
    }

    fn records(&self) -> Result<HashMap<String, Record>> {
        Ok(self
            .db
            .read(|tx| read_records(&tx.open_table(SNAPSHOTS)?))?)
    }

    fn dir(&self, id: u64) -> PathBuf {
        self.root.join(id.to_string())
    }

    /// The directory for a freshly allocated id. One that exists already has no record: its
    /// id was handed out by a lazy commit that was lost (the state store reopened after a
    /// write error, or a crash). It is garbage, and must not mix into the new snapshot.
    fn fresh_dir(&self, id: u64) -> Result<PathBuf> {
        let dir = self.dir(id);
        if fs::symlink_metadata(&dir).is_ok() {
            tracing::warn!(dir = %dir.display(), "snapshot directory without a record discarded");
            self.discard(&dir)?;
        }
        Ok(dir)
    }

    /// Whether the committed snapshot `chain_id` exists.
    pub fn exists(&self, chain_id: &str) -> Result<bool> {
        Ok(self
            .record(chain_id)?
            .is_some_and(|r| r.kind == Kind::Committed))
    }

    /// A fresh, empty directory to unpack one layer into.
    pub fn begin(&self) -> Result<Staging> {
        let id = self.alloc_id()?;
        let dir = self.fresh_dir(id)?;
        let staging = Staging {
            id,
            dir: dir.clone(),
            done: false,
        };
        // The snapshot's own directory is private; `fs` is the layer's root, whose mode the
        // layer's `./` entry sets (and overlay shows as the container's `/`).
        private_dir(&dir)?;
        open_dir(&dir.join("fs"), 0o755)?;
        Ok(staging)
    }

    /// Publishes an unpacked layer as the committed snapshot `chain_id`. If another pull
    /// committed the same chain meanwhile, this one is discarded.
    pub fn commit(&self, mut staging: Staging, chain_id: &str, parent: Option<&str>) -> Result<()> {
        let r = Record {
            version: RECORD_VERSION,
            id: staging.id,
            kind: Kind::Committed,
            parent: parent.map(str::to_string),
        };
        let bytes = serde_json::to_vec(&r).map_err(|e| Error::Internal(e.to_string()))?;
        // Not synced here: made durable by the image record's commit at the end of the pull.
        let inserted = self.db.write_lazy(|tx| {
            let mut t = tx.open_table(SNAPSHOTS)?;
            if t.get(chain_id)?.is_some() {
                return Ok(false);
            }
            t.insert(chain_id, bytes.as_slice())?;
            Ok(true)
        })?;
        staging.done = inserted;
        Ok(())
    }

    /// The `fs` directories of `chain_id` and all its parents, top first.
    pub fn lowers(&self, chain_id: &str) -> Result<Vec<PathBuf>> {
        let mut out = Vec::new();
        let mut next = Some(chain_id.to_string());
        while let Some(key) = next {
            let r = self
                .record(&key)?
                .filter(|r| r.kind == Kind::Committed)
                .ok_or_else(|| Error::NotFound(format!("snapshot {key}")))?;
            out.push(self.dir(r.id).join("fs"));
            next = r.parent;
        }
        Ok(out)
    }

    /// Creates a writable snapshot `key` over the committed chain `parent` (or empty) and
    /// returns its mounts. The chain stays referenced (safe from gc) until `remove(key)`.
    pub fn prepare(&self, key: &str, parent: Option<&str>) -> Result<Vec<Mount>> {
        let full = format!("{ACTIVE_PREFIX}{key}");
        let id = self.alloc_id()?;
        // Not synced here: the caller's own record of what uses the snapshot (a
        // container's, committed durably next) makes it durable too. Lost in a crash
        // before that, it leaves a directory without a record, which gc removes.
        let r = Record {
            version: RECORD_VERSION,
            id,
            kind: Kind::Active,
            parent: parent.map(str::to_string),
        };
        let bytes = serde_json::to_vec(&r).map_err(|e| Error::Internal(e.to_string()))?;
        // The parent is checked in the same write transaction that records the child,
        // and gc decides and deletes in one write transaction too, so gc can never take
        // a parent that a container has just started to use.
        self.db.write_lazy(|tx| {
            let mut t = tx.open_table(SNAPSHOTS)?;
            if t.get(full.as_str())?.is_some() {
                return Ok(Err(Error::AlreadyExists(format!("snapshot {key}"))));
            }
            if let Some(p) = parent
                && !committed(&t, p)?
            {
                return Ok(Err(Error::NotFound(format!("snapshot {p}"))));
            }
            t.insert(full.as_str(), bytes.as_slice())?;
            Ok(Ok(()))
        })??;
        // Record first, directory second: gc lists directories before records, so it
        // never mistakes a directory being prepared for garbage.
        self.lock_prepared().insert(key.to_string(), id);
        let dir = self.fresh_dir(id)?;
        // `fs` (the upper dir) is the container's `/`: 0755 as a fresh root would be.
        let made = private_dir(&dir)
            .and_then(|()| open_dir(&dir.join("fs"), 0o755))
            .and_then(|()| open_dir(&dir.join("work"), 0o700));
        if let Err(e) = made {
            // Nothing of a failed prepare stays: neither the record nor the directory.
            if let Err(undo) = self.remove(key) {
                tracing::warn!(key, "removing the snapshot of a failed prepare: {undo}");
            }
            return Err(e);
        }
        self.mounts(key)
    }

    /// Mounts of the active snapshot `key`, or a read-only view of the committed chain
    /// `key` when it is a chain ID.
    pub fn mounts(&self, key: &str) -> Result<Vec<Mount>> {
        if let Some(r) = self.record(&format!("{ACTIVE_PREFIX}{key}"))? {
            let dir = self.dir(r.id);
            let upper = dir.join("fs").display().to_string();
            let Some(parent) = r.parent else {
                return Ok(vec![Mount {
                    fstype: "bind".into(),
                    source: upper,
                    options: vec!["rbind".into(), "rw".into()],
                }]);
            };
            let lowers = self.lowers(&parent)?;
            return Ok(vec![Mount {
                fstype: "overlay".into(),
                source: "overlay".into(),
                options: vec![
                    format!("workdir={}", dir.join("work").display()),
                    format!("upperdir={upper}"),
                    lowerdir_option(&lowers),
                ],
            }]);
        }
        let lowers = self.lowers(key)?;
        if lowers.len() == 1 {
            return Ok(vec![Mount {
                fstype: "bind".into(),
                source: lowers[0].display().to_string(),
                options: vec!["rbind".into(), "ro".into()],
            }]);
        }
        Ok(vec![Mount {
            fstype: "overlay".into(),
            source: "overlay".into(),
            options: vec![lowerdir_option(&lowers), "ro".into()],
        }])
    }

    /// Removes the active snapshot `key`; absent is fine. Committed layers go only
    /// through gc.
    pub fn remove(&self, key: &str) -> Result<()> {
        let full = format!("{ACTIVE_PREFIX}{key}");
        let prepared = self.lock_prepared().remove(key);
        let Some(r) = self.record(&full)? else {
            if let Some(id) = prepared {
                self.discard(&self.dir(id))?;
                self.empty_trash();
            }
            return Ok(());
        };
        self.db.write(|tx| {
            tx.open_table(SNAPSHOTS)?.remove(full.as_str())?;
            Ok(())
        })?;
        self.discard(&self.dir(r.id))?;
        self.empty_trash();
        Ok(())
    }

    fn lock_prepared(&self) -> std::sync::MutexGuard<'_, HashMap<String, u64>> {
        self.prepared
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Keys of the active snapshots (for the containers side to reconcile).
    pub fn active_keys(&self) -> Result<Vec<String>> {
        Ok(self
            .records()?
            .into_keys()
            .filter_map(|k| k.strip_prefix(ACTIVE_PREFIX).map(str::to_string))
            .collect())
    }

    /// Removes every committed snapshot that neither `keep` (chain IDs of images) nor an
    /// active snapshot needs, and every directory without a record (interrupted unpacks).
    /// Call only when no pull is running. Returns how many directories went.
    pub fn gc(&self, keep: &HashSet<String>) -> Result<usize> {
        // Directories first, records second: see `prepare`.
        let dirs: Vec<(u64, PathBuf)> = fs::read_dir(&self.root)
            .map_err(|e| Error::io(format!("read {}", self.root.display()), e))?
            .flatten()
            .filter_map(|e| {
                let id = e.file_name().to_str()?.parse::<u64>().ok()?;
                Some((id, e.path()))
            })
            .collect();
        let (records, live) = self.db.write(|tx| {
            let records = read_records(&tx.open_table(SNAPSHOTS)?)?;
            let mut live: HashSet<String> = HashSet::new();
            let mut stack: Vec<String> = keep.iter().cloned().collect();
            for (k, r) in &records {
                if r.kind == Kind::Active {
                    live.insert(k.clone());
                    stack.extend(r.parent.clone());
                }
            }
            while let Some(k) = stack.pop() {
                if live.insert(k.clone())
                    && let Some(p) = records.get(&k).and_then(|r| r.parent.clone())
                {
                    stack.push(p);
                }
            }
            let mut t = tx.open_table(SNAPSHOTS)?;
            for k in records.keys().filter(|k| !live.contains(*k)) {
                t.remove(k.as_str())?;
            }
            Ok((records, live))
        })?;
        let live_ids: HashSet<u64> = records
            .iter()
            .filter(|(k, _)| live.contains(*k))
            .map(|(_, r)| r.id)
            .collect();
        let mut removed = 0;
        for (id, path) in dirs {
            if !live_ids.contains(&id) {
                self.discard(&path)?;
                removed += 1;
            }
        }
        if removed > 0 {
            self.empty_trash();
        }
        Ok(removed)
    }

    /// Moves a snapshot directory out of the store at once; it is deleted later.
    fn discard(&self, path: &Path) -> Result<()> {
        static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let name = format!(
            "{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        match fs::rename(path, self.trash.join(name)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            // Another filesystem, or anything odd: delete in place.
            Err(_) => remove_tree(path),
        }
    }

    /// Throws a staging directory away at once: renamed into the trash (an unpacked
    /// layer takes a while to delete; the trash thread does that), so no snapshot
    /// directory without a record outlives the call.
    pub fn discard_staging(&self, mut staging: Staging) {
        if self.discard(&staging.dir).is_ok() {
            staging.done = true;
            self.empty_trash();
        }
    }

    /// Deletes the trash in a background thread.
    fn empty_trash(&self) {
        let trash = self.trash.clone();
        let spawned = std::thread::Builder::new()
            .name("snapshot-trash".into())
            .spawn(move || {
                let Ok(rd) = fs::read_dir(&trash) else {
                    return;
                };
                for e in rd.flatten() {
                    if let Err(err) = remove_tree(&e.path()) {
                        tracing::warn!("emptying snapshot trash: {err}");
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::warn!("cannot start the snapshot trash thread: {e}");
        }
    }
}

/// A directory (and its missing parents) only root can enter.
fn private_dir(dir: &Path) -> Result<()> {
    crust_state::private::create_dir(dir).map_err(|e| Error::write("create", dir, e))
}

/// A new directory with exactly `mode`, whatever the umask.
fn open_dir(dir: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::create_dir(dir)
        .and_then(|()| fs::set_permissions(dir, fs::Permissions::from_mode(mode)))
        .map_err(|e| Error::write("create", dir, e))
}

/// Whether the committed snapshot `chain_id` is recorded, read in `tx` (an image record's
/// write: its layers' lazy commits may have been lost to a reopen of the state store).
pub(crate) fn committed_in(
    tx: &redb::WriteTransaction,
    chain_id: &str,
) -> Result<bool, StateError> {
    committed(&tx.open_table(SNAPSHOTS)?, chain_id)
}

/// Whether `t` records `chain_id` as a committed snapshot.
fn committed(
    t: &impl ReadableTable<&'static str, &'static [u8]>,
    chain_id: &str,
) -> Result<bool, StateError> {
    Ok(match t.get(chain_id)? {
        Some(v) => {
            serde_json::from_slice::<Record>(v.value()).is_ok_and(|r| r.kind == Kind::Committed)
        }
        None => false,
    })
}

/// Every record of the snapshots table.
fn read_records(
    t: &impl ReadableTable<&'static str, &'static [u8]>,
) -> Result<HashMap<String, Record>, StateError> {
    let mut out = HashMap::new();
    for item in t.iter()? {
        let (k, v) = item?;
        let r: Record = serde_json::from_slice(v.value())
            .map_err(|e| StateError::record(format!("snapshot record {}: {e}", k.value())))?;
        out.insert(k.value().to_string(), r);
    }
    Ok(out)
}

fn lowerdir_option(lowers: &[PathBuf]) -> String {
    let parts: Vec<String> = lowers.iter().map(|p| p.display().to_string()).collect();
    format!("lowerdir={}", parts.join(":"))
}

fn remove_tree(path: &Path) -> Result<()> {
    match fs::remove_dir_all(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            Err(Error::io(format!("remove {}", path.display()), e))
        }
        _ => Ok(()),
    }
}

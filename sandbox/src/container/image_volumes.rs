//! Image volumes (CRI `Mount.image`, KEP-4639): a container mount whose source is an
//! image already on the node, served read-only from that image's own layers.
//!
//! ```text
//! <state_dir>/image-volumes/<pod id>/<image hex>   the image's layers, mounted once per
//!                                                  pod and image: ro,nosuid,nodev,noexec
//! state.redb table sandbox_image_volumes           "<pod id>/<image hex>" → {pod, image,
//!                                                  users: container ids}
//! ```
//!
//! The first container of a pod that mounts an image mounts it (the image store holds
//! the layer chain under the volume's key, so neither gc nor RemoveImage's collection
//! takes it); later ones are added as users and share the mount, which each container
//! binds read-only at its `container_path`. RemoveContainer (and a failed create) drops
//! the container from the users; the last one unmounts the volume and releases the hold.
//! At open the users are reconciled with the container records: a crash anywhere leaves
//! at most a mount, a hold or a record that the next start removes, and a volume with
//! users is mounted again if it is not (a reboot empties the state dir).
//!
//! The image must be present: kubelet pulls it (by the pod's pull policy) before it
//! creates the container, and names it by the `image_ref` PullImage answered. An absent
//! image is NotFound and nothing is made. The mount is read-only, and `nosuid`, `nodev`
//! and `noexec`, as KEP-4639 asks of runtimes ("volume mounts should set the noexec and
//! ro options"); containerd 2.1 and CRI-O mount image volumes read-only but executable.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crust_state::StateDb;
use k8s_cri::v1::ContainerConfig;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::registry::{Table, Unreadable};

const RECORD_VERSION: u32 = 1;

/// What image volumes need from the image store. Implemented by crustd over
/// `crust-images` (a view of the image's snapshot chain).
pub trait ImageVolumeSource: Send + Sync {
    /// The id of the present image `reference` names (a name, an id or a digest).
    fn resolve(&self, reference: &str) -> Result<Option<String>>;
    /// Holds the layers of image `image_id` under `key` (kept from gc until `release`,
    /// also after the image is removed) and mounts them read-only at `target`.
    fn mount(&self, key: &str, image_id: &str, target: &Path) -> Result<()>;
    /// Mounts the layers held under `key` at `target` again.
    fn remount(&self, key: &str, target: &Path) -> Result<()>;
    /// Drops the hold `key` (already unmounted); absent is fine.
    fn release(&self, key: &str) -> Result<()>;
    /// Keys of every hold there is.
    fn keys(&self) -> Result<Vec<String>>;
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct VolumeRecord {
    version: u32,
    /// The volume's key, `<pod id>/<image hex>`.
    id: String,
    pod_id: String,
    /// The image id (`sha256:<hex>`) the volume was mounted from.
    image_id: String,
    /// Containers that mount it.
    users: BTreeSet<String>,
}

crate::versioned_record!(VolumeRecord, RECORD_VERSION);

/// The image volumes of this node.
pub(crate) struct ImageVolumes {
    dir: PathBuf,
    table: Table<VolumeRecord>,
    source: Option<Arc<dyn ImageVolumeSource>>,
    /// Serialises acquire, release and reconcile: a std Mutex, never held across an await.
    lock: Mutex<()>,
}

/// The key of the volume of image `image_id` in pod `pod_id`.
fn key_of(pod_id: &str, image_id: &str) -> String {
    let hex = image_id.strip_prefix("sha256:").unwrap_or(image_id);
    format!("{pod_id}/{hex}")
}

impl ImageVolumes {
    pub(crate) fn new(
        state_dir: &Path,
        db: Arc<StateDb>,
        source: Option<Arc<dyn ImageVolumeSource>>,
    ) -> Self {
        ImageVolumes {
            dir: state_dir.join("image-volumes"),
            table: Table::new(db, "sandbox_image_volumes", "image volume"),
            source,
            lock: Mutex::new(()),
        }
    }

    fn target(&self, key: &str) -> PathBuf {
        self.dir.join(key)
    }

    fn guard(&self) -> std::sync::MutexGuard<'_, ()> {
        self.lock.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Gives container `id` of pod `pod_id` the volumes of the image mounts of `config`
    /// and returns the config its spec is built from, those mounts' `host_path` set to
    /// their volume; None when it has no image mount. On an error nothing is held.
    pub(crate) fn attach(
        &self,
        id: &str,
        pod_id: &str,
        config: &ContainerConfig,
    ) -> Result<Option<ContainerConfig>> {
        if !config.mounts.iter().any(|m| m.image.is_some()) {
            return Ok(None);
        }
        let source = self.source.as_deref().ok_or_else(|| {
            Error::FailedPrecondition("image volumes are not available on this node".into())
        })?;
        // Every image is resolved before anything is mounted.
        let mut images: HashMap<usize, String> = HashMap::new();
        for (i, m) in config.mounts.iter().enumerate() {
            let Some(spec) = &m.image else { continue };
            let reference = spec.image.trim();
            let image_id = source.resolve(reference)?.ok_or_else(|| {
                Error::NotFound(format!(
                    "mount {:?}: image {reference:?} not found: pull it first",
                    m.container_path
                ))
            })?;
            images.insert(i, image_id);
        }
        let _g = self.guard();
        let mut held: Vec<String> = Vec::new();
        let mut out = config.clone();
        for (i, image_id) in &images {
            let key = key_of(pod_id, image_id);
            if !held.contains(&key) {
                if let Err(e) = self.add_user(source, &key, pod_id, image_id, id) {
                    for k in &held {
                        self.drop_user(source, k, id);
                    }
                    return Err(e);
                }
                held.push(key.clone());
            }
            out.mounts[*i].host_path = self.target(&key).display().to_string();
        }
        Ok(Some(out))
    }

    /// Adds `id` to the users of volume `key`, mounting it first if it is new.
    fn add_user(
        &self,
        source: &dyn ImageVolumeSource,
        key: &str,
        pod_id: &str,
        image_id: &str,
        id: &str,
    ) -> Result<()> {
        let target = self.target(key);
        let mut rec = match self.get(key)? {
            Some(rec) => rec,
            None => VolumeRecord {
                version: RECORD_VERSION,
                id: key.to_string(),
                pod_id: pod_id.to_string(),
                image_id: image_id.to_string(),
                users: BTreeSet::new(),
            },
        };
        let fresh = !is_mount_point(&target)?;
        if fresh {
            crust_state::private::create_dir(&target)
                .map_err(|e| Error::write("create", &target, e))?;
            let mounted = if rec.users.is_empty() {
                source.mount(key, image_id, &target)
            } else {
                source.remount(key, &target)
            };
            if let Err(e) = mounted.and_then(|()| restrict(&target)) {
                self.teardown(source, key, rec.users.is_empty());
                return Err(e);
            }
        }
        rec.users.insert(id.to_string());
        if let Err(e) = self.table.put(&rec) {
            if fresh {
                self.teardown(source, key, rec.users.len() == 1);
            }
            return Err(e);
        }
        Ok(())
    }

    /// Takes container `id` off every volume it uses; the last user unmounts a volume
    /// and releases its hold.
    pub(crate) fn detach(&self, id: &str) -> Result<()> {
        let Some(source) = self.source.as_deref() else {
            return Ok(());
        };
        let _g = self.guard();
        for (key, _) in self
            .all()?
            .into_iter()
            .filter(|(_, r)| r.users.contains(id))
        {
            self.remove_user(source, &key, id)?;
        }
        Ok(())
    }

    fn remove_user(&self, source: &dyn ImageVolumeSource, key: &str, id: &str) -> Result<()> {
        let Some(mut rec) = self.get(key)? else {
            return Ok(());
        };
        rec.users.remove(id);
        if !rec.users.is_empty() {
            return self.table.put(&rec);
        }
        self.release(source, key)
    }

    /// Best effort, for undoing a half-made attach.
    fn drop_user(&self, source: &dyn ImageVolumeSource, key: &str, id: &str) {
        if let Err(e) = self.remove_user(source, key, id) {
            tracing::error!(volume = key, container = id, error = %e, "undoing an image volume");
        }
    }

    /// Unmounts volume `key`, removes its directory, releases the hold, deletes the record.
    fn release(&self, source: &dyn ImageVolumeSource, key: &str) -> Result<()> {
        let target = self.target(key);
        crate::namespaces::unmount(&target)?;
        remove_empty_dir(&target)?;
        if let Some(pod_dir) = target.parent() {
            // Gone with its pod's last volume; another volume of the pod keeps it.
            let _ = std::fs::remove_dir(pod_dir);
        }
        source.release(key)?;
        self.table.delete(key)?;
        tracing::debug!(volume = key, "image volume released");
        Ok(())
    }

    /// Undoes a mount that failed half-way: unmounted, directory gone, and the hold
    /// released when this mount made it.
    fn teardown(&self, source: &dyn ImageVolumeSource, key: &str, release_hold: bool) {
        let target = self.target(key);
        let undo = crate::namespaces::unmount(&target)
            .map_err(Error::from)
            .and_then(|()| remove_empty_dir(&target))
            .and_then(|()| {
                if release_hold {
                    source.release(key)
                } else {
                    Ok(())
                }
            });
        if let Err(e) = undo {
            tracing::error!(volume = key, error = %e, "undoing an image volume mount");
        }
    }

    /// At open: users are the containers `known` (every id the container store holds);
    /// volumes without users, holds without a record and directories without a record
    /// go; a volume with users is mounted if it is not.
    pub(crate) fn reconcile(&self, known: &HashSet<String>) {
        let Some(source) = self.source.as_deref() else {
            return;
        };
        let _g = self.guard();
        let records = match self.all() {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "reading image volume records; none reconciled");
                return;
            }
        };
        let mut live: HashSet<String> = HashSet::new();
        for (key, mut rec) in records {
            let before = rec.users.len();
            rec.users.retain(|u| known.contains(u));
            let outcome = if rec.users.is_empty() {
                self.release(source, &key)
            } else {
                live.insert(key.clone());
                self.ensure_mounted(source, &key)
                    .and_then(|()| match rec.users.len() == before {
                        true => Ok(()),
                        false => self.table.put(&rec),
                    })
            };
            if let Err(e) = outcome {
                tracing::warn!(volume = %key, error = %e, "reconciling an image volume");
            }
        }
        self.remove_strays(source, &live);
    }

    fn ensure_mounted(&self, source: &dyn ImageVolumeSource, key: &str) -> Result<()> {
        let target = self.target(key);
        if is_mount_point(&target)? {
            return Ok(());
        }
        crust_state::private::create_dir(&target)
            .map_err(|e| Error::write("create", &target, e))?;
        source.remount(key, &target)?;
        restrict(&target)?;
        tracing::info!(volume = key, "image volume mounted again");
        Ok(())
    }

    /// Holds and mount directories that no record owns: what a crash between the mount
    /// and the record, or between the unmount and the record's removal, left.
    fn remove_strays(&self, source: &dyn ImageVolumeSource, live: &HashSet<String>) {
        match source.keys() {
            Ok(keys) => {
                for key in keys.iter().filter(|k| !live.contains(*k)) {
                    if let Err(e) = self.release(source, key) {
                        tracing::warn!(volume = %key, error = %e, "releasing a stray image volume");
                    } else {
                        tracing::info!(volume = %key, "released an image volume no container uses");
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "listing image volume holds"),
        }
        for pod in read_dir_names(&self.dir) {
            for image in read_dir_names(&self.dir.join(&pod)) {
                let key = format!("{pod}/{image}");
                if live.contains(&key) {
                    continue;
                }
                let target = self.target(&key);
                let gone = crate::namespaces::unmount(&target)
                    .map_err(Error::from)
                    .and_then(|()| remove_empty_dir(&target));
                if let Err(e) = gone {
                    tracing::warn!(dir = %target.display(), error = %e, "removing a stray image volume");
                }
            }
            let _ = std::fs::remove_dir(self.dir.join(&pod));
        }
    }

    fn get(&self, key: &str) -> Result<Option<VolumeRecord>> {
        Ok(self
            .all()?
            .into_iter()
            .find_map(|(k, r)| (k == key).then_some(r)))
    }

    /// Every volume by key. One whose record cannot be read is skipped (logged): its
    /// directory goes at the next start as a stray.
    fn all(&self) -> Result<Vec<(String, VolumeRecord)>> {
        Ok(self
            .table
            .load_all(Unreadable::Skip)?
            .into_iter()
            .map(|r| (r.id.clone(), r))
            .collect())
    }
}

/// Makes the mount at `target` read-only, nosuid, nodev and noexec (its own flags only:
/// a bind remount).
fn restrict(target: &Path) -> Result<()> {
    let path = CString::new(target.as_os_str().as_bytes())
        .map_err(|_| Error::InvalidArgument(format!("path {} has a NUL", target.display())))?;
    let flags = libc::MS_REMOUNT
        | libc::MS_BIND
        | libc::MS_RDONLY
        | libc::MS_NOSUID
        | libc::MS_NODEV
        | libc::MS_NOEXEC;
    // SAFETY: valid NUL-terminated path; null source, type and data are allowed for a remount.
    let r = unsafe {
        libc::mount(
            std::ptr::null(),
            path.as_ptr(),
            std::ptr::null(),
            flags,
            std::ptr::null(),
        )
    };
    if r != 0 {
        let e = std::io::Error::last_os_error();
        return Err(Error::Internal(format!(
            "remount {} read-only, nosuid, nodev, noexec: {e}",
            target.display()
        )));
    }
    Ok(())
}

/// Whether `path` is a mount point (from this process's mountinfo).
fn is_mount_point(path: &Path) -> Result<bool> {
    let text = crate::mountinfo::read()?;
    Ok(text
        .lines()
        .any(|l| crate::mountinfo::mount_point(l).as_deref() == Some(path)))
}

fn remove_empty_dir(dir: &Path) -> Result<()> {
    match std::fs::remove_dir(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::Io(std::io::Error::new(
            e.kind(),
            format!("remove {}: {e}", dir.display()),
        ))),
        _ => Ok(()),
    }
}

fn read_dir_names(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .collect()
}

#[cfg(test)]
#[path = "image_volumes_tests.rs"]
mod tests;

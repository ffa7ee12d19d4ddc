//! Container root filesystems: the images crate's snapshots, handed to the
//! sandbox crate through its `Rootfs` seam.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crust_images::ImageStore;
use crust_sandbox::container::{ImageVolumeSource, Rootfs};

use crate::image_volumes::ImageVolumeLayers;

/// A writable overlay snapshot per container on top of its image's layer chain.
pub struct ImageRootfs(pub ImageStore);

/// The sandbox crate's meaning of an images error: a full disk stays a full disk.
pub(crate) fn sandbox_err(e: crust_images::Error) -> crust_sandbox::Error {
    match e {
        crust_images::Error::NoSpace(m) => crust_sandbox::Error::NoSpace(m),
        e => crust_sandbox::Error::Internal(e.to_string()),
    }
}

impl ImageRootfs {
    /// Prepares snapshot `key` on the image's chain and mounts it with `mount`; a failed
    /// mount removes the snapshot again.
    fn prepare_and(
        &self,
        key: &str,
        image_id: &str,
        mount: impl FnOnce(&[crust_images::snapshot::Mount]) -> crust_sandbox::Result<()>,
    ) -> crust_sandbox::Result<()> {
        let image = self
            .0
            .status(image_id)
            .map_err(sandbox_err)?
            .ok_or_else(|| crust_sandbox::Error::Internal(format!("image {image_id} is gone")))?;
        let snapshots = self.0.snapshotter();
        let mounts = snapshots
            .prepare(key, image.chain_id.as_deref())
            .map_err(sandbox_err)?;
        if let Err(e) = mount(&mounts) {
            let _ = snapshots.remove(key);
            return Err(e);
        }
        Ok(())
    }
}

impl Rootfs for ImageRootfs {
    fn mount(&self, key: &str, image_id: &str, target: &Path) -> crust_sandbox::Result<()> {
        self.prepare_and(key, image_id, |mounts| {
            crust_images::snapshot::mount(mounts, target).map_err(sandbox_err)
        })
    }

    fn mount_idmapped(
        &self,
        key: &str,
        image_id: &str,
        target: &Path,
        userns: &std::os::fd::OwnedFd,
        root: (u32, u32),
    ) -> crust_sandbox::Result<()> {
        let stage = target.with_file_name("layers");
        self.prepare_and(key, image_id, |mounts| {
            mount_idmapped(mounts, target, &stage, userns, root)
        })
    }

    fn remove(&self, key: &str) -> crust_sandbox::Result<()> {
        self.0.snapshotter().remove(key).map_err(sandbox_err)
    }

    fn keys(&self) -> Result<Vec<String>, String> {
        self.0
            .snapshotter()
            .active_keys()
            .map_err(|e| e.to_string())
    }

    fn image_volumes(&self) -> Option<Arc<dyn ImageVolumeSource>> {
        Some(Arc::new(ImageVolumeLayers(self.0.clone())))
    }

    fn usage(&self, key: &str) -> Option<(u64, u64)> {
        Some(disk_usage(&self.upper_dir(key)?))
    }

    fn upper_dir(&self, key: &str) -> Option<PathBuf> {
        let mounts = self.0.snapshotter().mounts(key).ok()?;
        mounts
            .iter()
            .flat_map(|m| m.options.iter())
            .find_map(|o| o.strip_prefix("upperdir="))
            .map(PathBuf::from)
    }
}

/// Mounts a snapshot for a user namespace: each lower layer is attached idmapped under `stage`
/// for the time of the overlay mount, the writable layer's (empty) root is given to the pod's
/// root so what the container writes is stored with its host ids. A snapshot without layers
/// (a bind) is bound idmapped whole.
fn mount_idmapped(
    mounts: &[crust_images::snapshot::Mount],
    target: &Path,
    stage: &Path,
    userns: &std::os::fd::OwnedFd,
    (uid, gid): (u32, u32),
) -> crust_sandbox::Result<()> {
    use crust_sandbox::idmap;
    let failed = |what: &str, e: std::io::Error| {
        crust_sandbox::Error::FailedPrecondition(format!(
            "idmapped rootfs at {} ({what}): {e}",
            target.display()
        ))
    };
    let mut rewritten = Vec::new();
    let mut staged = Vec::new();
    for m in mounts {
        if m.fstype == "bind" {
            // idmap::bind makes its target; the rootfs directory already exists.
            std::fs::remove_dir(target).map_err(|e| failed("bind", e))?;
            idmap::bind(Path::new(&m.source), target, userns).map_err(|e| failed("bind", e))?;
            continue;
        }
        let mut options = Vec::new();
        for o in &m.options {
            if let Some(lowers) = o.strip_prefix("lowerdir=") {
                let paths: Vec<&Path> = lowers.split(':').map(Path::new).collect();
                let s = idmap::Staged::new(&paths, stage, userns)
                    .map_err(|e| failed("lower layers", e))?;
                let joined: Vec<String> = s.paths.iter().map(|p| p.display().to_string()).collect();
                options.push(format!("lowerdir={}", joined.join(":")));
                staged.push(s);
            } else {
                if let Some(upper) = o.strip_prefix("upperdir=") {
                    std::os::unix::fs::chown(upper, Some(uid), Some(gid))
                        .map_err(|e| failed("upper layer owner", e))?;
                }
                options.push(o.clone());
            }
        }
        rewritten.push(crust_images::snapshot::Mount {
            fstype: m.fstype.clone(),
            source: m.source.clone(),
            options,
        });
    }
    let mounted = crust_images::snapshot::mount(&rewritten, target).map_err(sandbox_err);
    // The overlay holds private copies of its layers: the staged mounts go now.
    drop(staged);
    mounted
}

/// Bytes (allocated blocks) and inodes below `dir`, not following links or
/// crossing into other mounts.
fn disk_usage(dir: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let Ok(top) = std::fs::symlink_metadata(dir) else {
        return (0, 0);
    };
    let (mut bytes, mut inodes) = (top.blocks() * 512, 1);
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(m) = e.metadata() else { continue };
            if m.dev() != top.dev() {
                continue;
            }
            bytes += m.blocks() * 512;
            inodes += 1;
            if m.is_dir() {
                stack.push(e.path());
            }
        }
    }
    (bytes, inodes)
}

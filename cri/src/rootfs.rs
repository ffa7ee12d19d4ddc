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

impl Rootfs for ImageRootfs {
    fn mount(&self, key: &str, image_id: &str, target: &Path) -> crust_sandbox::Result<()> {
        let image = self
            .0
            .status(image_id)
            .map_err(sandbox_err)?
            .ok_or_else(|| crust_sandbox::Error::Internal(format!("image {image_id} is gone")))?;
        let snapshots = self.0.snapshotter();
        let mounts = snapshots
            .prepare(key, image.chain_id.as_deref())
            .map_err(sandbox_err)?;
        if let Err(e) = crust_images::snapshot::mount(&mounts, target) {
            let _ = snapshots.remove(key);
            return Err(sandbox_err(e));
        }
        Ok(())
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

//! Container root filesystems: the images crate's snapshots, handed to the
//! sandbox crate through its `Rootfs` seam.

use std::path::Path;

use crust_images::ImageStore;
use crust_sandbox::container::Rootfs;

/// A writable overlay snapshot per container on top of its image's layer chain.
pub struct ImageRootfs(pub ImageStore);

impl Rootfs for ImageRootfs {
    fn mount(&self, key: &str, image_id: &str, target: &Path) -> Result<(), String> {
        let image = self
            .0
            .status(image_id)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("image {image_id} is gone"))?;
        let snapshots = self.0.snapshotter();
        let mounts = snapshots
            .prepare(key, image.chain_id.as_deref())
            .map_err(|e| e.to_string())?;
        if let Err(e) = crust_images::snapshot::mount(&mounts, target) {
            let _ = snapshots.remove(key);
            return Err(e.to_string());
        }
        Ok(())
    }

    fn remove(&self, key: &str) -> Result<(), String> {
        self.0.snapshotter().remove(key).map_err(|e| e.to_string())
    }
}

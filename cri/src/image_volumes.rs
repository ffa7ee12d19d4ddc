//! Image volumes' layers: a read-only view of an image's snapshot chain in the images
//! crate, handed to the sandbox crate through its `ImageVolumeSource` seam
//! (`crust_sandbox::container::image_volumes` keeps the volumes and their users).

use std::path::Path;

use crust_images::ImageStore;
use crust_sandbox::container::ImageVolumeSource;

use crate::rootfs::sandbox_err;

/// The views image volumes hold are keyed `<pod id>/<image hex>` in the snapshotter.
pub struct ImageVolumeLayers(pub ImageStore);

impl ImageVolumeSource for ImageVolumeLayers {
    fn resolve(&self, reference: &str) -> crust_sandbox::Result<Option<String>> {
        match self.0.status(reference) {
            Ok(image) => Ok(image.map(|i| i.id)),
            // A malformed reference names no image this node has.
            Err(crust_images::Error::InvalidArgument(m)) => Err(
                crust_sandbox::Error::InvalidArgument(format!("image volume {reference:?}: {m}")),
            ),
            Err(e) => Err(sandbox_err(e)),
        }
    }

    fn mount(&self, key: &str, image_id: &str, target: &Path) -> crust_sandbox::Result<()> {
        let image = self
            .0
            .status(image_id)
            .map_err(sandbox_err)?
            .ok_or_else(|| {
                crust_sandbox::Error::NotFound(format!("image {image_id} not found: pull it first"))
            })?;
        let chain = image.chain_id.ok_or_else(|| {
            crust_sandbox::Error::FailedPrecondition(format!(
                "image {image_id} has no layers: nothing to mount"
            ))
        })?;
        let snapshots = self.0.snapshotter();
        let mounts = snapshots.view(key, &chain).map_err(sandbox_err)?;
        if let Err(e) = crust_images::snapshot::mount(&mounts, target) {
            let _ = snapshots.remove_view(key);
            return Err(sandbox_err(e));
        }
        Ok(())
    }

    fn remount(&self, key: &str, target: &Path) -> crust_sandbox::Result<()> {
        let mounts = self.0.snapshotter().view_mounts(key).map_err(sandbox_err)?;
        crust_images::snapshot::mount(&mounts, target).map_err(sandbox_err)
    }

    fn release(&self, key: &str) -> crust_sandbox::Result<()> {
        self.0.snapshotter().remove_view(key).map_err(sandbox_err)
    }

    fn keys(&self) -> crust_sandbox::Result<Vec<String>> {
        self.0.snapshotter().view_keys().map_err(sandbox_err)
    }
}

//! Restore, as CRI-O does it: a CreateContainer whose image is the absolute
//! path of a checkpoint archive ([`super::checkpoint_archive`]) makes a new
//! container of the image the checkpointed one ran (`config.dump`'s
//! `rootfsImageRef`, which must be present), with the checkpointed command
//! when the request gives none; its root filesystem gets the archive's
//! `rootfs-diff.tar` and loses the paths in `deleted.files`, and the CRIU
//! images go to `<bundle>/checkpoint`, so that StartContainer restores the
//! processes (`runc restore` through the shim) instead of starting anew.

use std::{
    fs::File,
    io::Read,
    path::{Component, Path, PathBuf},
};

use serde::Deserialize;

use super::{
    Containers,
    checkpoint_archive::{CHECKPOINT_DIR, CONFIG_DUMP, DELETED_FILES, ROOTFS_DIFF_TAR, SPEC_DUMP},
};
use crate::{
    Error, Result,
    shim::{CreateTask, Result as ShimResult},
    task::TaskRuntime,
};

/// What a restore reads of `config.dump`.
#[derive(Debug, Deserialize)]
struct ConfigIn {
    #[serde(default)]
    id: String,
    #[serde(default, rename = "rootfsImageRef")]
    rootfs_image_ref: String,
    #[serde(default, rename = "rootfsImageName")]
    rootfs_image_name: String,
}

/// A checkpoint archive a container is to be restored from.
#[derive(Debug)]
pub struct CheckpointArchive {
    path: PathBuf,
    config: ConfigIn,
    args: Vec<String>,
}

/// An archive entry's name without a leading `./`.
fn entry_name(e: &tar::Entry<'_, File>) -> std::io::Result<String> {
    let p = e.path()?;
    Ok(p.to_string_lossy().trim_start_matches("./").to_string())
}

impl CheckpointArchive {
    /// Some when the image a CreateContainer names is a checkpoint archive:
    /// an absolute path (no image reference starts with `/`). A path that
    /// holds no archive, or an archive without `config.dump` and
    /// `spec.dump`, is InvalidArgument.
    pub fn open(image: &str) -> Result<Option<CheckpointArchive>> {
        if !image.starts_with('/') {
            return Ok(None);
        }
        let bad =
            |why: String| Error::InvalidArgument(format!("checkpoint archive {image}: {why}"));
        let path = PathBuf::from(image);
        let file = File::open(&path).map_err(|e| bad(e.to_string()))?;
        let (mut config, mut spec) = (None, None);
        let mut archive = tar::Archive::new(file);
        for entry in archive.entries().map_err(|e| bad(e.to_string()))? {
            let mut entry = entry.map_err(|e| bad(e.to_string()))?;
            let name = entry_name(&entry).map_err(|e| bad(e.to_string()))?;
            let slot = match name.as_str() {
                CONFIG_DUMP => &mut config,
                SPEC_DUMP => &mut spec,
                _ => continue,
            };
            let mut text = Vec::new();
            entry
                .read_to_end(&mut text)
                .map_err(|e| bad(e.to_string()))?;
            *slot = Some(text);
        }
        let (Some(config), Some(spec)) = (config, spec) else {
            return Err(bad(format!(
                "no {CONFIG_DUMP} and {SPEC_DUMP}: not a checkpoint archive"
            )));
        };
        let config: ConfigIn =
            serde_json::from_slice(&config).map_err(|e| bad(format!("{CONFIG_DUMP}: {e}")))?;
        let spec: serde_json::Value =
            serde_json::from_slice(&spec).map_err(|e| bad(format!("{SPEC_DUMP}: {e}")))?;
        let args = spec["process"]["args"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        if config.rootfs_image_ref.is_empty() && config.rootfs_image_name.is_empty() {
            return Err(bad(format!("{CONFIG_DUMP} names no image")));
        }
        Ok(Some(CheckpointArchive { path, config, args }))
    }

    /// The image the checkpointed container ran: its id, else its name.
    pub fn base_image(&self) -> &str {
        if self.config.rootfs_image_ref.is_empty() {
            &self.config.rootfs_image_name
        } else {
            &self.config.rootfs_image_ref
        }
    }

    /// The checkpointed container's process arguments.
    pub fn args(&self) -> &[String] {
        &self.args
    }

    /// The id the checkpointed container had.
    pub fn checkpointed_id(&self) -> &str {
        &self.config.id
    }
}

/// The CRIU images StartContainer restores from, when the container has them.
pub fn images_of(bundle: &Path) -> Option<PathBuf> {
    let dir = bundle.join(CHECKPOINT_DIR);
    dir.join("inventory.img").is_file().then_some(dir)
}

/// Starts the task by restoring it from `images`, which are then removed
/// (CRIU has read them; a container starts once).
pub async fn restore(shim: &dyn TaskRuntime, task: &CreateTask, images: &Path) -> ShimResult<u32> {
    let r = shim.restore(task, images).await;
    let _ = tokio::fs::remove_dir_all(images).await;
    r
}

impl Containers {
    /// Readies the created (not started) container `id` to be restored from
    /// `archive`: its CRIU images into the bundle, the archive's writable
    /// layer onto its root filesystem.
    pub async fn prepare_restore(&self, id: &str, archive: CheckpointArchive) -> Result<()> {
        let rec = self.get(id)?;
        let bundle = rec.bundle.clone();
        tokio::task::spawn_blocking(move || unpack(&archive.path, &bundle))
            .await
            .map_err(|e| Error::Internal(format!("restore unpack task: {e}")))?
    }
}

/// `checkpoint/` into `<bundle>/checkpoint`, `rootfs-diff.tar` onto
/// `<bundle>/rootfs`, then `deleted.files` removed from it.
fn unpack(archive: &Path, bundle: &Path) -> Result<()> {
    let rootfs = bundle.join("rootfs");
    let mut deleted: Vec<String> = Vec::new();
    let mut tar = tar::Archive::new(File::open(archive)?);
    for entry in tar.entries()? {
        let mut entry = entry?;
        let name = entry_name(&entry)?;
        if name == ROOTFS_DIFF_TAR {
            let mut layer = tar::Archive::new(&mut entry);
            layer.set_preserve_permissions(true);
            layer.set_preserve_ownerships(true);
            layer.set_unpack_xattrs(true);
            layer.set_overwrite(true);
            layer.unpack(&rootfs)?;
        } else if name == DELETED_FILES {
            let mut text = Vec::new();
            entry.read_to_end(&mut text)?;
            deleted = serde_json::from_slice(&text)
                .map_err(|e| Error::InvalidArgument(format!("{DELETED_FILES}: {e}")))?;
        } else if name == CHECKPOINT_DIR || name.starts_with(&format!("{CHECKPOINT_DIR}/")) {
            // unpack_in refuses names that leave the bundle.
            entry.unpack_in(bundle)?;
        }
    }
    for p in &deleted {
        remove_below(&rootfs, p)?;
    }
    if images_of(bundle).is_none() {
        return Err(Error::InvalidArgument(format!(
            "checkpoint archive {} holds no CRIU images",
            archive.display()
        )));
    }
    Ok(())
}

/// Removes `path` (absolute inside the container) below `rootfs`; a path
/// with `..` is refused, one already gone is fine.
fn remove_below(rootfs: &Path, path: &str) -> Result<()> {
    let rel = Path::new(path.trim_start_matches('/'));
    if rel.components().any(|c| !matches!(c, Component::Normal(_))) || path.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "{DELETED_FILES}: {path:?} is not a plain path"
        )));
    }
    let target = rootfs.join(rel);
    let r = match std::fs::symlink_metadata(&target) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(&target),
        Ok(_) => std::fs::remove_file(&target),
        Err(e) => Err(e),
    };
    match r {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn add<W: std::io::Write>(b: &mut tar::Builder<W>, name: &str, data: &[u8]) {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_cksum();
        b.append_data(&mut h, name, data).unwrap();
    }

    fn layer(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (n, d) in entries {
            add(&mut b, n, d);
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn an_archive_restores_images_layer_and_deletions() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("ck.tar");
        let mut b = tar::Builder::new(File::create(&path).unwrap());
        add(
            &mut b,
            "config.dump",
            br#"{"id":"old","rootfsImageRef":"sha256:abc"}"#,
        );
        add(
            &mut b,
            "spec.dump",
            br#"{"process":{"args":["/bin/sh","-c","x"]}}"#,
        );
        add(&mut b, "checkpoint/inventory.img", b"inv");
        add(
            &mut b,
            "rootfs-diff.tar",
            &layer(&[("count", b"41"), ("etc/new", b"n")]),
        );
        add(&mut b, "deleted.files", br#"["/etc/gone"]"#);
        b.finish().unwrap();
        drop(b);

        let a = CheckpointArchive::open(path.to_str().unwrap())
            .unwrap()
            .unwrap();
        assert_eq!(a.base_image(), "sha256:abc");
        assert_eq!(a.args(), ["/bin/sh", "-c", "x"]);
        assert_eq!(a.checkpointed_id(), "old");

        let bundle = d.path().join("bundle");
        std::fs::create_dir_all(bundle.join("rootfs/etc")).unwrap();
        std::fs::write(bundle.join("rootfs/etc/gone"), "old").unwrap();
        unpack(&path, &bundle).unwrap();
        assert_eq!(
            std::fs::read_to_string(bundle.join("rootfs/count")).unwrap(),
            "41"
        );
        assert!(bundle.join("rootfs/etc/new").is_file());
        assert!(!bundle.join("rootfs/etc/gone").exists());
        assert_eq!(images_of(&bundle), Some(bundle.join("checkpoint")));
    }

    #[test]
    fn what_is_not_a_checkpoint_archive_is_refused() {
        assert!(
            CheckpointArchive::open("docker.io/library/busybox")
                .unwrap()
                .is_none()
        );
        let d = tempfile::tempdir().unwrap();
        let missing = d.path().join("nope.tar");
        assert!(matches!(
            CheckpointArchive::open(missing.to_str().unwrap()),
            Err(Error::InvalidArgument(_))
        ));
        let path = d.path().join("plain.tar");
        let mut b = tar::Builder::new(File::create(&path).unwrap());
        add(&mut b, "etc/passwd", b"root");
        b.finish().unwrap();
        drop(b);
        let e = CheckpointArchive::open(path.to_str().unwrap()).unwrap_err();
        assert!(e.to_string().contains("not a checkpoint archive"), "{e}");
        assert!(remove_below(d.path(), "/../x").is_err());
        assert!(remove_below(d.path(), "/absent").is_ok());
    }
}

//! The checkpoint archive CheckpointContainer writes, in the layout CRI-O and
//! containerd write and checkpointctl reads (an uncompressed tar):
//!
//! - `checkpoint/`: CRIU's images (runc checkpoint's image directory)
//! - `dump.log`, `stats-dump`: CRIU's log and timing statistics of the dump
//! - `config.dump`: who the container was (id, name, image name and ref,
//!   runtime, created and checkpointed times)
//! - `spec.dump`: its OCI runtime spec (the bundle's config.json)
//! - `status.dump`: its CRI `ContainerStatus`, as JSON
//! - `rootfs-diff.tar`: what it wrote to its root filesystem (the overlay
//!   upper layer), and `deleted.files`: the image files it removed (a JSON list
//!   of absolute paths, from the layer's whiteouts)
//! - `container.log`: its CRI log so far, when it has one
//!
//! Everything is staged in a hidden directory beside the archive and the tar
//! is written to a hidden file there, then renamed into place: a failed or
//! abandoned checkpoint leaves neither (see [`Staging`]).

use std::{
    io::{BufWriter, Write},
    os::unix::fs::{FileTypeExt, MetadataExt},
    path::{Path, PathBuf},
};

use serde::Serialize;

use crate::{Error, Result};

/// CRIU's image directory inside the archive.
pub const CHECKPOINT_DIR: &str = "checkpoint";
pub const CONFIG_DUMP: &str = "config.dump";
pub const SPEC_DUMP: &str = "spec.dump";
pub const STATUS_DUMP: &str = "status.dump";
pub const ROOTFS_DIFF_TAR: &str = "rootfs-diff.tar";
pub const DELETED_FILES: &str = "deleted.files";
pub const CONTAINER_LOG: &str = "container.log";
/// What CRIU leaves in its work directory, kept in the archive.
pub const CRIU_WORK_FILES: [&str; 2] = ["dump.log", "stats-dump"];
/// CRIU's work directory while staging (not archived as such).
const WORK_DIR: &str = ".criu-work";

/// `config.dump`: the fields checkpointctl and the restoring runtimes read.
#[derive(Debug, Serialize)]
pub struct ConfigDump {
    pub id: String,
    pub name: String,
    #[serde(rename = "rootfsImage")]
    pub rootfs_image: String,
    #[serde(rename = "rootfsImageRef")]
    pub rootfs_image_ref: String,
    #[serde(rename = "rootfsImageName")]
    pub rootfs_image_name: String,
    /// The OCI runtime binary.
    pub runtime: String,
    #[serde(rename = "createdTime")]
    pub created_time: String,
    #[serde(rename = "checkpointedTime")]
    pub checkpointed_time: String,
}

/// Where the archive goes: `location` must be an absolute path whose parent
/// is a directory and which is not itself a directory (a file there is replaced).
pub fn check_location(location: &Path) -> Result<(PathBuf, String)> {
    let bad = |why: &str| {
        Error::InvalidArgument(format!("checkpoint location {}: {why}", location.display()))
    };
    if !location.is_absolute() {
        return Err(bad("not an absolute path"));
    }
    let (Some(parent), Some(name)) = (location.parent(), location.file_name()) else {
        return Err(bad("names no file"));
    };
    if !parent.is_dir() {
        return Err(bad("its directory does not exist"));
    }
    if location.is_dir() {
        return Err(bad("is a directory"));
    }
    Ok((parent.to_path_buf(), name.to_string_lossy().into_owned()))
}

/// The hidden staging directory and temporary tar beside the archive; both
/// are removed when dropped, unless the tar was renamed into place.
pub struct Staging {
    dir: PathBuf,
    tar: PathBuf,
    location: PathBuf,
}

impl Staging {
    /// Creates `<parent>/.<name>.<tag>.ckpt/` (tag: a random hex string).
    pub fn new(location: &Path, tag: &str) -> Result<Staging> {
        let (parent, name) = check_location(location)?;
        let dir = parent.join(format!(".{name}.{tag}.ckpt"));
        let tar = parent.join(format!(".{name}.{tag}.ckpt.tar"));
        std::fs::create_dir(&dir).map_err(|e| Error::write("create", &dir, e))?;
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
        let s = Staging {
            dir,
            tar,
            location: location.to_path_buf(),
        };
        std::fs::create_dir(s.images()).map_err(|e| Error::write("create", &s.images(), e))?;
        std::fs::create_dir(s.work()).map_err(|e| Error::write("create", &s.work(), e))?;
        Ok(s)
    }

    /// Where CRIU writes its images.
    pub fn images(&self) -> PathBuf {
        self.dir.join(CHECKPOINT_DIR)
    }

    /// Where CRIU works and logs.
    pub fn work(&self) -> PathBuf {
        self.dir.join(WORK_DIR)
    }

    /// Writes one metadata file into the staging directory.
    pub fn write(&self, name: &str, bytes: &[u8]) -> Result<()> {
        let p = self.dir.join(name);
        crust_state::private::write_file(&p, bytes).map_err(|e| Error::write("write", &p, e))
    }

    /// Copies a file into the staging directory.
    pub fn copy(&self, from: &Path, name: &str) -> Result<()> {
        let p = self.dir.join(name);
        std::fs::copy(from, &p)
            .map(|_| ())
            .map_err(|e| Error::write("copy", &p, e))
    }

    /// Moves CRIU's log and statistics out of its work directory, which is
    /// then removed.
    pub fn keep_criu_files(&self) -> Result<()> {
        for f in CRIU_WORK_FILES {
            let from = self.work().join(f);
            if from.exists() {
                std::fs::rename(&from, self.dir.join(f))?;
            }
        }
        std::fs::remove_dir_all(self.work())?;
        Ok(())
    }

    /// `rootfs-diff.tar` and `deleted.files` from an overlay upper directory.
    pub fn write_rootfs_diff(&self, upper: &Path) -> Result<()> {
        let path = self.dir.join(ROOTFS_DIFF_TAR);
        let out = crust_state::private::create_file(&path)
            .map_err(|e| Error::write("create", &path, e))?;
        let mut b = tar::Builder::new(BufWriter::new(out));
        b.follow_symlinks(false);
        let deleted = append_layer(&mut b, upper)?;
        b.into_inner()
            .and_then(|mut w| w.flush())
            .map_err(|e| Error::write("write", &path, e))?;
        let json = serde_json::to_vec(&deleted).map_err(|e| Error::Internal(e.to_string()))?;
        self.write(DELETED_FILES, &json)
    }

    /// Tars the staging directory and renames the tar to the location.
    pub fn finish(self) -> Result<()> {
        let out = crust_state::private::create_file(&self.tar)
            .map_err(|e| Error::write("create", &self.tar, e))?;
        let mut b = tar::Builder::new(BufWriter::new(out));
        b.follow_symlinks(false);
        b.append_dir_all(".", &self.dir)
            .map_err(|e| Error::write("write", &self.tar, e))?;
        let file = b
            .into_inner()
            .and_then(|w| w.into_inner().map_err(|e| e.into_error()))
            .map_err(|e| Error::write("write", &self.tar, e))?;
        file.sync_all()
            .map_err(|e| Error::write("sync", &self.tar, e))?;
        std::fs::rename(&self.tar, &self.location)
            .map_err(|e| Error::write("rename", &self.location, e))?;
        Ok(())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = std::fs::remove_file(&self.tar);
    }
}

/// An overlay whiteout: a character device 0:0.
fn is_whiteout(m: &std::fs::Metadata) -> bool {
    m.file_type().is_char_device() && m.rdev() == 0
}

/// Appends every entry of the upper layer but whiteouts (and sockets, which
/// tar cannot hold); returns the whited-out paths, absolute inside the container.
fn append_layer<W: Write>(b: &mut tar::Builder<W>, upper: &Path) -> Result<Vec<String>> {
    let mut deleted = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let dir = upper.join(&rel);
        let mut entries: Vec<_> = std::fs::read_dir(&dir)?.collect::<std::io::Result<_>>()?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let name = rel.join(e.file_name());
            let m = e.metadata()?;
            if is_whiteout(&m) {
                deleted.push(format!("/{}", name.display()));
                continue;
            }
            if m.file_type().is_socket() {
                continue;
            }
            b.append_path_with_name(e.path(), &name)?;
            if m.is_dir() {
                stack.push(name);
            }
        }
    }
    deleted.sort();
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;

    fn names(tar_path: &Path) -> Vec<String> {
        let mut a = tar::Archive::new(File::open(tar_path).unwrap());
        let mut v: Vec<String> = a
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn bad_locations_are_refused() {
        let d = tempfile::tempdir().unwrap();
        for (loc, why) in [
            ("rel.tar".to_string(), "not an absolute path"),
            (
                d.path().join("missing/x.tar").display().to_string(),
                "directory does not exist",
            ),
            (d.path().display().to_string(), "is a directory"),
        ] {
            let e = check_location(Path::new(&loc)).unwrap_err();
            assert!(
                matches!(&e, Error::InvalidArgument(m) if m.contains(why)),
                "{loc}: {e}"
            );
        }
        assert!(check_location(&d.path().join("ok.tar")).is_ok());
    }

    #[test]
    fn the_archive_holds_the_staged_files_and_the_layer_without_whiteouts() {
        let d = tempfile::tempdir().unwrap();
        let upper = d.path().join("upper");
        std::fs::create_dir_all(upper.join("etc/sub")).unwrap();
        std::fs::write(upper.join("etc/sub/new"), "x").unwrap();
        std::os::unix::fs::symlink("/nowhere", upper.join("link")).unwrap();
        let whiteout = upper.join("etc/gone");
        nix::sys::stat::mknod(
            &whiteout,
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::from_bits_truncate(0o000),
            0,
        )
        .unwrap();
        let location = d.path().join("ckpt.tar");
        let s = Staging::new(&location, "t1").unwrap();
        std::fs::write(s.images().join("pstree.img"), "img").unwrap();
        std::fs::write(s.work().join("dump.log"), "log").unwrap();
        s.keep_criu_files().unwrap();
        s.write(CONFIG_DUMP, b"{}").unwrap();
        s.write_rootfs_diff(&upper).unwrap();
        let staged = s.dir.clone();
        s.finish().unwrap();
        assert!(!staged.exists(), "staging removed");
        let mut left: Vec<_> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, ["ckpt.tar", "upper"]);
        let got = names(&location);
        for want in [
            "checkpoint/pstree.img",
            "config.dump",
            "deleted.files",
            "dump.log",
            "rootfs-diff.tar",
        ] {
            assert!(got.iter().any(|n| n == want), "{want} not in {got:?}");
        }
        assert!(!got.iter().any(|n| n.contains(WORK_DIR)), "{got:?}");
        // The layer, unpacked from the archive.
        let mut a = tar::Archive::new(File::open(&location).unwrap());
        let out = d.path().join("out");
        a.unpack(&out).unwrap();
        assert_eq!(
            names(&out.join(ROOTFS_DIFF_TAR)),
            ["etc", "etc/sub", "etc/sub/new", "link"]
        );
        assert_eq!(
            std::fs::read_to_string(out.join(DELETED_FILES)).unwrap(),
            r#"["/etc/gone"]"#
        );
    }

    #[test]
    fn an_abandoned_checkpoint_leaves_nothing() {
        let d = tempfile::tempdir().unwrap();
        let location = d.path().join("ckpt.tar");
        let s = Staging::new(&location, "t2").unwrap();
        std::fs::write(s.images().join("pages-1.img"), "x").unwrap();
        s.write(SPEC_DUMP, b"{}").unwrap();
        drop(s);
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0);
    }
}

//! Disk usage of the snapshot and content stores (ImageFsInfo): allocated bytes and
//! inodes per store directory, hard links counted once, and the mount point holding it.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use super::ImageStore;
use crate::error::{Error, Result};

/// Usage of one store directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsUsage {
    /// The directory measured.
    pub path: PathBuf,
    /// The mount point holding it.
    pub mountpoint: PathBuf,
    /// Bytes used (allocated blocks).
    pub bytes: u64,
    /// Inodes used.
    pub inodes: u64,
}

/// Usage of the snapshot store and the content store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsInfo {
    /// Snapshots (unpacked layers, container upper dirs).
    pub snapshots: FsUsage,
    /// Blobs.
    pub content: FsUsage,
}

impl ImageStore {
    /// Bytes and inodes used by the snapshot and content stores.
    pub async fn fs_info(&self) -> Result<FsInfo> {
        let snap = self.inner.snapshots.root().to_path_buf();
        let content = self.inner.content.root().to_path_buf();
        tokio::task::spawn_blocking(move || {
            Ok(FsInfo {
                snapshots: usage(&snap)?,
                content: usage(&content)?,
            })
        })
        .await
        .map_err(|e| Error::Internal(format!("fs info task: {e}")))?
    }
}

/// Allocated bytes and inodes under `path` (hard links counted once).
fn usage(path: &Path) -> Result<FsUsage> {
    use std::os::unix::fs::MetadataExt;
    let mut bytes = 0u64;
    let mut inodes = 0u64;
    let mut seen: HashSet<(u64, u64)> = HashSet::new();
    let mut stack = vec![path.to_path_buf()];
    while let Some(p) = stack.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&p) else {
            continue; // removed while we walked
        };
        if meta.nlink() > 1 && !meta.is_dir() && !seen.insert((meta.dev(), meta.ino())) {
            continue;
        }
        bytes += meta.blocks() * 512;
        inodes += 1;
        if meta.is_dir()
            && let Ok(rd) = std::fs::read_dir(&p)
        {
            stack.extend(rd.flatten().map(|e| e.path()));
        }
    }
    Ok(FsUsage {
        path: path.to_path_buf(),
        mountpoint: mountpoint(path)?,
        bytes,
        inodes,
    })
}

/// The mount point holding `path`: the longest mount target in /proc/self/mountinfo that
/// is a prefix of it.
fn mountpoint(path: &Path) -> Result<PathBuf> {
    let path = std::fs::canonicalize(path)
        .map_err(|e| Error::io(format!("canonicalize {}", path.display()), e))?;
    let info = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| Error::io("read /proc/self/mountinfo", e))?;
    let mut best = PathBuf::from("/");
    for line in info.lines() {
        let Some(target) = line.split(' ').nth(4) else {
            continue;
        };
        let target = PathBuf::from(target.replace("\\040", " "));
        if path.starts_with(&target) && target.components().count() > best.components().count() {
            best = target;
        }
    }
    Ok(best)
}

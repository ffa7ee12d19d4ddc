//! Writes that fail because the filesystem is full.

use std::io;
use std::path::{Path, PathBuf};

/// A write under `path` failed for lack of space (ENOSPC) or quota (EDQUOT).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} {}: no space left on device ({})", .path.display(), free_text(*.free))]
pub struct NoSpace {
    /// What was being written: "write", "create", "state store", ...
    pub what: String,
    pub path: PathBuf,
    /// Bytes available to crustd on the filesystem holding `path`, when it could be read.
    pub free: Option<u64>,
}

fn free_text(free: Option<u64>) -> String {
    match free {
        Some(b) => format!("{b} bytes free on its filesystem"),
        None => "free space unknown".to_string(),
    }
}

impl NoSpace {
    /// Describes a failed write of `path`, reading the free space now.
    pub fn at(what: impl Into<String>, path: &Path) -> NoSpace {
        NoSpace {
            what: what.into(),
            path: path.to_owned(),
            free: free_bytes(path),
        }
    }

    /// `Some` when `err` says the filesystem is full.
    pub fn from_io(what: impl Into<String>, path: &Path, err: &io::Error) -> Option<NoSpace> {
        is_no_space(err).then(|| NoSpace::at(what, path))
    }
}

/// Whether an I/O error means "no space left" (or quota exceeded).
pub fn is_no_space(err: &io::Error) -> bool {
    matches!(err.raw_os_error(), Some(n) if n == nix::libc::ENOSPC || n == nix::libc::EDQUOT)
}

/// Bytes free on the filesystem of `path` (or of its nearest existing ancestor, for a file not
/// created yet); `f_bfree`, what root (crustd) may still use.
pub fn free_bytes(path: &Path) -> Option<u64> {
    let mut p = Some(path);
    while let Some(cur) = p {
        if let Ok(st) = nix::sys::statvfs::statvfs(cur) {
            return Some(st.blocks_free() * st.fragment_size());
        }
        p = cur.parent();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enospc_and_edquot_are_no_space() {
        assert!(is_no_space(&io::Error::from_raw_os_error(
            nix::libc::ENOSPC
        )));
        assert!(is_no_space(&io::Error::from_raw_os_error(
            nix::libc::EDQUOT
        )));
        assert!(!is_no_space(&io::Error::from_raw_os_error(nix::libc::EIO)));
        assert!(!is_no_space(&io::Error::other("x")));
    }

    #[test]
    fn message_names_path_and_free_space() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("not-yet/config.json");
        let e = NoSpace::at("write", &path);
        assert!(
            e.free.is_some(),
            "free space of the nearest existing parent"
        );
        let msg = e.to_string();
        assert!(
            msg.starts_with(&format!(
                "write {}: no space left on device (",
                path.display()
            )),
            "{msg}"
        );
        assert!(msg.contains("bytes free on its filesystem"), "{msg}");
    }
}

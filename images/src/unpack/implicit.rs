//! Directories a layer holds files in but has no entry for (umoci `insert` writes such
//! layers): made 0755 while unpacking, they take the owner, mode and times of the same
//! directory in the nearest layer below once that is committed, as containerd's
//! applier, which unpacks onto the view of the layers below, leaves them.

use std::path::{Path, PathBuf};

use rustix::fs::{FileType, Gid, Mode, OFlags, ResolveFlags, Timespec, Timestamps, Uid};
use rustix::io::Errno;

use super::entry::errno_err;
use crate::error::{Error, Result};

/// Gives each of `dirs` in the unpacked layer `fs` the owner, mode and times of the
/// same directory in the nearest of `lowers` (the layers below, top first) that has
/// it; a lower layer holding something else there (a file, a whiteout, a symlink on
/// the way) ends the search and the directory stays as it was made. Nothing is
/// followed: both sides are opened beneath their roots without symlinks.
pub fn inherit_implicit_dirs(fs: &Path, dirs: &[PathBuf], lowers: &[PathBuf]) -> Result<()> {
    let open_root = |p: &Path| {
        rustix::fs::open(
            p,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
            Mode::empty(),
        )
        .map_err(|e| Error::Internal(format!("open {}: {e}", p.display())))
    };
    let how = ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
    let upper = open_root(fs)?;
    let lowers = lowers
        .iter()
        .map(|l| open_root(l))
        .collect::<Result<Vec<_>>>()?;
    for dir in dirs {
        let Ok(fd) = rustix::fs::openat2(
            &upper,
            dir,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
            how,
        ) else {
            continue; // replaced by a later entry of the layer
        };
        for lower in &lowers {
            let st = match rustix::fs::openat2(
                lower,
                dir,
                OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
                how,
            ) {
                Ok(l) => rustix::fs::fstat(&l).map_err(|e| errno_err(dir, "stat", e))?,
                Err(Errno::NOENT) => continue,
                Err(_) => break,
            };
            if FileType::from_raw_mode(st.st_mode) != FileType::Directory {
                break;
            }
            let owner = (
                Some(Uid::from_raw(st.st_uid)),
                Some(Gid::from_raw(st.st_gid)),
            );
            rustix::fs::fchown(&fd, owner.0, owner.1).map_err(|e| errno_err(dir, "chown", e))?;
            rustix::fs::fchmod(&fd, Mode::from_raw_mode(st.st_mode & 0o7777))
                .map_err(|e| errno_err(dir, "chmod", e))?;
            let ts = |s: i64, ns: i64| Timespec {
                tv_sec: s,
                tv_nsec: ns,
            };
            let times = Timestamps {
                last_access: ts(st.st_atime, st.st_atime_nsec as i64),
                last_modification: ts(st.st_mtime, st.st_mtime_nsec as i64),
            };
            rustix::fs::futimens(&fd, &times).map_err(|e| errno_err(dir, "utimes", e))?;
            break;
        }
    }
    Ok(())
}

//! Idmapped mounts, built by crust itself (runc 1.1 has no `idmap` mount option):
//! `open_tree(OPEN_TREE_CLONE)` makes a detached copy of a tree, `mount_setattr(MOUNT_ATTR_IDMAP)`
//! gives it a user namespace's mapping, `move_mount` attaches it where runc is told to look.
//! A file owned by id `n` on disk is then seen as the host id the mapping gives container id
//! `n` — root's files as the pod's root — and what the pod writes is stored with the ids it
//! has inside. Overlayfs cannot be idmapped itself, so a container's rootfs is an overlay whose
//! *lower layers* are idmapped clones (`Staged`), its upper layer written with host ids.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

const OPEN_TREE_CLONE: libc::c_uint = 1;
const AT_RECURSIVE: libc::c_uint = 0x8000;
const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;

/// `struct mount_attr` (MOUNT_ATTR_SIZE_VER0).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

fn cstr(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path has a NUL byte"))
}

fn errno(what: &str, p: &Path) -> io::Error {
    let e = io::Error::last_os_error();
    io::Error::new(e.kind(), format!("{what} {}: {e}", p.display()))
}

/// A detached, recursive copy of the tree at `source`, idmapped with `userns`'s mapping.
pub fn detached_clone(source: &Path, userns: &OwnedFd) -> io::Result<OwnedFd> {
    let src = cstr(source)?;
    // SAFETY: a NUL-terminated path; the kernel returns a new descriptor or -1.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            src.as_ptr(),
            OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint | AT_RECURSIVE,
        )
    };
    if fd < 0 {
        return Err(errno("open_tree", source));
    }
    // SAFETY: open_tree returned a fresh descriptor we own.
    let tree = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_IDMAP,
        attr_clr: 0,
        propagation: 0,
        userns_fd: userns.as_raw_fd() as u64,
    };
    // SAFETY: the attr struct lives across the call and its size is passed.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH as libc::c_uint | AT_RECURSIVE,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if r != 0 {
        return Err(errno("mount_setattr(MOUNT_ATTR_IDMAP)", source));
    }
    Ok(tree)
}

fn attach(tree: &OwnedFd, target: &Path) -> io::Result<()> {
    let dst = cstr(target)?;
    // SAFETY: a descriptor we own and a NUL-terminated path.
    let r = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            dst.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if r != 0 {
        return Err(errno("move_mount onto", target));
    }
    Ok(())
}

/// Mounts an idmapped copy of `source` (a directory or a file, with its submounts) at
/// `target`, which is created to match. On error nothing is mounted and `target` is gone.
pub fn bind(source: &Path, target: &Path, userns: &OwnedFd) -> io::Result<()> {
    let md = std::fs::metadata(source)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", source.display())))?;
    if md.is_dir() {
        std::fs::create_dir(target)?;
    } else {
        std::fs::File::create(target)?;
    }
    let done = detached_clone(source, userns).and_then(|tree| attach(&tree, target));
    if done.is_err() {
        let _ = if md.is_dir() {
            std::fs::remove_dir(target)
        } else {
            std::fs::remove_file(target)
        };
    }
    done
}

/// Unmounts every mount at or below `dir` (see `namespaces::unmount_all_below`).
pub fn release(dir: &Path) -> io::Result<()> {
    crate::namespaces::unmount_all_below(dir)
}

/// Lower layers of an overlay, each attached idmapped at `<stage>/<i>` for the time of the
/// overlay mount: overlayfs takes private copies of its layers, so the staged mounts are
/// detached and their directory removed when this is dropped.
pub struct Staged {
    stage: PathBuf,
    pub paths: Vec<PathBuf>,
}

impl Staged {
    pub fn new(lowers: &[&Path], stage: &Path, userns: &OwnedFd) -> io::Result<Staged> {
        crust_state::private::create_dir(stage)?;
        let mut staged = Staged {
            stage: stage.to_path_buf(),
            paths: Vec::new(),
        };
        for (i, l) in lowers.iter().enumerate() {
            let target = stage.join(i.to_string());
            bind(l, &target, userns)?;
            staged.paths.push(target);
        }
        Ok(staged)
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        match release(&self.stage) {
            Ok(()) => {
                if let Err(e) = std::fs::remove_dir_all(&self.stage) {
                    tracing::warn!(dir = %self.stage.display(), error = %e, "removing staged layers");
                }
            }
            Err(e) => tracing::warn!(error = %e, "detaching staged idmapped layers"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::userns::{IdMapping, UserNamespace};
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn a_bind_shows_root_files_as_the_mapped_root_and_is_released() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: needs root");
            return;
        }
        let map = vec![IdMapping {
            container_id: 0,
            host_id: 2_000_000,
            length: 65536,
        }];
        let userns = crate::userns::new_userns_fd(&UserNamespace {
            uids: map.clone(),
            gids: map,
        })
        .unwrap();
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("src");
        std::fs::create_dir(&src).unwrap();
        std::fs::write(src.join("f"), "x").unwrap();
        std::fs::write(d.path().join("file"), "y").unwrap();
        let mnt = d.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        bind(&src, &mnt.join("dir"), &userns).unwrap();
        bind(&d.path().join("file"), &mnt.join("file"), &userns).unwrap();
        assert_eq!(
            std::fs::metadata(mnt.join("dir/f")).unwrap().uid(),
            2_000_000
        );
        assert_eq!(
            std::fs::metadata(mnt.join("file")).unwrap().gid(),
            2_000_000
        );
        assert_eq!(std::fs::metadata(src.join("f")).unwrap().uid(), 0);
        // A missing source leaves no target behind.
        assert!(bind(&d.path().join("nope"), &mnt.join("nope"), &userns).is_err());
        assert!(!mnt.join("nope").exists());
        release(&mnt).unwrap();
        assert!(!crate::namespaces::is_mounted(&mnt.join("dir")));
        assert!(!crate::namespaces::is_mounted(&mnt.join("file")));
        {
            let staged = Staged::new(&[&src], &d.path().join("stage"), &userns).unwrap();
            assert_eq!(
                std::fs::metadata(staged.paths[0].join("f")).unwrap().uid(),
                2_000_000
            );
        }
        assert!(!d.path().join("stage").exists());
    }
}

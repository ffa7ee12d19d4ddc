//! Mounting a snapshot's mounts: overlay through the new mount API (one `lowerdir+`
//! per layer), or a bind mount.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// A mount, in the shape containerd's snapshotters return: enough for
/// `mount -t <fstype> -o <options> <source> <target>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mount {
    /// `overlay` or `bind`.
    pub fstype: String,
    /// `overlay`, or the directory to bind.
    pub source: String,
    /// Mount options (`lowerdir=…`, `upperdir=…`, `workdir=…`, `ro`, `rbind`).
    pub options: Vec<String>,
}

/// Mounts `mounts` (as returned by [`super::Snapshotter::prepare`]) at `target`.
///
/// Overlay goes through the new mount API, one `lowerdir+` per layer (Linux 6.8+), so
/// no lowerdir list ever meets the one-page limit of mount(2) options; older kernels get
/// mount(2) with the joined list.
pub fn mount(mounts: &[Mount], target: &Path) -> Result<()> {
    use rustix::mount::{
        FsMountFlags, FsOpenFlags, MountAttrFlags, MountFlags, MoveMountFlags, fsconfig_create,
        fsconfig_set_string, fsmount, fsopen, move_mount,
    };
    let err = |what: &str, e: rustix::io::Errno| {
        Error::Internal(format!("mount {} ({what}): {e}", target.display()))
    };
    for m in mounts {
        let ro = m.options.iter().any(|o| o == "ro");
        if m.fstype == "bind" {
            rustix::mount::mount_bind_recursive(m.source.as_str(), target)
                .map_err(|e| err("bind", e))?;
            if ro {
                let flags = MountFlags::BIND | MountFlags::RDONLY;
                rustix::mount::mount_remount(target, flags, "")
                    .map_err(|e| err("remount ro", e))?;
            }
            continue;
        }
        let fs = fsopen("overlay", FsOpenFlags::FSOPEN_CLOEXEC).map_err(|e| err("fsopen", e))?;
        let mut new_api = true;
        for o in &m.options {
            let (k, v) = o.split_once('=').unwrap_or((o.as_str(), ""));
            match k {
                "lowerdir" => {
                    for l in v.split(':') {
                        if fsconfig_set_string(&fs, "lowerdir+", l).is_err() {
                            new_api = false;
                            break;
                        }
                    }
                }
                "upperdir" | "workdir" => {
                    fsconfig_set_string(&fs, k, v).map_err(|e| err(k, e))?;
                }
                _ => {}
            }
            if !new_api {
                break;
            }
        }
        if new_api {
            fsconfig_create(&fs).map_err(|e| err("create", e))?;
            let attrs = if ro {
                MountAttrFlags::MOUNT_ATTR_RDONLY
            } else {
                MountAttrFlags::empty()
            };
            let mnt = fsmount(&fs, FsMountFlags::FSMOUNT_CLOEXEC, attrs)
                .map_err(|e| err("fsmount", e))?;
            move_mount(
                &mnt,
                "",
                rustix::fs::CWD,
                target,
                MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
            )
            .map_err(|e| err("move_mount", e))?;
        } else {
            let opts = m
                .options
                .iter()
                .filter(|o| *o != "ro")
                .cloned()
                .collect::<Vec<_>>()
                .join(",");
            let flags = if ro {
                MountFlags::RDONLY
            } else {
                MountFlags::empty()
            };
            let data = std::ffi::CString::new(opts)
                .map_err(|_| Error::InvalidArgument("mount options contain NUL".into()))?;
            rustix::mount::mount("overlay", target, "overlay", flags, data.as_c_str())
                .map_err(|e| err("mount(2)", e))?;
        }
    }
    Ok(())
}

//! The bundle on disk: `<state_dir>/containers/<id>/` with `config.json` (the OCI spec,
//! typed, 0600: it carries the env), `rootfs/` (the mounted snapshot), `exec/` (exec FIFOs)
//! and the stdin FIFO.

use std::path::{Path, PathBuf};

use oci_spec::runtime::Spec;

use super::{Containers, Rootfs, RunAs};
use crate::error::{Error, Result};

/// Where bundles live.
pub(super) fn bundles_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("containers")
}

/// The OCI spec of a bundle.
pub(super) fn read_spec(bundle: &Path) -> Result<Spec> {
    let text = std::fs::read(bundle.join("config.json"))?;
    serde_json::from_slice(&text).map_err(|e| Error::Internal(format!("config.json: {e}")))
}

/// Writes the OCI spec of a bundle (owner-only).
pub(super) fn write_spec(bundle: &Path, spec: &Spec) -> Result<()> {
    let text = serde_json::to_vec_pretty(spec)
        .map_err(|e| Error::Internal(format!("serializing the OCI spec: {e}")))?;
    let path = bundle.join("config.json");
    crust_state::private::write_file(&path, &text).map_err(|e| Error::write("write", &path, e))
}

/// Unmounts a container's rootfs and removes its snapshot; idempotent.
pub(super) fn release_rootfs(rootfs: &dyn Rootfs, key: &str, target: &Path) -> Result<()> {
    super::userns::release(target.parent().unwrap_or(target))?;
    crate::namespaces::unmount(target)?;
    rootfs.remove(key)
}

/// Removes a directory tree; absent is fine.
pub(super) fn remove_tree(dir: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

impl Containers {
    /// The OCI spec the container was created with.
    pub fn oci_spec(&self, id: &str) -> Result<Spec> {
        read_spec(&self.get(id)?.bundle)
    }

    /// Who the container runs as (ContainerStatus.user): the effective ids of its running
    /// init process (`/proc/<pid>/status`), else the user its spec was built with — from
    /// its record, or for a record of an older crustd, from its `config.json`.
    pub fn run_as(&self, rec: &super::ContainerRecord) -> Option<RunAs> {
        let running = (rec.state == super::ContainerState::Running && rec.pid > 0)
            .then(|| super::user::process_ids(rec.pid))
            .flatten();
        if let Some(p) = running {
            return Some(RunAs {
                uid: p.uid,
                gid: p.gid,
                additional_gids: p.groups,
            });
        }
        rec.user.clone().or_else(|| {
            let spec = read_spec(&rec.bundle).ok()?;
            Some(RunAs::of(spec.process().as_ref()?.user()))
        })
    }
}

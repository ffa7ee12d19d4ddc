//! A container of a pod with its own user namespace (see `crate::userns`): what changes from
//! an ordinary one, as narrow hooks for create and start.
//!
//! - The spec joins the pod's pinned user namespace and carries its maps (runc 1.1 wants them
//!   even when it joins one, and writes none then).
//! - runc's init prepares the rootfs *as the pod's root*, an unprivileged host uid: the path to
//!   the bundle must be searchable by it, so `state_dir` and `containers/` get search-only bits
//!   for others (`--x`, no listing) and the bundle is 0710 with the pod root's group, as
//!   containerd does. Everything else stays owner-only. Start-up tightening takes those bits
//!   off again, so `allow_init_in` runs at every create and start.
//! - The rootfs is an overlay over idmapped image layers (`Rootfs::mount_idmapped`), and the
//!   pod's files (hosts, hostname, resolv.conf, /dev/shm) and every CRI mount that carries
//!   uid/gid mappings are bound from idmapped copies under `<bundle>/idmap/`, released with the
//!   rootfs. CRI mounts without mappings stay plain binds (kubelet sets the mappings on the
//!   volumes it wants idmapped).

use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use k8s_cri::v1::ContainerConfig;
use oci_spec::runtime::{
    LinuxIdMapping, LinuxIdMappingBuilder, LinuxNamespaceBuilder, LinuxNamespaceType, Spec,
};

use crate::error::{Error, Result};
use crate::pod::PodRecord;
use crate::userns::{IdMapping, UserNamespace};

/// The idmapped copies runc binds from.
const IDMAP_DIR: &str = "idmap";

/// A pod's user namespace as its containers use it.
pub(crate) struct PodUserns {
    pub pin: PathBuf,
    pub maps: UserNamespace,
}

impl PodUserns {
    pub fn of(pod: &PodRecord) -> Option<PodUserns> {
        Some(PodUserns {
            pin: pod.namespaces.user.clone()?,
            maps: pod.spec.namespaces.userns.clone()?,
        })
    }

    pub fn open(&self) -> Result<OwnedFd> {
        crate::userns::open(&self.pin).map_err(|e| {
            Error::FailedPrecondition(format!("the pod's user namespace is gone: {e}"))
        })
    }
}

/// Lets runc's init, running as the pod's root, walk to the bundle (see the module doc).
pub(crate) fn allow_init_in(state_dir: &Path, bundle: &Path, maps: &UserNamespace) -> Result<()> {
    let (_, gid) = maps.host_root();
    let search = |p: &Path| -> Result<()> {
        let mode = std::fs::metadata(p)?.permissions().mode() & 0o7777;
        if mode & 0o011 != 0o011 {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode | 0o011))
                .map_err(|e| Error::write("chmod", p, e))?;
        }
        Ok(())
    };
    // Above state_dir crust changes nothing: a directory there the pod's root may not
    // search would fail runc's init with a bare EACCES, so it is named here instead.
    for a in state_dir.ancestors().skip(1) {
        let mode = std::fs::metadata(a)?.permissions().mode();
        if mode & 0o001 == 0 {
            return Err(Error::FailedPrecondition(format!(
                "a user namespace's root (host uid {}) cannot reach the bundle: {} (mode {:04o}) \
                 above state_dir is not searchable by others",
                maps.host_root().0,
                a.display(),
                mode & 0o7777
            )));
        }
    }
    search(state_dir)?;
    search(&state_dir.join("containers"))?;
    for dir in [bundle.to_path_buf(), bundle.join(IDMAP_DIR)] {
        if !dir.exists() {
            continue;
        }
        std::os::unix::fs::chown(&dir, None, Some(gid))
            .map_err(|e| Error::write("chown", &dir, e))?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o710))
            .map_err(|e| Error::write("chmod", &dir, e))?;
    }
    Ok(())
}

/// Makes the spec join the pod's user namespace with its maps.
fn join(spec: &mut Spec, pod: &PodUserns) -> Result<()> {
    let to_oci = |map: &[IdMapping]| -> Result<Vec<LinuxIdMapping>> {
        map.iter()
            .map(|m| {
                LinuxIdMappingBuilder::default()
                    .container_id(m.container_id)
                    .host_id(m.host_id)
                    .size(m.length)
                    .build()
                    .map_err(|e| Error::Internal(format!("id mapping: {e}")))
            })
            .collect()
    };
    let uids = to_oci(&pod.maps.uids)?;
    let gids = to_oci(&pod.maps.gids)?;
    let user = LinuxNamespaceBuilder::default()
        .typ(LinuxNamespaceType::User)
        .path(pod.pin.clone())
        .build()
        .map_err(|e| Error::Internal(format!("user namespace: {e}")))?;
    let linux = spec
        .linux_mut()
        .as_mut()
        .ok_or_else(|| Error::Internal("spec without a linux section".into()))?;
    let mut namespaces = linux.namespaces().clone().unwrap_or_default();
    namespaces.retain(|n| n.typ() != LinuxNamespaceType::User);
    namespaces.insert(0, user);
    linux.set_namespaces(Some(namespaces));
    linux.set_uid_mappings(Some(uids));
    linux.set_gid_mappings(Some(gids));
    Ok(())
}

/// The maps of a CRI mount, None when it has none.
fn mount_maps(m: &k8s_cri::v1::Mount) -> Option<UserNamespace> {
    (!m.uid_mappings.is_empty() || !m.gid_mappings.is_empty())
        .then(|| UserNamespace::from_cri(&m.uid_mappings, &m.gid_mappings))
}

/// Binds the pod's files and every CRI mount with mappings from idmapped copies under
/// `<bundle>/idmap/`. On error the caller releases what was made (`release`).
fn idmap_mounts(
    spec: &mut Spec,
    config: &ContainerConfig,
    pod: &PodRecord,
    userns: &PodUserns,
    bundle: &Path,
) -> Result<()> {
    let pod_files: Vec<&Path> = [
        Some(&pod.hosts_path),
        Some(&pod.hostname_path),
        Some(&pod.resolv_conf_path),
        pod.shm.as_ref(),
    ]
    .into_iter()
    .flatten()
    .map(PathBuf::as_path)
    .filter(|p| !p.as_os_str().is_empty())
    .collect();
    let pod_fd = userns.open()?;
    let dir = bundle.join(IDMAP_DIR);
    crust_state::private::create_dir(&dir).map_err(|e| Error::write("create", &dir, e))?;
    let Some(mounts) = spec.mounts_mut().as_mut() else {
        return Ok(());
    };
    for (n, m) in mounts.iter_mut().enumerate() {
        let Some(source) = m.source().clone() else {
            continue;
        };
        let cri = config.mounts.iter().rev().find(|c| {
            Path::new(&c.container_path) == m.destination() && Path::new(&c.host_path) == source
        });
        let own_fd;
        let fd = match cri.and_then(mount_maps) {
            Some(maps) if maps == userns.maps => &pod_fd,
            Some(maps) => {
                maps.validate().map_err(|e| {
                    Error::InvalidArgument(format!(
                        "mount {}: uid/gid mappings: {e}",
                        m.destination().display()
                    ))
                })?;
                own_fd = crate::userns::new_userns_fd(&maps).map_err(|e| {
                    Error::Internal(format!("a user namespace for an idmapped mount: {e}"))
                })?;
                &own_fd
            }
            None if cri.is_none() && pod_files.contains(&source.as_path()) => &pod_fd,
            None => continue,
        };
        let target = dir.join(n.to_string());
        crate::idmap::bind(&source, &target, fd).map_err(|e| {
            Error::FailedPrecondition(format!(
                "idmapped mount of {} for {}: {e}",
                source.display(),
                m.destination().display()
            ))
        })?;
        m.set_source(Some(target));
    }
    Ok(())
}

/// CreateContainer's rootfs step for a container of a user-namespaced pod.
pub(crate) fn mount_rootfs(
    rootfs: &dyn super::Rootfs,
    state_dir: &Path,
    key: &str,
    image_id: &str,
    target: &Path,
    userns: &PodUserns,
) -> Result<()> {
    allow_init_in(state_dir, target.parent().unwrap_or(target), &userns.maps)?;
    rootfs.mount_idmapped(
        key,
        image_id,
        target,
        &userns.open()?,
        userns.maps.host_root(),
    )
}

/// CreateContainer's spec step: join the user namespace, bind from idmapped copies.
pub(crate) fn adapt_spec(
    spec: &mut Spec,
    config: &ContainerConfig,
    pod: &PodRecord,
    userns: &PodUserns,
    state_dir: &Path,
    bundle: &Path,
) -> Result<()> {
    join(spec, userns)?;
    idmap_mounts(spec, config, pod, userns, bundle)?;
    allow_init_in(state_dir, bundle, &userns.maps)
}

/// Unmounts whatever is mounted in a bundle — the idmapped copies, lower layers staged by a
/// create a crash cut short, the rootfs; an error means one stayed (delete nothing then).
pub(crate) fn release(bundle: &Path) -> Result<()> {
    crate::idmap::release(bundle).map_err(Error::from)
}

/// Refuses uid/gid mappings on a mount of a pod without a user namespace.
pub(crate) fn check_mounts(config: &ContainerConfig, pod: &PodRecord) -> Result<()> {
    if PodUserns::of(pod).is_some() {
        return Ok(());
    }
    match config.mounts.iter().find(|m| mount_maps(m).is_some()) {
        Some(m) => Err(Error::InvalidArgument(format!(
            "mount {}: uid/gid mappings (an idmapped mount) need a pod with its own user namespace",
            m.container_path
        ))),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn maps(host: u32) -> UserNamespace {
        let m = vec![IdMapping {
            container_id: 0,
            host_id: host,
            length: 65536,
        }];
        UserNamespace {
            uids: m.clone(),
            gids: m,
        }
    }

    #[test]
    fn the_spec_joins_the_pods_user_namespace_with_its_maps() {
        let mut spec = Spec::default();
        let pod = PodUserns {
            pin: "/run/crust/pods/p/ns/user".into(),
            maps: maps(655360),
        };
        join(&mut spec, &pod).unwrap();
        // Twice is the same (a retried create rebuilds the spec).
        join(&mut spec, &pod).unwrap();
        let linux = spec.linux().as_ref().unwrap();
        let ns = linux.namespaces().as_ref().unwrap();
        let users: Vec<_> = ns
            .iter()
            .filter(|n| n.typ() == LinuxNamespaceType::User)
            .collect();
        assert_eq!(users.len(), 1);
        assert_eq!(
            users[0].path().as_deref(),
            Some(Path::new("/run/crust/pods/p/ns/user"))
        );
        let uids = linux.uid_mappings().as_ref().unwrap();
        assert_eq!(
            (uids[0].container_id(), uids[0].host_id(), uids[0].size()),
            (0, 655360, 65536)
        );
        assert_eq!(linux.gid_mappings().as_ref().unwrap().len(), 1);
    }

    #[test]
    fn the_bundle_path_is_opened_to_the_pods_root_only_as_far_as_needed() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: needs root");
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let state = d.path().join("state");
        let bundle = state.join("containers/abc");
        crust_state::private::create_dir(&bundle).unwrap();
        // A directory above state_dir others cannot search: named, nothing changed.
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let e = allow_init_in(&state, &bundle, &maps(700000)).unwrap_err();
        assert!(matches!(e, Error::FailedPrecondition(_)), "{e}");
        assert!(
            e.to_string().contains(&d.path().display().to_string()),
            "{e}"
        );
        assert_eq!(std::fs::metadata(&state).unwrap().mode() & 0o777, 0o700);
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
        allow_init_in(&state, &bundle, &maps(700000)).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().mode() & 0o7777;
        assert_eq!(mode(&state), 0o711);
        assert_eq!(mode(&state.join("containers")), 0o711);
        assert_eq!(mode(&bundle), 0o710);
        assert_eq!(std::fs::metadata(&bundle).unwrap().gid(), 700000);
    }
}

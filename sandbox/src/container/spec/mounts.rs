//! The mounts of a container: the kernel filesystems every container has, the
//! files it takes from its pod, and the CRI mounts with their propagation.

use std::path::{Path, PathBuf};

use k8s_cri::v1::{ContainerConfig, MountPropagation};
use oci_spec::runtime::{Mount, MountBuilder};

use super::{PodContext, SpecError};

fn mount(dest: &str, typ: &str, source: &str, options: &[&str]) -> Mount {
    MountBuilder::default()
        .destination(dest)
        .typ(typ)
        .source(source)
        .options(options.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .build()
        .expect("static mount")
}

pub(super) fn default_mounts(privileged: bool) -> Vec<Mount> {
    let sys_mode = if privileged { "rw" } else { "ro" };
    vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"]),
        mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        ),
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        ),
        mount(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        ),
        mount(
            "/sys",
            "sysfs",
            "sysfs",
            &["nosuid", "noexec", "nodev", sys_mode],
        ),
        mount(
            "/sys/fs/cgroup",
            "cgroup",
            "cgroup",
            &["nosuid", "noexec", "nodev", "relatime", sys_mode],
        ),
    ]
}

fn bind(dest: &str, source: &Path, readonly: bool) -> Mount {
    let mut opts = vec!["rbind", "rprivate"];
    opts.push(if readonly { "ro" } else { "rw" });
    MountBuilder::default()
        .destination(dest)
        .typ("bind")
        .source(source)
        .options(opts.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .build()
        .expect("static mount")
}

/// /etc/hosts, /etc/hostname, /etc/resolv.conf and /dev/shm from the pod,
/// unless the container mounts its own there.
pub(super) fn add_pod_mounts(
    mounts: &mut Vec<Mount>,
    pod: &PodContext,
    config: &ContainerConfig,
) -> Result<(), SpecError> {
    let own = |dest: &str| config.mounts.iter().any(|m| m.container_path == dest);
    let readonly_rootfs = config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .is_some_and(|s| s.readonly_rootfs);
    for (dest, src) in [
        ("/etc/hosts", &pod.hosts_file),
        ("/etc/hostname", &pod.hostname_file),
        ("/etc/resolv.conf", &pod.resolv_conf),
    ] {
        if let Some(src) = src
            && !own(dest)
        {
            mounts.push(bind(dest, src, readonly_rootfs));
        }
    }
    if !own("/dev/shm") {
        let shm = pod.shm.clone().unwrap_or_else(|| PathBuf::from("/dev/shm"));
        let mut m = bind("/dev/shm", &shm, false);
        m.set_options(Some(
            ["rbind", "rprivate", "nosuid", "nodev", "noexec"]
                .iter()
                .map(|s| s.to_string())
                .collect(),
        ));
        mounts.push(m);
    }
    Ok(())
}

/// How the mount holding a host path propagates, from the host's mountinfo.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HostPropagation {
    Shared,
    /// A slave (and not shared): mounts come in from its master.
    Slave,
    Private,
}

/// The propagation of the mount that holds `path` (its longest mount point prefix; the
/// last such mount wins, as it is the one on top), from `/proc/self/mountinfo` text.
pub(crate) fn propagation_of(mountinfo: &str, path: &Path) -> HostPropagation {
    let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let mut best: Option<(usize, HostPropagation)> = None;
    for line in mountinfo.lines() {
        let Some(mount_point) = crate::mountinfo::mount_point(line) else {
            continue;
        };
        if !path.starts_with(&mount_point) {
            continue;
        }
        // Optional fields run from the 7th field to the "-" separator.
        let optional = line.split(' ').skip(6).take_while(|f| *f != "-");
        let mut prop = HostPropagation::Private;
        for f in optional {
            if f.starts_with("shared:") {
                prop = HostPropagation::Shared;
                break;
            }
            if f.starts_with("master:") {
                prop = HostPropagation::Slave;
            }
        }
        let depth = mount_point.components().count();
        if best.is_none_or(|(d, _)| depth >= d) {
            best = Some((depth, prop));
        }
    }
    best.map_or(HostPropagation::Private, |(_, p)| p)
}

/// The CRI mounts: host paths bound with their readonly flag and propagation. Returns
/// the root propagation the container needs (as containerd sets it): `rshared` when a
/// mount is bidirectional, `rslave` when one receives the host's mounts; None keeps
/// runc's default. A bidirectional mount needs a shared host mount, a host-to-container
/// one a shared or slave one: otherwise nothing would propagate, and that is an error.
pub(super) fn add_cri_mounts(
    mounts: &mut Vec<Mount>,
    config: &ContainerConfig,
    host_propagation: &dyn Fn(&Path) -> std::io::Result<HostPropagation>,
) -> Result<Option<&'static str>, SpecError> {
    let mut root = None;
    for m in &config.mounts {
        let err = |message: &str| SpecError::Mount {
            container_path: m.container_path.clone(),
            message: message.to_string(),
        };
        // Both paths are absolute (checked at the CRI edge); the host's must exist.
        let host = Path::new(&m.host_path);
        if !host.exists() {
            return Err(err(&format!("host path {} does not exist", m.host_path)));
        }
        let wanted = MountPropagation::try_from(m.propagation)
            .unwrap_or(MountPropagation::PropagationPrivate);
        let propagation = match wanted {
            MountPropagation::PropagationPrivate => "rprivate",
            MountPropagation::PropagationHostToContainer => {
                let host_prop = host_propagation(host)
                    .map_err(|e| err(&format!("reading the host's mounts: {e}")))?;
                if host_prop == HostPropagation::Private {
                    return Err(err(&format!(
                        "host path {} is on a private mount: HostToContainer propagation needs a shared or slave one",
                        m.host_path
                    )));
                }
                root = root.or(Some("rslave"));
                "rslave"
            }
            MountPropagation::PropagationBidirectional => {
                let host_prop = host_propagation(host)
                    .map_err(|e| err(&format!("reading the host's mounts: {e}")))?;
                if host_prop != HostPropagation::Shared {
                    return Err(err(&format!(
                        "host path {} is not on a shared mount: Bidirectional propagation needs one",
                        m.host_path
                    )));
                }
                root = Some("rshared");
                "rshared"
            }
        };
        let mut opts = vec![
            "rbind".to_string(),
            propagation.to_string(),
            if m.readonly { "ro" } else { "rw" }.to_string(),
        ];
        // Read-only below too: runc makes every submount read-only (mount_setattr
        // with AT_RECURSIVE). Only with ro and private propagation (checked at the edge).
        if m.recursive_read_only {
            opts.push("rro".to_string());
        }
        // A later mount over the same destination replaces a default one.
        mounts.retain(|x| x.destination() != Path::new(&m.container_path));
        mounts.push(
            MountBuilder::default()
                .destination(&m.container_path)
                .typ("bind")
                .source(host)
                .options(opts)
                .build()?,
        );
    }
    Ok(root)
}

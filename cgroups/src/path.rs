//! cgroup paths under the two drivers: cgroupfs paths, and systemd slices and scopes
//! (written through cgroupfs, not D-Bus).

use serde::{Deserialize, Serialize};

/// Which cgroup driver kubelet uses (the syntax of `cgroup_parent`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CgroupDriver {
    #[default]
    Cgroupfs,
    Systemd,
}

impl CgroupDriver {
    /// The name kubelet's `--cgroup-driver` and crustd's config use.
    pub fn as_str(self) -> &'static str {
        match self {
            CgroupDriver::Cgroupfs => "cgroupfs",
            CgroupDriver::Systemd => "systemd",
        }
    }
}

/// The cgroup path (relative to each hierarchy's root, starting with `/`) of a pod.
///
/// cgroupfs: `cgroup_parent` is a path (`/kubepods/besteffort/pod<uid>`), the pod gets
/// `<parent>/crust-<id>`; no parent means `/crust/<id>`.
/// systemd: `cgroup_parent` is a slice name (`kubepods-besteffort-pod<uid>.slice`) that expands
/// to `/kubepods.slice/kubepods-besteffort.slice/...`; the pod gets the slice
/// `kubepods-besteffort-pod<uid>-crust<id>.slice` inside it (see `PodCgroup::slice` in crust-sandbox).
pub fn pod_cgroup_path(
    driver: CgroupDriver,
    cgroup_parent: &str,
    pod_id: &str,
) -> Result<String, String> {
    if pod_id.is_empty() || !pod_id.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(format!("invalid pod id {pod_id:?}"));
    }
    match driver {
        CgroupDriver::Cgroupfs => {
            if cgroup_parent.is_empty() {
                return Ok(format!("/crust/{pod_id}"));
            }
            let parent = cgroup_parent.trim_end_matches('/');
            if !parent.starts_with('/') && !parent.is_empty() {
                return Err(format!(
                    "cgroup parent {cgroup_parent:?} must be an absolute path with the cgroupfs driver"
                ));
            }
            if parent.split('/').any(|c| c == ".." || c == ".") || parent.contains("//") {
                return Err(format!("invalid cgroup parent {cgroup_parent:?}"));
            }
            Ok(format!("{parent}/crust-{pod_id}"))
        }
        CgroupDriver::Systemd => {
            if cgroup_parent.is_empty() {
                return expand_slice(&format!("crust-{pod_id}.slice"));
            }
            // A slice's place is in its name: the child of `a-b.slice` is `a-b-<x>.slice`.
            expand_slice(cgroup_parent)?;
            let leaf = match cgroup_parent.strip_suffix(".slice") {
                Some("-") | None => format!("crust{pod_id}.slice"),
                Some(stem) => format!("{stem}-crust{pod_id}.slice"),
            };
            expand_slice(&leaf)
        }
    }
}

/// systemd's slice name to path: `a-b-c.slice` → `/a.slice/a-b.slice/a-b-c.slice`.
pub fn expand_slice(slice: &str) -> Result<String, String> {
    let bad = || format!("invalid systemd slice {slice:?} for the systemd cgroup driver");
    let name = slice.strip_suffix(".slice").ok_or_else(bad)?;
    if name == "-" {
        return Ok("/".into());
    }
    if name.is_empty()
        || name.contains('/')
        || name.starts_with('-')
        || name.ends_with('-')
        || name.contains("--")
    {
        return Err(bad());
    }
    let mut path = String::new();
    let mut prefix = String::new();
    for part in name.split('-') {
        if !prefix.is_empty() {
            prefix.push('-');
        }
        prefix.push_str(part);
        path.push_str(&format!("/{prefix}.slice"));
    }
    Ok(path)
}

/// A container's cgroup as a path below each hierarchy's mount: the path
/// itself, or for runc's systemd form `slice:prefix:name` the scope runc has
/// systemd make, `<expanded slice>/<prefix>-<name>.scope`. None if malformed.
pub fn cgroupfs_path(cgroups_path: &str) -> Option<String> {
    let mut parts = cgroups_path.split(':');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(path), None, None, None) => Some(path.to_string()),
        (Some(slice), Some(prefix), Some(name), None) => {
            let slice = if slice.is_empty() {
                "system.slice"
            } else {
                slice
            };
            let dir = expand_slice(slice).ok()?;
            Some(format!(
                "{}/{prefix}-{name}.scope",
                dir.trim_end_matches('/')
            ))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn systemd_cgroups_paths_map_to_their_scope() {
        assert_eq!(
            cgroupfs_path("/crust/pod/c1").as_deref(),
            Some("/crust/pod/c1")
        );
        assert_eq!(
            cgroupfs_path("kubepods-pod1-crustp.slice:crust:c1").as_deref(),
            Some("/kubepods.slice/kubepods-pod1.slice/kubepods-pod1-crustp.slice/crust-c1.scope")
        );
        assert_eq!(
            cgroupfs_path(":crust:c1").as_deref(),
            Some("/system.slice/crust-c1.scope")
        );
        assert_eq!(cgroupfs_path("a:b"), None);
        assert_eq!(cgroupfs_path("bad:crust:c1"), None);
    }
}

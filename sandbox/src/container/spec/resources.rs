//! Resources and devices: the cgroup limits runc applies, the device cgroup
//! rules, and the device nodes a container gets.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use k8s_cri::v1::ContainerConfig;
use oci_spec::runtime::{
    LinuxCpuBuilder, LinuxDeviceBuilder, LinuxDeviceCgroupBuilder, LinuxDeviceType,
    LinuxHugepageLimitBuilder, LinuxMemoryBuilder, LinuxResources, LinuxResourcesBuilder,
};

use super::SpecError;

pub(super) fn resources(
    linux: &k8s_cri::v1::LinuxContainerConfig,
    privileged: bool,
) -> Result<LinuxResources, SpecError> {
    let mut devices = vec![
        // Deny everything, then allow what every container needs.
        LinuxDeviceCgroupBuilder::default()
            .allow(privileged)
            .access("rwm")
            .build()?,
    ];
    if !privileged {
        for (typ, major, minor) in [
            (LinuxDeviceType::C, 1, 3),    // null
            (LinuxDeviceType::C, 1, 5),    // zero
            (LinuxDeviceType::C, 1, 7),    // full
            (LinuxDeviceType::C, 1, 8),    // random
            (LinuxDeviceType::C, 1, 9),    // urandom
            (LinuxDeviceType::C, 5, 0),    // tty
            (LinuxDeviceType::C, 5, 2),    // ptmx
            (LinuxDeviceType::C, 136, -1), // pts
        ] {
            let mut b = LinuxDeviceCgroupBuilder::default()
                .allow(true)
                .typ(typ)
                .major(major)
                .access("rwm");
            if minor >= 0 {
                b = b.minor(minor);
            }
            devices.push(b.build()?);
        }
    }
    let mut b = LinuxResourcesBuilder::default().devices(devices);
    if let Some(r) = &linux.resources {
        let mut cpu = LinuxCpuBuilder::default();
        if r.cpu_shares > 0 {
            cpu = cpu.shares(r.cpu_shares as u64);
        }
        // -1 is "no limit" (accepted at the CRI edge): an update lifting a limit needs it.
        if r.cpu_quota > 0 || r.cpu_quota == -1 {
            cpu = cpu.quota(r.cpu_quota);
        }
        if r.cpu_period > 0 {
            cpu = cpu.period(r.cpu_period as u64);
        }
        if !r.cpuset_cpus.is_empty() {
            cpu = cpu.cpus(r.cpuset_cpus.clone());
        }
        if !r.cpuset_mems.is_empty() {
            cpu = cpu.mems(r.cpuset_mems.clone());
        }
        b = b.cpu(cpu.build()?);
        if r.memory_limit_in_bytes > 0 {
            let mut mem = LinuxMemoryBuilder::default().limit(r.memory_limit_in_bytes);
            if r.memory_swap_limit_in_bytes > 0 || r.memory_swap_limit_in_bytes == -1 {
                mem = mem.swap(r.memory_swap_limit_in_bytes);
            }
            b = b.memory(mem.build()?);
        }
        if !r.hugepage_limits.is_empty() {
            let limits = r
                .hugepage_limits
                .iter()
                .map(|h| {
                    LinuxHugepageLimitBuilder::default()
                        .page_size(h.page_size.clone())
                        .limit(h.limit as i64)
                        .build()
                })
                .collect::<Result<Vec<_>, _>>()?;
            b = b.hugepage_limits(limits);
        }
        if !r.unified.is_empty() {
            b = b.unified(r.unified.clone().into_iter().collect::<HashMap<_, _>>());
        }
    }
    Ok(b.build()?)
}

/// The resources of an UpdateContainerResources as an OCI `LinuxResources`
/// object: cpu, memory, hugepages and unified keys, no device rules.
pub fn resources_json(
    linux: &k8s_cri::v1::LinuxContainerConfig,
) -> Result<serde_json::Value, SpecError> {
    let mut r = resources(linux, false)?;
    r.set_devices(None);
    serde_json::to_value(&r)
        .map_err(|e| SpecError::Oci(oci_spec::OciSpecError::Other(e.to_string())))
}

/// Every device node of the host, for privileged containers.
pub(super) fn host_devices() -> Vec<oci_spec::runtime::LinuxDevice> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::from("/dev")];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let path = e.path();
            // /dev/pts and /dev/shm, /dev/mqueue are the container's own.
            if ["/dev/pts", "/dev/shm", "/dev/mqueue", "/dev/console"]
                .iter()
                .any(|p| path == Path::new(p))
            {
                continue;
            }
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(path);
            } else if let Some(d) = device_node(&path, &path, false) {
                out.push(d);
            }
        }
    }
    out
}

/// The device node at `host` (following links when asked), to appear at `inside`;
/// None when it is not a character or block device.
fn device_node(host: &Path, inside: &Path, follow: bool) -> Option<oci_spec::runtime::LinuxDevice> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let meta = if follow {
        std::fs::metadata(host)
    } else {
        std::fs::symlink_metadata(host)
    }
    .ok()?;
    let ft = meta.file_type();
    let typ = if ft.is_char_device() {
        LinuxDeviceType::C
    } else if ft.is_block_device() {
        LinuxDeviceType::B
    } else {
        return None;
    };
    let rdev = meta.rdev();
    LinuxDeviceBuilder::default()
        .path(inside)
        .typ(typ)
        .major(libc::major(rdev) as i64)
        .minor(libc::minor(rdev) as i64)
        .file_mode(meta.mode() & 0o777)
        .uid(meta.uid())
        .gid(meta.gid())
        .build()
        .ok()
}

/// The devices the CRI config asks for, with their cgroup rules.
pub(super) fn cri_devices(
    config: &ContainerConfig,
) -> Result<
    (
        Vec<oci_spec::runtime::LinuxDevice>,
        Vec<oci_spec::runtime::LinuxDeviceCgroup>,
    ),
    SpecError,
> {
    let mut nodes = Vec::new();
    let mut rules = Vec::new();
    for d in &config.devices {
        let err = |message: String| SpecError::Device {
            host_path: d.host_path.clone(),
            message,
        };
        // Paths and permissions were checked at the CRI edge.
        let perms = if d.permissions.is_empty() {
            "rwm"
        } else {
            d.permissions.as_str()
        };
        let inside = if d.container_path.is_empty() {
            &d.host_path
        } else {
            &d.container_path
        };
        let node = device_node(Path::new(&d.host_path), Path::new(inside), true)
            .ok_or_else(|| err("not a character or block device on this host".into()))?;
        rules.push(
            LinuxDeviceCgroupBuilder::default()
                .allow(true)
                .typ(node.typ())
                .major(node.major())
                .minor(node.minor())
                .access(perms)
                .build()?,
        );
        nodes.push(node);
    }
    Ok((nodes, rules))
}

//! The OCI runtime spec of a container, built from its CRI config, its image's
//! config and its pod, merged the way Docker and containerd merge them.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use k8s_cri::v1::{
    ContainerConfig, MountPropagation, NamespaceMode, security_profile::ProfileType,
};
use oci_spec::image::Config as ImageConfig;
use oci_spec::runtime::{
    Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxCpuBuilder, LinuxDeviceBuilder,
    LinuxDeviceCgroupBuilder, LinuxDeviceType, LinuxHugepageLimitBuilder, LinuxMemoryBuilder,
    LinuxNamespaceBuilder, LinuxNamespaceType, LinuxResources, LinuxResourcesBuilder, LinuxSeccomp,
    Mount, MountBuilder, ProcessBuilder, RootBuilder, Spec, SpecBuilder, UserBuilder,
};

use super::seccomp;
use super::user::{self, ResolvedUser, UserRequest};

/// Capabilities a container gets unless it asks otherwise: the set containerd,
/// CRI-O and Docker agree on.
pub const DEFAULT_CAPABILITIES: &[Capability] = &[
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::Mknod,
    Capability::NetRaw,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::Kill,
    Capability::AuditWrite,
];

/// Every capability crustd itself may hand out, for privileged containers and
/// "ALL": the names in kernel order, kept where crustd's bounding set has the
/// bit. (This host's root lacks CAP_SYS_RESOURCE; asking runc for it fails.)
fn all_capabilities() -> HashSet<Capability> {
    // Index = the kernel's capability number.
    const NAMES: &[&str] = &[
        "CHOWN",
        "DAC_OVERRIDE",
        "DAC_READ_SEARCH",
        "FOWNER",
        "FSETID",
        "KILL",
        "SETGID",
        "SETUID",
        "SETPCAP",
        "LINUX_IMMUTABLE",
        "NET_BIND_SERVICE",
        "NET_BROADCAST",
        "NET_ADMIN",
        "NET_RAW",
        "IPC_LOCK",
        "IPC_OWNER",
        "SYS_MODULE",
        "SYS_RAWIO",
        "SYS_CHROOT",
        "SYS_PTRACE",
        "SYS_PACCT",
        "SYS_ADMIN",
        "SYS_BOOT",
        "SYS_NICE",
        "SYS_RESOURCE",
        "SYS_TIME",
        "SYS_TTY_CONFIG",
        "MKNOD",
        "LEASE",
        "AUDIT_WRITE",
        "AUDIT_CONTROL",
        "SETFCAP",
        "MAC_OVERRIDE",
        "MAC_ADMIN",
        "SYSLOG",
        "WAKE_ALARM",
        "BLOCK_SUSPEND",
        "AUDIT_READ",
        "PERFMON",
        "BPF",
        "CHECKPOINT_RESTORE",
    ];
    let bounding = own_bounding_set();
    NAMES
        .iter()
        .enumerate()
        .filter(|(i, _)| bounding & (1u64 << i) != 0)
        .filter_map(|(_, n)| Capability::from_str(n).ok())
        .collect()
}

/// crustd's capability bounding set (`CapBnd`), all bits when unreadable.
fn own_bounding_set() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapBnd:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(u64::MAX)
}

/// Paths masked in every unprivileged container (the runc/containerd set).
const MASKED_PATHS: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Paths read-only in every unprivileged container.
const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// How the container's PID namespace is chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PidNamespace {
    /// A new one for this container (the CRI default).
    Container,
    /// The pod's shared one, pinned at this path.
    Pod(PathBuf),
    /// Another container's, pinned at this path (NamespaceMode TARGET).
    Target(PathBuf),
    /// The host's.
    Node,
}

/// What the container takes from its pod.
#[derive(Debug, Clone)]
pub struct PodContext {
    pub pod_id: String,
    pub hostname: String,
    /// Pinned namespace paths; `None` means the host's (hostNetwork, hostIPC).
    pub net_ns: Option<PathBuf>,
    pub ipc_ns: Option<PathBuf>,
    pub uts_ns: Option<PathBuf>,
    pub pid_ns: PidNamespace,
    pub hosts_file: Option<PathBuf>,
    pub resolv_conf: Option<PathBuf>,
    pub hostname_file: Option<PathBuf>,
    /// The pod's /dev/shm; `None` means the host's (hostIPC).
    pub shm: Option<PathBuf>,
    /// The container's cgroup path as runc takes it (`/parent/pod/ctr` for
    /// cgroupfs, `slice:prefix:name` for systemd).
    pub cgroups_path: String,
}

/// The node facts the spec depends on.
#[derive(Debug, Clone)]
pub struct NodeContext {
    /// crustd's own oom_score_adj: a container may not ask for less, since this
    /// host lacks CAP_SYS_RESOURCE (containerd's restrict_oom_score_adj).
    pub min_oom_score_adj: i32,
    /// Whether the host runs AppArmor.
    pub apparmor: bool,
    /// Directory `Localhost` seccomp profiles are resolved against when relative.
    pub seccomp_profile_root: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("container has no command: neither the request nor the image gives one")]
    NoCommand,
    #[error(transparent)]
    User(#[from] user::UserError),
    #[error("unknown capability {0:?}")]
    UnknownCapability(String),
    #[error("seccomp profile {path}: {message}")]
    SeccompProfile { path: PathBuf, message: String },
    #[error("unsupported seccomp profile {0:?}")]
    SeccompType(String),
    #[error("apparmor profile {0:?} requested but AppArmor is not enabled on this host")]
    AppArmor(String),
    #[error("device {host_path:?}: {message}")]
    Device { host_path: String, message: String },
    #[error("mount {container_path:?}: {message}")]
    Mount {
        container_path: String,
        message: String,
    },
    #[error("building the OCI spec: {0}")]
    Oci(#[from] oci_spec::OciSpecError),
}

/// The built spec and what crust keeps beside it.
pub struct BuiltSpec {
    pub spec: Spec,
    pub user: ResolvedUser,
    /// The image's StopSignal, when it has one.
    pub stop_signal: Option<String>,
}

/// Builds the spec. `rootfs` is the container's mounted root filesystem (the
/// user database is read from it); the spec itself names `rootfs_in_bundle`.
pub fn build(
    config: &ContainerConfig,
    image: Option<&ImageConfig>,
    rootfs: &Path,
    pod: &PodContext,
    node: &NodeContext,
) -> Result<BuiltSpec, SpecError> {
    let linux_cfg = config.linux.clone().unwrap_or_default();
    let sc = linux_cfg.security_context.clone().unwrap_or_default();
    let privileged = sc.privileged;

    // Command: Docker's rules. A command replaces the image's entrypoint and
    // drops its cmd; args alone replace only the cmd.
    let image_entrypoint = image
        .and_then(|i| i.entrypoint().clone())
        .unwrap_or_default();
    let image_cmd = image.and_then(|i| i.cmd().clone()).unwrap_or_default();
    let mut args: Vec<String> = if !config.command.is_empty() {
        config.command.clone()
    } else {
        image_entrypoint
    };
    if !config.args.is_empty() {
        args.extend(config.args.iter().cloned());
    } else if config.command.is_empty() {
        args.extend(image_cmd);
    }
    if args.is_empty() {
        return Err(SpecError::NoCommand);
    }

    // Environment: image first, then the request; a later key wins in place.
    let mut env: Vec<String> = Vec::new();
    for kv in image.and_then(|i| i.env().clone()).unwrap_or_default() {
        set_env(&mut env, kv);
    }
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        set_env(
            &mut env,
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
        );
    }
    set_env(&mut env, format!("HOSTNAME={}", pod.hostname));
    for kv in &config.envs {
        set_env(&mut env, format!("{}={}", kv.key, kv.value));
    }

    let cwd = if !config.working_dir.is_empty() {
        config.working_dir.clone()
    } else {
        image
            .and_then(|i| i.working_dir().clone())
            .filter(|w| !w.is_empty())
            .unwrap_or_else(|| "/".to_string())
    };

    let (passwd, group) = user::read_user_db(rootfs);
    let resolved = user::resolve(
        &UserRequest {
            run_as_user: sc.run_as_user.as_ref().map(|v| v.value as u32),
            run_as_username: &sc.run_as_username,
            run_as_group: sc.run_as_group.as_ref().map(|v| v.value as u32),
            supplemental_groups: &sc
                .supplemental_groups
                .iter()
                .map(|g| *g as u32)
                .collect::<Vec<_>>(),
            image_user: image.and_then(|i| i.user().as_deref()).unwrap_or(""),
        },
        &passwd,
        &group,
    )?;

    let caps = capabilities(privileged, sc.capabilities.as_ref())?;

    let mut process = ProcessBuilder::default()
        .terminal(config.tty)
        .args(args)
        .env(env)
        .cwd(cwd)
        .user(
            UserBuilder::default()
                .uid(resolved.uid)
                .gid(resolved.gid)
                .additional_gids(resolved.additional_gids.clone())
                .build()?,
        )
        .capabilities(
            LinuxCapabilitiesBuilder::default()
                .bounding(caps.clone())
                .effective(caps.clone())
                .permitted(caps.clone())
                // Non-root processes keep no capabilities across exec
                // unless ambient; kubelet expects root-only semantics.
                .inheritable(HashSet::new())
                .ambient(HashSet::new())
                .build()?,
        )
        .no_new_privileges(sc.no_new_privs)
        .build()?;
    // Always written, 0 (unset) included, as containerd does: a process runc starts
    // without one inherits the shim's, which is crustd's — -999 under crustd.service,
    // where the OOM killer would all but never pick it.
    let asked = linux_cfg
        .resources
        .as_ref()
        .map_or(0, |r| r.oom_score_adj as i32);
    process.set_oom_score_adj(Some(asked.max(node.min_oom_score_adj)));
    // The deprecated string fields still come from older kubelets.
    #[allow(deprecated)]
    let legacy = &sc.apparmor_profile;
    if let Some(p) = apparmor_profile(sc.apparmor.as_ref(), legacy, node, privileged)? {
        process.set_apparmor_profile(Some(p));
    }

    let mut mounts = default_mounts(privileged);
    add_pod_mounts(&mut mounts, pod, config)?;
    // Read once, and only if a mount asks for propagation.
    let mountinfo = std::cell::OnceCell::new();
    let rootfs_propagation = add_cri_mounts(&mut mounts, config, &|p: &Path| {
        let text = match mountinfo.get() {
            Some(t) => t,
            None => {
                let t = crate::mountinfo::read()?;
                mountinfo.get_or_init(|| t)
            }
        };
        Ok(propagation_of(text, p))
    })?;

    let mut namespaces = vec![
        LinuxNamespaceBuilder::default()
            .typ(LinuxNamespaceType::Mount)
            .build()?,
    ];
    let mut ns = |typ, path: Option<&PathBuf>| -> Result<(), SpecError> {
        let mut b = LinuxNamespaceBuilder::default().typ(typ);
        if let Some(p) = path {
            b = b.path(p.clone());
        }
        namespaces.push(b.build()?);
        Ok(())
    };
    if let Some(p) = &pod.net_ns {
        ns(LinuxNamespaceType::Network, Some(p))?;
    }
    if let Some(p) = &pod.ipc_ns {
        ns(LinuxNamespaceType::Ipc, Some(p))?;
    }
    if let Some(p) = &pod.uts_ns {
        ns(LinuxNamespaceType::Uts, Some(p))?;
    }
    // The container's own PID mode (from its namespace options) refines the pod's.
    let pid_mode = linux_cfg
        .security_context
        .as_ref()
        .and_then(|s| s.namespace_options.as_ref())
        .map(|o| o.pid);
    match (&pod.pid_ns, pid_mode) {
        (PidNamespace::Node, _) => {}
        (_, Some(m)) if m == NamespaceMode::Node as i32 => {}
        (PidNamespace::Pod(p), _) | (PidNamespace::Target(p), _) => {
            ns(LinuxNamespaceType::Pid, Some(p))?
        }
        (PidNamespace::Container, _) => ns(LinuxNamespaceType::Pid, None)?,
    }

    let mut linux = LinuxBuilder::default()
        .namespaces(namespaces)
        .cgroups_path(PathBuf::from(&pod.cgroups_path))
        .resources(resources(&linux_cfg, privileged)?)
        .build()?;
    if let Some(p) = rootfs_propagation {
        linux.set_rootfs_propagation(Some(p.to_string()));
    }
    let (mut devices, rules) = cri_devices(config)?;
    if privileged {
        devices.extend(host_devices());
        linux.set_masked_paths(Some(Vec::new()));
        linux.set_readonly_paths(Some(Vec::new()));
    } else if let Some(r) = linux.resources_mut() {
        let mut all = r.devices().clone().unwrap_or_default();
        all.extend(rules);
        r.set_devices(Some(all));
    }
    if !devices.is_empty() {
        linux.set_devices(Some(devices));
    }
    if !privileged {
        linux.set_masked_paths(Some(MASKED_PATHS.iter().map(|s| s.to_string()).collect()));
        linux.set_readonly_paths(Some(READONLY_PATHS.iter().map(|s| s.to_string()).collect()));
        #[allow(deprecated)]
        let legacy = &sc.seccomp_profile_path;
        if let Some(profile) = seccomp_profile(sc.seccomp.as_ref(), legacy, &caps, node)? {
            linux.set_seccomp(Some(profile));
        }
    }
    // kubelet sends the masked and read-only lists itself (its ProcMount
    // "Default" set); when it sends them, they replace crust's.
    if !privileged
        && let Some(s) = &linux_cfg.security_context
        && (!s.masked_paths.is_empty() || !s.readonly_paths.is_empty())
    {
        linux.set_masked_paths(Some(s.masked_paths.clone()));
        linux.set_readonly_paths(Some(s.readonly_paths.clone()));
    }

    let mut annotations: HashMap<String, String> = config.annotations.clone().into_iter().collect();
    annotations.insert(
        "io.kubernetes.cri.container-type".into(),
        "container".into(),
    );
    annotations.insert("io.kubernetes.cri.sandbox-id".into(), pod.pod_id.clone());
    if let Some(m) = &config.metadata {
        annotations.insert("io.kubernetes.cri.container-name".into(), m.name.clone());
    }

    let mut spec = SpecBuilder::default()
        .version("1.0.2")
        .root(
            RootBuilder::default()
                .path("rootfs")
                .readonly(sc.readonly_rootfs)
                .build()?,
        )
        .process(process)
        .mounts(mounts)
        .linux(linux)
        .annotations(annotations)
        .build()?;
    // The pod's UTS namespace already carries its hostname; runc refuses a
    // hostname without a UTS namespace of the container's own or its pod's
    // (hostNetwork pods use the host's).
    spec.set_hostname(pod.uts_ns.as_ref().map(|_| pod.hostname.clone()));
    Ok(BuiltSpec {
        spec,
        user: resolved,
        stop_signal: image.and_then(|i| i.stop_signal().clone()),
    })
}

/// Sets `KEY=value` in `env`, replacing an earlier value of KEY in place.
fn set_env(env: &mut Vec<String>, kv: String) {
    let key = kv
        .split_once('=')
        .map_or(kv.as_str(), |(k, _)| k)
        .to_string();
    match env
        .iter_mut()
        .find(|e| e.split_once('=').map_or(e.as_str(), |(k, _)| k) == key)
    {
        Some(slot) => *slot = kv,
        None => env.push(kv),
    }
}

fn capabilities(
    privileged: bool,
    req: Option<&k8s_cri::v1::Capability>,
) -> Result<HashSet<Capability>, SpecError> {
    if privileged {
        return Ok(all_capabilities());
    }
    let mut caps: HashSet<Capability> = DEFAULT_CAPABILITIES.iter().copied().collect();
    let Some(req) = req else { return Ok(caps) };
    let parse = |n: &str| -> Result<Capability, SpecError> {
        let bare = n.trim().to_uppercase();
        let bare = bare.strip_prefix("CAP_").unwrap_or(&bare).to_string();
        Capability::from_str(&bare).map_err(|_| SpecError::UnknownCapability(n.to_string()))
    };
    let is_all = |n: &String| n.eq_ignore_ascii_case("ALL");
    if req.add_capabilities.iter().any(is_all) {
        caps = all_capabilities();
    } else {
        for n in &req.add_capabilities {
            caps.insert(parse(n)?);
        }
    }
    if req.drop_capabilities.iter().any(is_all) {
        caps.clear();
        // "drop ALL, add X" keeps X, as Docker does.
        for n in req.add_capabilities.iter().filter(|n| !is_all(n)) {
            caps.insert(parse(n)?);
        }
    } else {
        for n in &req.drop_capabilities {
            caps.remove(&parse(n)?);
        }
    }
    Ok(caps)
}

fn mount(dest: &str, typ: &str, source: &str, options: &[&str]) -> Mount {
    MountBuilder::default()
        .destination(dest)
        .typ(typ)
        .source(source)
        .options(options.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .build()
        .expect("static mount")
}

fn default_mounts(privileged: bool) -> Vec<Mount> {
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
fn add_pod_mounts(
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
fn add_cri_mounts(
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
        let opts = vec![
            "rbind".to_string(),
            propagation.to_string(),
            if m.readonly { "ro" } else { "rw" }.to_string(),
        ];
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

fn resources(
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
fn host_devices() -> Vec<oci_spec::runtime::LinuxDevice> {
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
fn cri_devices(
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

fn seccomp_profile(
    profile: Option<&k8s_cri::v1::SecurityProfile>,
    legacy_path: &str,
    caps: &HashSet<Capability>,
    node: &NodeContext,
) -> Result<Option<LinuxSeccomp>, SpecError> {
    let (kind, localhost) = match profile {
        Some(p) => (
            ProfileType::try_from(p.profile_type).unwrap_or(ProfileType::Unconfined),
            p.localhost_ref.clone(),
        ),
        // The deprecated string field: "runtime/default", "unconfined", "localhost/<path>".
        None => match legacy_path {
            "" | "unconfined" => (ProfileType::Unconfined, String::new()),
            "runtime/default" | "docker/default" => (ProfileType::RuntimeDefault, String::new()),
            p => match p.strip_prefix("localhost/") {
                Some(path) => (ProfileType::Localhost, path.to_string()),
                None => return Err(SpecError::SeccompType(p.to_string())),
            },
        },
    };
    match kind {
        ProfileType::Unconfined => Ok(None),
        ProfileType::RuntimeDefault => Ok(Some(seccomp::runtime_default(caps))),
        ProfileType::Localhost => {
            let path = if Path::new(&localhost).is_absolute() {
                PathBuf::from(&localhost)
            } else {
                node.seccomp_profile_root.join(&localhost)
            };
            let text = std::fs::read_to_string(&path).map_err(|e| SpecError::SeccompProfile {
                path: path.clone(),
                message: e.to_string(),
            })?;
            serde_json::from_str(&text)
                .map(Some)
                .map_err(|e| SpecError::SeccompProfile {
                    path,
                    message: format!("not a valid seccomp profile: {e}"),
                })
        }
    }
}

fn apparmor_profile(
    profile: Option<&k8s_cri::v1::SecurityProfile>,
    legacy: &str,
    node: &NodeContext,
    privileged: bool,
) -> Result<Option<String>, SpecError> {
    // As containerd: RuntimeDefault, and no choice at all (kubelet's default is
    // RuntimeDefault), is crust's default profile for an unprivileged container where
    // the host runs AppArmor (the caller makes sure it is loaded), nothing elsewhere
    // and nothing for a privileged one. A named profile is applied, privileged or not,
    // when the host has AppArmor, and refused when it does not rather than silently
    // dropped.
    let default =
        || Ok((node.apparmor && !privileged).then(|| super::apparmor::DEFAULT_PROFILE.to_string()));
    let name = match profile {
        Some(p) => match ProfileType::try_from(p.profile_type) {
            Ok(ProfileType::Localhost) => p.localhost_ref.clone(),
            Ok(ProfileType::Unconfined) => return Ok(None),
            _ => return default(),
        },
        None => match legacy {
            "unconfined" => return Ok(None),
            "" | "runtime/default" => return default(),
            p => p.strip_prefix("localhost/").unwrap_or(p).to_string(),
        },
    };
    if !node.apparmor {
        return Err(SpecError::AppArmor(name));
    }
    Ok(Some(name))
}

/// Whether the host has AppArmor enabled.
pub fn host_has_apparmor() -> bool {
    std::fs::read_to_string("/sys/module/apparmor/parameters/enabled")
        .map(|s| s.trim() == "Y")
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_cri::v1::{
        Capability as CriCapability, ContainerMetadata, HugepageLimit, Int64Value, KeyValue,
        LinuxContainerConfig, LinuxContainerResources, LinuxContainerSecurityContext,
        Mount as CriMount, SecurityProfile,
    };
    use oci_spec::image::ConfigBuilder;

    struct Fixture {
        rootfs: tempfile::TempDir,
        pod: PodContext,
        node: NodeContext,
    }

    fn fixture() -> Fixture {
        let rootfs = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(rootfs.path().join("etc")).expect("etc");
        std::fs::write(
            rootfs.path().join("etc/passwd"),
            "root:x:0:0::/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n",
        )
        .expect("passwd");
        std::fs::write(
            rootfs.path().join("etc/group"),
            "root:x:0:\napp:x:1000:\nextra:x:2000:app\n",
        )
        .expect("group");
        let pod = PodContext {
            pod_id: "p".repeat(64),
            hostname: "web-0".into(),
            net_ns: Some("/run/crust/pods/p/ns/net".into()),
            ipc_ns: Some("/run/crust/pods/p/ns/ipc".into()),
            uts_ns: Some("/run/crust/pods/p/ns/uts".into()),
            pid_ns: PidNamespace::Container,
            hosts_file: Some("/run/crust/pods/p/hosts".into()),
            resolv_conf: Some("/run/crust/pods/p/resolv.conf".into()),
            hostname_file: Some("/run/crust/pods/p/hostname".into()),
            shm: Some("/run/crust/pods/p/shm".into()),
            cgroups_path: "/crust/pod-p/ctr".into(),
        };
        let node = NodeContext {
            min_oom_score_adj: 0,
            apparmor: false,
            seccomp_profile_root: rootfs.path().to_path_buf(),
        };
        Fixture { rootfs, pod, node }
    }

    fn image(entrypoint: &[&str], cmd: &[&str]) -> ImageConfig {
        let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        ConfigBuilder::default()
            .entrypoint(v(entrypoint))
            .cmd(v(cmd))
            .env(v(&["PATH=/bin", "FOO=image", "KEEP=1"]))
            .working_dir("/work")
            .user("app")
            .stop_signal("SIGQUIT")
            .build()
            .expect("image config")
    }

    fn container(command: &[&str], args: &[&str]) -> ContainerConfig {
        ContainerConfig {
            metadata: Some(ContainerMetadata {
                name: "c".into(),
                attempt: 0,
            }),
            command: command.iter().map(|s| s.to_string()).collect(),
            args: args.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    fn built(c: &ContainerConfig, img: Option<&ImageConfig>, f: &Fixture) -> BuiltSpec {
        build(c, img, f.rootfs.path(), &f.pod, &f.node).expect("spec builds")
    }

    fn args_of(b: &BuiltSpec) -> Vec<String> {
        b.spec
            .process()
            .as_ref()
            .expect("process")
            .args()
            .clone()
            .expect("args")
    }

    #[test]
    fn command_and_args_merge_as_docker_does() {
        let f = fixture();
        let img = image(&["/entry"], &["default-cmd"]);
        assert_eq!(
            args_of(&built(&container(&[], &[]), Some(&img), &f)),
            ["/entry", "default-cmd"]
        );
        assert_eq!(
            args_of(&built(&container(&[], &["x"]), Some(&img), &f)),
            ["/entry", "x"]
        );
        assert_eq!(
            args_of(&built(&container(&["/bin/sh"], &[]), Some(&img), &f)),
            ["/bin/sh"]
        );
        assert_eq!(
            args_of(&built(
                &container(&["/bin/sh"], &["-c", "true"]),
                Some(&img),
                &f
            )),
            ["/bin/sh", "-c", "true"]
        );
        let none = image(&[], &[]);
        assert!(matches!(
            build(
                &container(&[], &[]),
                Some(&none),
                f.rootfs.path(),
                &f.pod,
                &f.node
            ),
            Err(SpecError::NoCommand)
        ));
    }

    #[test]
    fn env_workdir_user_and_stop_signal_come_from_the_image_unless_overridden() {
        let f = fixture();
        let img = image(&["/entry"], &[]);
        let mut c = container(&[], &[]);
        c.envs = vec![KeyValue {
            key: "FOO".into(),
            value: "request".into(),
        }];
        let b = built(&c, Some(&img), &f);
        let p = b.spec.process().as_ref().expect("process");
        let env = p.env().clone().expect("env");
        assert!(env.contains(&"FOO=request".to_string()), "{env:?}");
        assert!(env.contains(&"KEEP=1".to_string()));
        assert!(env.contains(&"HOSTNAME=web-0".to_string()));
        assert_eq!(env.iter().filter(|e| e.starts_with("FOO=")).count(), 1);
        assert_eq!(p.cwd(), Path::new("/work"));
        assert_eq!((p.user().uid(), p.user().gid()), (1000, 1000));
        assert_eq!(
            p.user().additional_gids().clone().unwrap_or_default(),
            vec![2000]
        );
        assert_eq!(b.stop_signal.as_deref(), Some("SIGQUIT"));

        c.working_dir = "/elsewhere".into();
        c.linux = Some(LinuxContainerConfig {
            security_context: Some(LinuxContainerSecurityContext {
                run_as_user: Some(Int64Value { value: 0 }),
                ..Default::default()
            }),
            ..Default::default()
        });
        let b = built(&c, Some(&img), &f);
        let p = b.spec.process().as_ref().expect("process");
        assert_eq!(p.cwd(), Path::new("/elsewhere"));
        assert_eq!(p.user().uid(), 0);
    }

    #[test]
    fn missing_username_is_an_error() {
        let f = fixture();
        let mut c = container(&["/bin/true"], &[]);
        c.linux = Some(LinuxContainerConfig {
            security_context: Some(LinuxContainerSecurityContext {
                run_as_username: "ghost".into(),
                ..Default::default()
            }),
            ..Default::default()
        });
        let err = build(&c, None, f.rootfs.path(), &f.pod, &f.node)
            .err()
            .expect("refused");
        assert!(err.to_string().contains("ghost"), "{err}");
    }

    fn caps_of(b: &BuiltSpec) -> HashSet<Capability> {
        b.spec
            .process()
            .as_ref()
            .and_then(|p| p.capabilities().as_ref())
            .and_then(|c| c.bounding().clone())
            .unwrap_or_default()
    }

    #[test]
    fn capabilities_default_add_drop_and_privileged() {
        let f = fixture();
        let b = built(&container(&["/bin/true"], &[]), None, &f);
        let caps = caps_of(&b);
        assert_eq!(caps.len(), DEFAULT_CAPABILITIES.len());
        assert!(!caps.contains(&Capability::SysAdmin));
        assert!(
            b.spec
                .linux()
                .as_ref()
                .and_then(|l| l.seccomp().as_ref())
                .is_none()
        );

        let mut c = container(&["/bin/true"], &[]);
        c.linux = Some(LinuxContainerConfig {
            security_context: Some(LinuxContainerSecurityContext {
                capabilities: Some(CriCapability {
                    add_capabilities: vec!["NET_ADMIN".into(), "CAP_SYS_TIME".into()],
                    drop_capabilities: vec!["KILL".into()],
                    add_ambient_capabilities: vec![],
                }),
                seccomp: Some(SecurityProfile {
                    profile_type: ProfileType::RuntimeDefault as i32,
                    localhost_ref: String::new(),
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
        let b = built(&c, None, &f);
        let caps = caps_of(&b);
        assert!(caps.contains(&Capability::NetAdmin));
        assert!(caps.contains(&Capability::SysTime));
        assert!(!caps.contains(&Capability::Kill));
        assert!(
            b.spec
                .linux()
                .as_ref()
                .and_then(|l| l.seccomp().as_ref())
                .is_some()
        );

        let mut c = container(&["/bin/true"], &[]);
        c.linux = Some(LinuxContainerConfig {
            security_context: Some(LinuxContainerSecurityContext {
                privileged: true,
                ..Default::default()
            }),
            ..Default::default()
        });
        let b = built(&c, None, &f);
        assert!(caps_of(&b).contains(&Capability::SysAdmin));
        let linux = b.spec.linux().as_ref().expect("linux");
        assert!(linux.masked_paths().as_ref().is_none_or(|m| m.is_empty()));
        assert!(linux.devices().as_ref().is_some_and(|d| !d.is_empty()));
    }

    #[test]
    fn unknown_capability_and_missing_seccomp_file_are_errors() {
        let f = fixture();
        let mut c = container(&["/bin/true"], &[]);
        c.linux = Some(LinuxContainerConfig {
            security_context: Some(LinuxContainerSecurityContext {
                capabilities: Some(CriCapability {
                    add_capabilities: vec!["NOT_A_CAP".into()],
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
        assert!(matches!(
            build(&c, None, f.rootfs.path(), &f.pod, &f.node),
            Err(SpecError::UnknownCapability(_))
        ));
        c.linux = Some(LinuxContainerConfig {
            security_context: Some(LinuxContainerSecurityContext {
                seccomp: Some(SecurityProfile {
                    profile_type: ProfileType::Localhost as i32,
                    localhost_ref: "/nonexistent/profile.json".into(),
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
        let err = build(&c, None, f.rootfs.path(), &f.pod, &f.node)
            .err()
            .expect("refused");
        assert!(
            err.to_string().contains("/nonexistent/profile.json"),
            "{err}"
        );
    }

    #[test]
    fn namespaces_join_the_pod_and_pid_follows_the_mode() {
        let mut f = fixture();
        let b = built(&container(&["/bin/true"], &[]), None, &f);
        let ns = b
            .spec
            .linux()
            .as_ref()
            .and_then(|l| l.namespaces().clone())
            .expect("ns");
        let path_of = |ns: &[oci_spec::runtime::LinuxNamespace], t| {
            ns.iter().find(|n| n.typ() == t).map(|n| n.path().clone())
        };
        assert_eq!(
            path_of(&ns, LinuxNamespaceType::Network),
            Some(Some(PathBuf::from("/run/crust/pods/p/ns/net")))
        );
        assert_eq!(path_of(&ns, LinuxNamespaceType::Pid), Some(None));
        f.pod.pid_ns = PidNamespace::Pod("/run/crust/pods/p/ns/pid".into());
        let b = built(&container(&["/bin/true"], &[]), None, &f);
        let ns = b
            .spec
            .linux()
            .as_ref()
            .and_then(|l| l.namespaces().clone())
            .expect("ns");
        assert_eq!(
            path_of(&ns, LinuxNamespaceType::Pid),
            Some(Some(PathBuf::from("/run/crust/pods/p/ns/pid")))
        );
        assert_eq!(b.spec.hostname().as_deref(), Some("web-0"));
        f.pod.pid_ns = PidNamespace::Node;
        f.pod.net_ns = None;
        f.pod.uts_ns = None;
        let b = built(&container(&["/bin/true"], &[]), None, &f);
        let ns = b
            .spec
            .linux()
            .as_ref()
            .and_then(|l| l.namespaces().clone())
            .expect("ns");
        assert_eq!(path_of(&ns, LinuxNamespaceType::Pid), None);
        assert_eq!(path_of(&ns, LinuxNamespaceType::Network), None);
        assert_eq!(
            b.spec.hostname(),
            &None,
            "no hostname without a UTS namespace"
        );
    }

    #[test]
    fn oom_score_adj_is_written_even_when_unset() {
        // crustd under systemd runs at -999; a container that asks nothing must not
        // inherit that through the shim and runc.
        let mut f = fixture();
        f.node.min_oom_score_adj = -999;
        let c = container(&["/bin/true"], &[]);
        let b = built(&c, None, &f);
        let p = b.spec.process().as_ref().expect("process");
        assert_eq!(p.oom_score_adj(), Some(0));
    }

    #[test]
    fn resources_oom_clamp_and_mounts() {
        let mut f = fixture();
        f.node.min_oom_score_adj = 100;
        let host = tempfile::tempdir().expect("host dir");
        let mut c = container(&["/bin/true"], &[]);
        c.mounts = vec![CriMount {
            container_path: "/data".into(),
            host_path: host.path().display().to_string(),
            readonly: true,
            propagation: MountPropagation::PropagationPrivate as i32,
            ..Default::default()
        }];
        c.linux = Some(LinuxContainerConfig {
            resources: Some(LinuxContainerResources {
                cpu_shares: 512,
                cpu_quota: 50_000,
                cpu_period: 100_000,
                memory_limit_in_bytes: 64 << 20,
                oom_score_adj: -998,
                ..Default::default()
            }),
            ..Default::default()
        });
        let b = built(&c, None, &f);
        let p = b.spec.process().as_ref().expect("process");
        assert_eq!(p.oom_score_adj(), Some(100));
        let r = b
            .spec
            .linux()
            .as_ref()
            .and_then(|l| l.resources().clone())
            .expect("resources");
        assert_eq!(r.memory().as_ref().and_then(|m| m.limit()), Some(64 << 20));
        let cpu = r.cpu().as_ref().expect("cpu");
        assert_eq!(
            (cpu.shares(), cpu.quota(), cpu.period()),
            (Some(512), Some(50_000), Some(100_000))
        );
        let mounts = b.spec.mounts().clone().expect("mounts");
        let data = mounts
            .iter()
            .find(|m| m.destination() == Path::new("/data"))
            .expect("/data");
        let opts = data.options().clone().expect("options");
        assert!(
            opts.contains(&"ro".to_string()) && opts.contains(&"rprivate".to_string()),
            "{opts:?}"
        );
        let linux = b.spec.linux().as_ref().expect("linux");
        assert_eq!(linux.rootfs_propagation(), &None, "runc's default root");
        for dest in [
            "/etc/hosts",
            "/etc/resolv.conf",
            "/etc/hostname",
            "/dev/shm",
            "/proc",
        ] {
            assert!(
                mounts.iter().any(|m| m.destination() == Path::new(dest)),
                "{dest} missing"
            );
        }

        c.mounts[0].host_path = "/nonexistent/host/path".into();
        assert!(matches!(
            build(&c, None, f.rootfs.path(), &f.pod, &f.node),
            Err(SpecError::Mount { .. })
        ));
    }

    #[test]
    fn apparmor_default_localhost_unconfined_privileged_and_a_host_without_it() {
        let node = |apparmor| NodeContext {
            min_oom_score_adj: 0,
            apparmor,
            seccomp_profile_root: PathBuf::from("/nonexistent"),
        };
        let typed = |t: ProfileType, r: &str| SecurityProfile {
            profile_type: t as i32,
            localhost_ref: r.into(),
        };
        let pick = |p: Option<&SecurityProfile>, legacy: &str, apparmor, privileged| {
            apparmor_profile(p, legacy, &node(apparmor), privileged)
        };
        let default = Some(super::super::apparmor::DEFAULT_PROFILE.to_string());
        // RuntimeDefault, typed or legacy, and no choice at all: crust's profile,
        // unless privileged.
        let runtime_default = typed(ProfileType::RuntimeDefault, "");
        for (p, legacy) in [
            (Some(&runtime_default), ""),
            (None, "runtime/default"),
            (None, ""),
        ] {
            assert_eq!(
                pick(p, legacy, true, false).expect("ok"),
                default,
                "{legacy:?}"
            );
            assert_eq!(pick(p, legacy, true, true).expect("ok"), None, "privileged");
        }
        // Unconfined and Localhost are what they say, Localhost privileged too.
        let unconfined = typed(ProfileType::Unconfined, "");
        assert_eq!(pick(Some(&unconfined), "", true, false).expect("ok"), None);
        assert_eq!(pick(None, "unconfined", true, false).expect("ok"), None);
        let local = Some("my-profile".to_string());
        let localhost = typed(ProfileType::Localhost, "my-profile");
        for privileged in [false, true] {
            assert_eq!(
                pick(Some(&localhost), "", true, privileged).expect("ok"),
                local
            );
            assert_eq!(
                pick(None, "localhost/my-profile", true, privileged).expect("ok"),
                local
            );
        }
        // No AppArmor: the default is nothing, a named profile is refused.
        assert_eq!(pick(None, "", false, false).expect("ok"), None);
        assert!(matches!(
            pick(Some(&localhost), "", false, false),
            Err(SpecError::AppArmor(_))
        ));
    }

    #[test]
    fn propagation_is_read_from_the_mount_holding_the_path() {
        let info = "\
22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
30 22 0:40 / /srv rw,relatime - tmpfs tmpfs rw
31 30 0:41 / /srv/in rw,relatime master:7 - tmpfs tmpfs rw
32 22 0:42 / /with\\040space rw shared:9 master:3 - tmpfs tmpfs rw
";
        let at = |p: &str| propagation_of(info, Path::new(p));
        assert_eq!(at("/nonexistent-top/x"), HostPropagation::Shared);
        assert_eq!(at("/srv/data"), HostPropagation::Private);
        assert_eq!(at("/srv/in/deeper"), HostPropagation::Slave);
        assert_eq!(
            at("/srv/inner"),
            HostPropagation::Private,
            "not below /srv/in"
        );
        assert_eq!(at("/with space/x"), HostPropagation::Shared);
        // A mount stacked on the same point later wins.
        let stacked = format!("{info}33 30 0:43 / /srv rw shared:4 - tmpfs tmpfs rw\n");
        assert_eq!(
            propagation_of(&stacked, Path::new("/srv/data")),
            HostPropagation::Shared
        );
    }

    #[test]
    fn propagation_needs_a_host_mount_that_propagates_and_sets_the_root() {
        let host = tempfile::tempdir().expect("host dir");
        let mount = |prop: MountPropagation| CriMount {
            container_path: "/data".into(),
            host_path: host.path().display().to_string(),
            propagation: prop as i32,
            ..Default::default()
        };
        let config = |ms: Vec<CriMount>| ContainerConfig {
            mounts: ms,
            ..Default::default()
        };
        let run = |c: &ContainerConfig, host_prop: HostPropagation| {
            let mut mounts = Vec::new();
            add_cri_mounts(&mut mounts, c, &|_| Ok(host_prop)).map(|root| (root, mounts))
        };
        use HostPropagation::*;
        use MountPropagation::*;

        let (root, mounts) = run(&config(vec![mount(PropagationHostToContainer)]), Slave)
            .expect("host-to-container from a slave mount");
        assert_eq!(root, Some("rslave"));
        let opts = mounts[0].options().clone().expect("options");
        assert!(opts.contains(&"rslave".to_string()), "{opts:?}");
        assert_eq!(
            run(&config(vec![mount(PropagationHostToContainer)]), Shared)
                .expect("from a shared mount")
                .0,
            Some("rslave")
        );
        let e = run(&config(vec![mount(PropagationHostToContainer)]), Private)
            .expect_err("nothing would come in");
        assert!(e.to_string().contains("private mount"), "{e}");

        let (root, mounts) = run(&config(vec![mount(PropagationBidirectional)]), Shared)
            .expect("bidirectional from a shared mount");
        assert_eq!(root, Some("rshared"));
        let opts = mounts[0].options().clone().expect("options");
        assert!(opts.contains(&"rshared".to_string()), "{opts:?}");
        for p in [Slave, Private] {
            let e = run(&config(vec![mount(PropagationBidirectional)]), p)
                .expect_err("nothing would go out");
            assert!(e.to_string().contains("not on a shared mount"), "{e}");
        }

        // Bidirectional anywhere makes the root rshared, whatever the order.
        let mut other = mount(PropagationHostToContainer);
        other.container_path = "/other".into();
        let both = config(vec![mount(PropagationBidirectional), other]);
        assert_eq!(run(&both, Shared).expect("both").0, Some("rshared"));

        // Private mounts never look at the host's mounts.
        let root = add_cri_mounts(
            &mut Vec::new(),
            &config(vec![mount(PropagationPrivate)]),
            &|_| Err(std::io::Error::other("not asked")),
        )
        .expect("private");
        assert_eq!(root, None);
    }

    #[test]
    fn minus_one_lifts_the_cpu_quota_and_swap_limit() {
        let linux = LinuxContainerConfig {
            resources: Some(LinuxContainerResources {
                cpu_quota: -1,
                memory_limit_in_bytes: 64 << 20,
                memory_swap_limit_in_bytes: -1,
                ..Default::default()
            }),
            ..Default::default()
        };
        let update = resources_json(&linux).expect("resources");
        assert_eq!(update["cpu"]["quota"], -1, "{update}");
        assert_eq!(update["memory"]["swap"], -1, "{update}");
    }

    #[test]
    fn hugepage_limits_reach_the_oci_spec_as_runc_reads_them() {
        let f = fixture();
        let mut c = container(&["/bin/true"], &[]);
        // kubelet names page sizes as the hugetlb control files do, and sends
        // every size the node has, 0 for those the pod did not ask for.
        c.linux = Some(LinuxContainerConfig {
            resources: Some(LinuxContainerResources {
                hugepage_limits: vec![
                    HugepageLimit {
                        page_size: "2MB".into(),
                        limit: 4 << 20,
                    },
                    HugepageLimit {
                        page_size: "1GB".into(),
                        limit: 0,
                    },
                ],
                ..Default::default()
            }),
            ..Default::default()
        });
        let want = serde_json::json!([
            {"pageSize": "2MB", "limit": 4194304},
            {"pageSize": "1GB", "limit": 0},
        ]);
        let spec = serde_json::to_value(&built(&c, None, &f).spec).expect("spec as JSON");
        assert_eq!(spec["linux"]["resources"]["hugepageLimits"], want);
        // UpdateContainerResources hands runc the same object.
        let linux = c.linux.as_ref().expect("linux config");
        let update = resources_json(linux).expect("resources");
        assert_eq!(update["hugepageLimits"], want);

        // None asked, none set.
        let plain = built(&container(&["/bin/true"], &[]), None, &f);
        let spec = serde_json::to_value(&plain.spec).expect("spec as JSON");
        assert!(
            spec["linux"]["resources"]["hugepageLimits"].is_null(),
            "{}",
            spec["linux"]["resources"]
        );
    }

    #[test]
    fn devices_get_a_node_and_a_cgroup_rule_and_non_devices_are_refused() {
        let f = fixture();
        let mut c = container(&["/bin/true"], &[]);
        c.devices = vec![k8s_cri::v1::Device {
            container_path: "/dev/mynull".into(),
            host_path: "/dev/null".into(),
            permissions: "rw".into(),
        }];
        let b = built(&c, None, &f);
        let linux = b.spec.linux().as_ref().expect("linux");
        let node = linux
            .devices()
            .as_ref()
            .and_then(|d| d.iter().find(|d| d.path() == Path::new("/dev/mynull")))
            .expect("device node");
        assert_eq!((node.major(), node.minor()), (1, 3));
        let rules = linux
            .resources()
            .as_ref()
            .and_then(|r| r.devices().clone())
            .expect("rules");
        assert!(rules.iter().any(|r| r.allow()
            && r.major() == Some(1)
            && r.minor() == Some(3)
            && r.access().as_deref() == Some("rw")));

        c.devices[0].host_path = "/etc/hostname".into();
        assert!(matches!(
            build(&c, None, f.rootfs.path(), &f.pod, &f.node),
            Err(SpecError::Device { .. })
        ));
    }
}

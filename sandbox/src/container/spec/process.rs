//! The process of a container: its command, environment, working directory,
//! user and capabilities, merged from the CRI config and the image's config
//! the way Docker and containerd merge them.

use std::collections::HashSet;
use std::path::Path;
use std::str::FromStr;

use k8s_cri::v1::{ContainerConfig, LinuxContainerSecurityContext};
use oci_spec::image::Config as ImageConfig;
use oci_spec::runtime::{
    Capability, LinuxCapabilitiesBuilder, Process, ProcessBuilder, UserBuilder,
};

use super::super::user::{self, ResolvedUser, UserRequest};
use super::{NodeContext, PodContext, SpecError};

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

/// The process of the container, the user it runs as and its capabilities.
pub(super) fn process(
    config: &ContainerConfig,
    image: Option<&ImageConfig>,
    rootfs: &Path,
    pod: &PodContext,
    node: &NodeContext,
) -> Result<(Process, ResolvedUser, HashSet<Capability>), SpecError> {
    let linux_cfg = config.linux.clone().unwrap_or_default();
    let sc = linux_cfg.security_context.clone().unwrap_or_default();
    let privileged = sc.privileged;
    let resolved = resolve_user(&sc, image, rootfs)?;
    let caps = capabilities(privileged, sc.capabilities.as_ref())?;
    let mut process = ProcessBuilder::default()
        .terminal(config.tty)
        .args(command(config, image)?)
        .env(environment(config, image, pod))
        .cwd(working_dir(config, image))
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
    if let Some(p) =
        super::security::apparmor_profile(sc.apparmor.as_ref(), legacy, node, privileged)?
    {
        process.set_apparmor_profile(Some(p));
    }
    Ok((process, resolved, caps))
}

/// Docker's rules: a command replaces the image's entrypoint and drops its
/// cmd; args alone replace only the cmd.
fn command(
    config: &ContainerConfig,
    image: Option<&ImageConfig>,
) -> Result<Vec<String>, SpecError> {
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
    Ok(args)
}

/// Image first, then the request; a later key wins in place.
fn environment(
    config: &ContainerConfig,
    image: Option<&ImageConfig>,
    pod: &PodContext,
) -> Vec<String> {
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
    env
}

fn working_dir(config: &ContainerConfig, image: Option<&ImageConfig>) -> String {
    if !config.working_dir.is_empty() {
        config.working_dir.clone()
    } else {
        image
            .and_then(|i| i.working_dir().clone())
            .filter(|w| !w.is_empty())
            .unwrap_or_else(|| "/".to_string())
    }
}

/// The user, resolved in the image's own /etc/passwd and /etc/group.
fn resolve_user(
    sc: &LinuxContainerSecurityContext,
    image: Option<&ImageConfig>,
    rootfs: &Path,
) -> Result<ResolvedUser, SpecError> {
    let (passwd, group) = user::read_user_db(rootfs);
    Ok(user::resolve(
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
            strict_groups: sc.supplemental_groups_policy
                == k8s_cri::v1::SupplementalGroupsPolicy::Strict as i32,
        },
        &passwd,
        &group,
    )?)
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

pub(super) fn capabilities(
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

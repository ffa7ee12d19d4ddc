//! CreateContainer: the ContainerConfig, and what it may ask of its pod.

use k8s_cri::v1::{
    ContainerConfig, CreateContainerRequest, Device, KeyValue, LinuxContainerConfig, Mount,
    MountPropagation,
};

use super::security::{self, Ids, Owner};
use super::{
    absolute_path, annotations, dns_label, invalid, known, labels, no_control, relative_path_below,
    resources, shown,
};
use crate::error::CriResult;

pub fn create_container(req: &CreateContainerRequest) -> CriResult<()> {
    if req.pod_sandbox_id.is_empty() {
        return Err(invalid("pod_sandbox_id", "is empty"));
    }
    no_control("pod_sandbox_id", &req.pod_sandbox_id)?;
    match &req.config {
        Some(c) => config(c),
        None => Err(invalid("config", "CreateContainer needs a config")),
    }
}

/// What needs the pod as it was made: a privileged container only in a pod that said
/// it would run one (the CRI API: "this MUST be true"), and a log path that fits.
pub fn in_pod(c: &ContainerConfig, pod_privileged: bool, pod_log_directory: &str) -> CriResult<()> {
    let privileged = c
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .is_some_and(|s| s.privileged);
    if privileged && !pod_privileged {
        return Err(invalid(
            "linux.security_context.privileged",
            "the pod sandbox was not created privileged, so it runs no privileged container",
        ));
    }
    if !pod_log_directory.is_empty()
        && !c.log_path.is_empty()
        && pod_log_directory.len() + 1 + c.log_path.len() > super::MAX_PATH
    {
        return Err(invalid(
            "log_path",
            format!(
                "{} joined to the pod's log directory is longer than {} bytes",
                shown(&c.log_path),
                super::MAX_PATH
            ),
        ));
    }
    Ok(())
}

fn config(c: &ContainerConfig) -> CriResult<()> {
    match &c.metadata {
        Some(m) => dns_label("metadata.name", &m.name)?,
        None => return Err(invalid("metadata", "a container needs metadata")),
    }
    match &c.image {
        Some(i) if !i.image.trim().is_empty() => no_control("image.image", &i.image)?,
        _ => {
            return Err(invalid(
                "image.image",
                "the container config names no image",
            ));
        }
    }
    // execve takes NUL-terminated strings: a NUL cannot reach the process.
    for (field, list) in [("command", &c.command), ("args", &c.args)] {
        for a in list.iter() {
            no_nul(field, a)?;
        }
    }
    for e in &c.envs {
        env(e)?;
    }
    // runc wants an absolute cwd; a relative one fails only at start.
    if !c.working_dir.is_empty() {
        absolute_path("working_dir", &c.working_dir)?;
    }
    for (i, m) in c.mounts.iter().enumerate() {
        mount(&format!("mounts[{i}]"), m)?;
    }
    for (i, d) in c.devices.iter().enumerate() {
        device(&format!("devices[{i}]"), d)?;
    }
    if !c.cdi_devices.is_empty() {
        return Err(invalid(
            "CDI_devices",
            "CDI devices are not supported by crust: the container would run without them",
        ));
    }
    labels("labels", &c.labels)?;
    annotations("annotations", &c.annotations)?;
    if !c.log_path.is_empty() {
        relative_path_below("log_path", &c.log_path, "the pod's log_directory")?;
    }
    if let Some(l) = &c.linux {
        linux(l)?;
    }
    Ok(())
}

fn no_nul(field: &str, s: &str) -> CriResult<()> {
    if s.contains('\0') {
        return Err(invalid(field, format!("{} contains a NUL byte", shown(s))));
    }
    Ok(())
}

fn env(e: &KeyValue) -> CriResult<()> {
    no_control("envs key", &e.key)?;
    if e.key.is_empty() || e.key.contains('=') {
        return Err(invalid(
            "envs key",
            format!("{} is empty or contains '='", shown(&e.key)),
        ));
    }
    no_nul(&format!("envs[{}]", shown(&e.key)), &e.value)
}

/// CheckpointContainer: a container id and an absolute archive path.
pub fn checkpoint(req: &k8s_cri::v1::CheckpointContainerRequest) -> CriResult<()> {
    if req.container_id.is_empty() {
        return Err(invalid("container_id", "is empty"));
    }
    absolute_path("location", &req.location)?;
    if req.timeout < 0 {
        return Err(invalid("timeout", format!("{} is negative", req.timeout)));
    }
    Ok(())
}

fn mount(field: &str, m: &Mount) -> CriResult<()> {
    absolute_path(format!("{field}.container_path"), &m.container_path)?;
    let propagation: MountPropagation = known(format!("{field}.propagation"), m.propagation)?;
    if let Some(image) = &m.image {
        image_volume(field, m, &image.image)?;
    } else {
        // A relative host path would be taken from crustd's working directory.
        if m.host_path.is_empty() {
            return Err(invalid(format!("{field}.host_path"), "is empty"));
        }
        absolute_path(format!("{field}.host_path"), &m.host_path)?;
    }
    if !m.uid_mappings.is_empty() || !m.gid_mappings.is_empty() {
        crust_sandbox::userns::UserNamespace::from_cri(&m.uid_mappings, &m.gid_mappings)
            .validate()
            .map_err(|e| invalid(format!("{field}.uid_mappings"), e))?;
    }
    // The CRI API: RRO only with readonly and private propagation.
    if m.recursive_read_only && (!m.readonly || propagation != MountPropagation::PropagationPrivate)
    {
        return Err(invalid(
            format!("{field}.recursive_read_only"),
            "needs readonly and PRIVATE propagation",
        ));
    }
    Ok(())
}

/// An image volume (`Mount.image`): the image it names, no host path (the CRI API: the
/// two are exclusive) and read-only, as containerd requires ("readonly must be true
/// while mount image"; CRI-O mounts it read-only whatever the flag says).
fn image_volume(field: &str, m: &Mount, image: &str) -> CriResult<()> {
    let image_field = format!("{field}.image.image");
    no_control(&image_field, image)?;
    if image.trim().is_empty() {
        return Err(invalid(
            image_field,
            "is empty: an image volume names an image",
        ));
    }
    if !m.host_path.is_empty() {
        return Err(invalid(
            format!("{field}.host_path"),
            format!(
                "{} is set: an image volume has no host path",
                shown(&m.host_path)
            ),
        ));
    }
    if !m.readonly {
        return Err(invalid(
            format!("{field}.readonly"),
            "is false: an image volume is read-only",
        ));
    }
    Ok(())
}

fn device(field: &str, d: &Device) -> CriResult<()> {
    absolute_path(format!("{field}.host_path"), &d.host_path)?;
    if !d.container_path.is_empty() {
        absolute_path(format!("{field}.container_path"), &d.container_path)?;
    }
    if !d.permissions.chars().all(|c| "rwm".contains(c)) {
        return Err(invalid(
            format!("{field}.permissions"),
            format!("{} is not a subset of \"rwm\"", shown(&d.permissions)),
        ));
    }
    Ok(())
}

fn linux(l: &LinuxContainerConfig) -> CriResult<()> {
    if let Some(r) = &l.resources {
        resources::linux("linux.resources", r)?;
    }
    let Some(sc) = &l.security_context else {
        return Ok(());
    };
    let field = "linux.security_context";
    security::ids(
        field,
        &Ids {
            run_as_user: sc.run_as_user.as_ref(),
            run_as_username: &sc.run_as_username,
            run_as_group: sc.run_as_group.as_ref(),
            supplemental_groups: &sc.supplemental_groups,
            supplemental_groups_policy: sc.supplemental_groups_policy,
        },
    )?;
    if let Some(ns) = &sc.namespace_options {
        security::namespace_options(&format!("{field}.namespace_options"), ns, Owner::Container)?;
    }
    if let Some(c) = &sc.capabilities {
        security::capabilities(&format!("{field}.capabilities"), c)?;
    }
    security::profile(&format!("{field}.seccomp"), sc.seccomp.as_ref(), true)?;
    security::profile(&format!("{field}.apparmor"), sc.apparmor.as_ref(), false)?;
    #[allow(deprecated)]
    for (name, legacy) in [
        ("seccomp_profile_path", &sc.seccomp_profile_path),
        ("apparmor_profile", &sc.apparmor_profile),
    ] {
        no_control(format!("{field}.{name}"), legacy)?;
    }
    for (name, list) in [
        ("masked_paths", &sc.masked_paths),
        ("readonly_paths", &sc.readonly_paths),
    ] {
        for p in list.iter() {
            absolute_path(format!("{field}.{name}"), p)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::CriError;
    use k8s_cri::v1::{
        Capability, ContainerMetadata, ImageSpec, Int64Value, LinuxContainerResources,
        LinuxContainerSecurityContext, NamespaceMode, NamespaceOption,
    };

    /// A container as kubelet sends it.
    fn kubelet() -> ContainerConfig {
        ContainerConfig {
            metadata: Some(ContainerMetadata {
                name: "web".into(),
                attempt: 2,
            }),
            image: Some(ImageSpec {
                image: "sha256:0123abcd".into(),
                ..Default::default()
            }),
            command: vec!["/bin/sh".into(), "-c".into(), "echo a\necho b".into()],
            envs: vec![KeyValue {
                key: "KUBERNETES_PORT".into(),
                value: "tcp://10.96.0.1:443".into(),
            }],
            working_dir: "/srv".into(),
            mounts: vec![Mount {
                container_path: "/var/run/secrets/kubernetes.io/serviceaccount".into(),
                host_path: "/var/lib/kubelet/pods/uid/volumes/token".into(),
                readonly: true,
                ..Default::default()
            }],
            devices: vec![Device {
                container_path: "/dev/fuse".into(),
                host_path: "/dev/fuse".into(),
                permissions: "rwm".into(),
            }],
            labels: [("io.kubernetes.container.name".into(), "web".into())].into(),
            annotations: [("io.kubernetes.container.hash".into(), "8f1d2e3c".into())].into(),
            log_path: "web/2.log".into(),
            linux: Some(LinuxContainerConfig {
                resources: Some(LinuxContainerResources {
                    cpu_period: 100_000,
                    cpu_quota: 20_000,
                    cpu_shares: 204,
                    memory_limit_in_bytes: 64 << 20,
                    oom_score_adj: 968,
                    ..Default::default()
                }),
                security_context: Some(LinuxContainerSecurityContext {
                    capabilities: Some(Capability {
                        drop_capabilities: vec!["ALL".into()],
                        ..Default::default()
                    }),
                    namespace_options: Some(NamespaceOption {
                        pid: NamespaceMode::Container as i32,
                        ..Default::default()
                    }),
                    run_as_user: Some(Int64Value { value: 1000 }),
                    run_as_group: Some(Int64Value { value: 3000 }),
                    supplemental_groups: vec![2000],
                    masked_paths: vec!["/proc/kcore".into()],
                    readonly_paths: vec!["/proc/sys".into()],
                    ..Default::default()
                }),
            }),
            ..Default::default()
        }
    }

    fn refused(f: impl FnOnce(&mut ContainerConfig)) -> String {
        let mut c = kubelet();
        f(&mut c);
        match config(&c) {
            Err(CriError::InvalidArgument(m)) => m,
            other => panic!("expected InvalidArgument, got {other:?}"),
        }
    }

    fn sc(c: &mut ContainerConfig) -> &mut LinuxContainerSecurityContext {
        c.linux.as_mut().unwrap().security_context.as_mut().unwrap()
    }

    #[test]
    fn what_kubelet_sends_passes() {
        config(&kubelet()).expect("kubelet's container");
        let mut rro = kubelet();
        rro.mounts[0].readonly = true;
        rro.mounts[0].recursive_read_only = true;
        config(&rro).expect("a recursive read-only mount");
        let mut c = kubelet();
        c.metadata.as_mut().unwrap().name = "x".repeat(63);
        c.working_dir.clear();
        c.log_path.clear();
        config(&c).expect("longest name, no log, image's workdir");
    }

    #[test]
    fn run_as_group_needs_run_as_user_or_username() {
        let m = refused(|c| sc(c).run_as_user = None);
        assert!(m.starts_with("linux.security_context.run_as_group:"), "{m}");
        let mut c = kubelet();
        sc(&mut c).run_as_user = None;
        sc(&mut c).run_as_username = "app".into();
        config(&c).expect("group with a user name");
    }

    #[test]
    fn names_are_dns_labels() {
        let m = refused(|c| c.metadata.as_mut().unwrap().name = "x".repeat(10_000));
        assert!(
            m.starts_with("metadata.name:") && m.contains("10000 bytes"),
            "{m}"
        );
        assert!(
            refused(|c| c.metadata.as_mut().unwrap().name = "a\0".into())
                .contains("control character")
        );
        assert!(
            refused(|c| c.metadata.as_mut().unwrap().name.clear()).starts_with("metadata.name")
        );
        assert!(refused(|c| c.metadata = None).starts_with("metadata:"));
    }

    #[test]
    fn log_path_stays_below_the_log_directory() {
        for bad in [
            "/var/log/x.log",
            "../../etc/cron.d/x",
            "web/../../x.log",
            "w\0.log",
        ] {
            let m = refused(|c| c.log_path = bad.into());
            assert!(m.starts_with("log_path:"), "{bad}: {m}");
        }
        let c = kubelet();
        assert!(in_pod(&c, false, "/var/log/pods/p").is_ok());
        assert!(in_pod(&c, false, &format!("/{}", "d/".repeat(2047))).is_err());
    }

    #[test]
    fn paths_are_absolute_and_printable() {
        assert!(refused(|c| c.working_dir = "srv".into()).starts_with("working_dir:"));
        assert!(
            refused(|c| c.mounts[0].container_path = "data".into())
                .starts_with("mounts[0].container_path:")
        );
        assert!(
            refused(|c| c.mounts[0].host_path = "/a\nb".into()).starts_with("mounts[0].host_path:")
        );
        assert!(refused(|c| c.mounts[0].host_path = "rel".into()).contains("absolute"));
        assert!(refused(|c| c.mounts[0].host_path.clear()).contains("empty"));
        assert!(
            refused(|c| c.devices[0].container_path = "fuse".into())
                .starts_with("devices[0].container_path:")
        );
        assert!(refused(|c| c.devices[0].permissions = "rwx".into()).contains("rwm"));
        assert!(refused(|c| sc(c).masked_paths.push("proc/x".into())).contains("masked_paths"));
        assert!(refused(|c| c.mounts[0].propagation = 9).contains("propagation"));
    }

    #[test]
    fn image_volumes_name_an_image_have_no_host_path_and_are_read_only() {
        // As kubelet sends one: the image_ref PullImage answered, read-only.
        let volume = |c: &mut ContainerConfig| {
            c.mounts[0].host_path.clear();
            c.mounts[0].readonly = true;
            c.mounts[0].image = Some(ImageSpec {
                image: "sha256:0123abcd".into(),
                ..Default::default()
            });
        };
        let mut ok = kubelet();
        volume(&mut ok);
        config(&ok).expect("an image volume as kubelet sends it");
        let m = refused(|c| {
            volume(c);
            c.mounts[0].readonly = false;
        });
        assert!(
            m.starts_with("mounts[0].readonly:") && m.contains("read-only"),
            "{m}"
        );
        let m = refused(|c| {
            volume(c);
            c.mounts[0].host_path = "/data".into();
        });
        assert!(
            m.starts_with("mounts[0].host_path:") && m.contains("no host path"),
            "{m}"
        );
        let m = refused(|c| {
            volume(c);
            c.mounts[0].image = Some(ImageSpec::default());
        });
        assert!(
            m.starts_with("mounts[0].image.image:") && m.contains("empty"),
            "{m}"
        );
        let m = refused(|c| {
            volume(c);
            c.mounts[0].image.as_mut().unwrap().image = "a\nb".into();
        });
        assert!(m.starts_with("mounts[0].image.image:"), "{m}");
    }

    #[test]
    fn unsupported_requests_are_refused_not_ignored() {
        // A zero-length mapping is malformed.
        assert!(
            refused(|c| c.mounts[0].uid_mappings.push(Default::default()))
                .contains("uid_mappings: uids[0]: length is 0")
        );
        assert!(
            refused(|c| {
                c.mounts[0].recursive_read_only = true;
                c.mounts[0].readonly = true;
                c.mounts[0].propagation = MountPropagation::PropagationHostToContainer as i32;
            })
            .contains("needs readonly and PRIVATE")
        );
        assert!(
            refused(|c| {
                c.mounts[0].recursive_read_only = true;
                c.mounts[0].readonly = false;
            })
            .contains("needs readonly")
        );
        assert!(refused(|c| c.cdi_devices.push(Default::default())).contains("CDI"));
        assert!(
            refused(|c| {
                sc(c).namespace_options.as_mut().unwrap().network = NamespaceMode::Container as i32
            })
            .contains("namespace_options.network")
        );
    }

    #[test]
    fn command_and_env_cannot_carry_nul() {
        assert!(refused(|c| c.args.push("a\0b".into())).starts_with("args:"));
        assert!(refused(|c| c.envs[0].key = "A=B".into()).starts_with("envs key:"));
        assert!(refused(|c| c.envs[0].value = "\0".into()).starts_with("envs["));
    }

    #[test]
    fn resources_are_checked() {
        let m = refused(|c| {
            c.linux
                .as_mut()
                .unwrap()
                .resources
                .as_mut()
                .unwrap()
                .memory_limit_in_bytes = -1
        });
        assert!(
            m.starts_with("linux.resources.memory_limit_in_bytes:"),
            "{m}"
        );
    }

    #[test]
    fn privileged_needs_a_privileged_pod() {
        let mut c = kubelet();
        sc(&mut c).privileged = true;
        assert!(in_pod(&c, false, "").is_err());
        assert!(in_pod(&c, true, "").is_ok());
    }

    #[test]
    fn request_needs_pod_and_config() {
        let mut req = CreateContainerRequest {
            pod_sandbox_id: "p".into(),
            config: Some(kubelet()),
            ..Default::default()
        };
        assert!(create_container(&req).is_ok());
        req.pod_sandbox_id.clear();
        assert!(create_container(&req).is_err());
        req.pod_sandbox_id = "p".into();
        req.config = None;
        assert!(create_container(&req).is_err());
    }
}

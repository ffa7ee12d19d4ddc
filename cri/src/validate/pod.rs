//! RunPodSandbox: the PodSandboxConfig.

use k8s_cri::v1::{
    DnsConfig, LinuxPodSandboxConfig, PodSandboxConfig, PodSandboxMetadata, PortMapping, Protocol,
    RunPodSandboxRequest,
};

use super::security::{self, Ids, Owner};
use super::{
    absolute_path, annotations, dns_label, dns_subdomain, invalid, known, labels, no_control,
    resources, shown, text,
};
use crate::error::CriResult;

/// A pod uid: a UUID from the API server, a hash for a static pod; kept to letters,
/// digits, '-', '_' and '.', as it ends up in names and paths.
const MAX_UID: usize = 128;
/// The kernel's HOST_NAME_MAX.
const MAX_HOSTNAME: usize = 64;

pub fn run_pod_sandbox(req: &RunPodSandboxRequest) -> CriResult<()> {
    no_control("runtime_handler", &req.runtime_handler)?;
    match &req.config {
        Some(c) => config(c),
        None => Err(invalid("config", "RunPodSandbox needs a config")),
    }
}

fn config(c: &PodSandboxConfig) -> CriResult<()> {
    match &c.metadata {
        Some(m) => metadata(m)?,
        None => return Err(invalid("metadata", "a pod sandbox needs metadata")),
    }
    if !c.hostname.is_empty() {
        hostname("hostname", &c.hostname)?;
    }
    // crustd and the shim run in other directories: a relative one means nothing.
    if !c.log_directory.is_empty() {
        absolute_path("log_directory", &c.log_directory)?;
    }
    if let Some(d) = &c.dns_config {
        dns(d)?;
    }
    for (i, p) in c.port_mappings.iter().enumerate() {
        port_mapping(&format!("port_mappings[{i}]"), p)?;
    }
    labels("labels", &c.labels)?;
    annotations("annotations", &c.annotations)?;
    if let Some(l) = &c.linux {
        linux(l)?;
    }
    Ok(())
}

fn metadata(m: &PodSandboxMetadata) -> CriResult<()> {
    dns_subdomain("metadata.name", &m.name)?;
    dns_label("metadata.namespace", &m.namespace)?;
    text("metadata.uid", &m.uid, MAX_UID)?;
    if m.uid.is_empty()
        || !m
            .uid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        return Err(invalid(
            "metadata.uid",
            format!(
                "{} must be 1 to {MAX_UID} letters, digits, '-', '_' or '.'",
                shown(&m.uid)
            ),
        ));
    }
    Ok(())
}

/// A hostname the kernel and resolvers accept: 1 to 64 letters, digits, '-' and '.'.
fn hostname(field: &str, h: &str) -> CriResult<()> {
    if h.is_empty()
        || h.len() > MAX_HOSTNAME
        || !h
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
    {
        return Err(invalid(
            field,
            format!(
                "{} must be 1 to {MAX_HOSTNAME} letters, digits, '-' or '.'",
                shown(h)
            ),
        ));
    }
    Ok(())
}

/// DnsConfig entries become lines of resolv.conf: no blanks or control characters
/// (which would add lines), servers are IP addresses.
fn dns(d: &DnsConfig) -> CriResult<()> {
    for (what, list) in [
        ("servers", &d.servers),
        ("searches", &d.searches),
        ("options", &d.options),
    ] {
        for v in list {
            if v.is_empty() || v.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(invalid(
                    format!("dns_config.{what}"),
                    format!("{} is empty or has blanks or control characters", shown(v)),
                ));
            }
        }
    }
    for s in &d.servers {
        if s.parse::<std::net::IpAddr>().is_err() {
            return Err(invalid(
                "dns_config.servers",
                format!("{} is not an IP address", shown(s)),
            ));
        }
    }
    Ok(())
}

fn port_mapping(field: &str, p: &PortMapping) -> CriResult<()> {
    known::<Protocol>(format!("{field}.protocol"), p.protocol)?;
    if !(1..=65535).contains(&p.container_port) {
        return Err(invalid(
            format!("{field}.container_port"),
            format!("{} is not a port (1 to 65535)", p.container_port),
        ));
    }
    if !(0..=65535).contains(&p.host_port) {
        return Err(invalid(
            format!("{field}.host_port"),
            format!("{} is not a port (0 to 65535, 0 for none)", p.host_port),
        ));
    }
    if !p.host_ip.is_empty() && p.host_ip.parse::<std::net::IpAddr>().is_err() {
        return Err(invalid(
            format!("{field}.host_ip"),
            format!("{} is not an IP address", shown(&p.host_ip)),
        ));
    }
    Ok(())
}

fn linux(l: &LinuxPodSandboxConfig) -> CriResult<()> {
    // Its form depends on the cgroup driver, which crust-sandbox checks.
    text("linux.cgroup_parent", &l.cgroup_parent, super::MAX_PATH)?;
    for (k, v) in &l.sysctls {
        no_control("linux.sysctls key", k)?;
        no_control(format!("linux.sysctls[{}]", shown(k)), v)?;
    }
    if let Some(r) = &l.overhead {
        resources::linux("linux.overhead", r)?;
    }
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
            run_as_username: "",
            run_as_group: sc.run_as_group.as_ref(),
            supplemental_groups: &sc.supplemental_groups,
            supplemental_groups_policy: sc.supplemental_groups_policy,
        },
    )?;
    if let Some(ns) = &sc.namespace_options {
        security::namespace_options(&format!("{field}.namespace_options"), ns, Owner::Pod)?;
    }
    security::profile(&format!("{field}.seccomp"), sc.seccomp.as_ref(), true)?;
    security::profile(&format!("{field}.apparmor"), sc.apparmor.as_ref(), false)?;
    #[allow(deprecated)]
    no_control(
        format!("{field}.seccomp_profile_path"),
        &sc.seccomp_profile_path,
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::CriError;
    use k8s_cri::v1::{
        Int64Value, LinuxSandboxSecurityContext, NamespaceMode, NamespaceOption, UserNamespace,
    };

    /// A pod as kubelet sends it.
    fn kubelet() -> PodSandboxConfig {
        PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: "kube-apiserver-node-1.example.com".into(),
                uid: "2f0b3c8e-58d4-4b1e-9d3a-0c4b5f6a7b8c".into(),
                namespace: "kube-system".into(),
                attempt: 3,
            }),
            hostname: "web-0".into(),
            log_directory: "/var/log/pods/kube-system_web-0_2f0b3c8e".into(),
            dns_config: Some(DnsConfig {
                servers: vec!["10.96.0.10".into()],
                searches: vec!["default.svc.cluster.local".into()],
                options: vec!["ndots:5".into()],
            }),
            port_mappings: vec![PortMapping {
                protocol: Protocol::Tcp as i32,
                container_port: 80,
                host_port: 8080,
                host_ip: "127.0.0.1".into(),
            }],
            labels: [
                ("io.kubernetes.pod.name".into(), "p".repeat(253)),
                ("app".into(), "web".into()),
            ]
            .into(),
            annotations: [
                (
                    "kubernetes.io/config.seen".into(),
                    "2026-12-02T07:00:00Z".into(),
                ),
                (
                    "kubectl.kubernetes.io/last-applied-configuration".into(),
                    "{\"kind\":\"Pod\"}\n".into(),
                ),
            ]
            .into(),
            linux: Some(LinuxPodSandboxConfig {
                cgroup_parent: "/kubepods/burstable/pod2f0b3c8e".into(),
                security_context: Some(LinuxSandboxSecurityContext {
                    namespace_options: Some(NamespaceOption {
                        pid: NamespaceMode::Container as i32,
                        userns_options: Some(UserNamespace {
                            mode: NamespaceMode::Node as i32,
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                    run_as_user: Some(Int64Value { value: 65535 }),
                    run_as_group: Some(Int64Value { value: 65535 }),
                    ..Default::default()
                }),
                sysctls: [("net.ipv4.ip_unprivileged_port_start".into(), "0".into())].into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn refused(f: impl FnOnce(&mut PodSandboxConfig)) -> String {
        let mut c = kubelet();
        f(&mut c);
        match config(&c) {
            Err(CriError::InvalidArgument(m)) => m,
            other => panic!("expected InvalidArgument, got {other:?}"),
        }
    }

    fn meta(c: &mut PodSandboxConfig) -> &mut PodSandboxMetadata {
        c.metadata.as_mut().unwrap()
    }

    fn sc(c: &mut PodSandboxConfig) -> &mut LinuxSandboxSecurityContext {
        c.linux.as_mut().unwrap().security_context.as_mut().unwrap()
    }

    #[test]
    fn what_kubelet_and_crictl_send_passes() {
        config(&kubelet()).expect("kubelet's pod");
        let mut c = kubelet();
        // A crictl user's pod: upper case, a hex uid, no linux section, host network.
        *meta(&mut c) = PodSandboxMetadata {
            name: "Nginx-Sandbox".into(),
            uid: "hdishd83djaidwnduwk28bcsb".into(),
            namespace: "default".into(),
            attempt: 1,
        };
        c.linux = None;
        c.hostname.clear();
        config(&c).expect("crictl's pod");
    }

    #[test]
    fn names_get_kubernetes_limits() {
        assert!(refused(|c| meta(c).name = "x".repeat(10_000)).starts_with("metadata.name:"));
        assert!(refused(|c| meta(c).name.clear()).starts_with("metadata.name:"));
        assert!(refused(|c| meta(c).name = "a_b".into()).starts_with("metadata.name:"));
        assert!(refused(|c| meta(c).namespace = "n".repeat(64)).starts_with("metadata.namespace:"));
        assert!(refused(|c| meta(c).uid = "a;K8S_POD_NAME=x".into()).starts_with("metadata.uid:"));
        assert!(refused(|c| meta(c).uid = "u".repeat(129)).starts_with("metadata.uid:"));
        assert!(refused(|c| meta(c).uid.clear()).starts_with("metadata.uid:"));
        assert!(refused(|c| c.metadata = None).starts_with("metadata:"));
    }

    #[test]
    fn a_nul_or_newline_in_a_name_is_refused() {
        let m = refused(|c| meta(c).name = "web\0".into());
        assert!(m.contains("\\0") && m.contains("control character"), "{m}");
        assert!(refused(|c| meta(c).namespace = "a\nb".into()).contains("U+000A"));
        assert!(
            refused(|c| {
                c.labels.insert("a\u{1b}".into(), "v".into());
            })
            .starts_with("labels key:")
        );
        assert!(
            refused(|c| {
                c.annotations.insert("a\nb".into(), "v".into());
            })
            .starts_with("annotations key:")
        );
    }

    #[test]
    fn log_directory_is_absolute() {
        let m = refused(|c| c.log_directory = "relative/logs".into());
        assert!(
            m.starts_with("log_directory:") && m.contains("absolute"),
            "{m}"
        );
        assert!(refused(|c| c.log_directory = "/var/log/\0".into()).starts_with("log_directory:"));
    }

    #[test]
    fn run_as_group_alone_is_refused() {
        let m = refused(|c| sc(c).run_as_user = None);
        assert!(m.starts_with("linux.security_context.run_as_group:"), "{m}");
    }

    #[test]
    fn user_namespace_pod_mode_needs_mappings_that_cover_root() {
        let m = refused(|c| {
            sc(c)
                .namespace_options
                .as_mut()
                .unwrap()
                .userns_options
                .as_mut()
                .unwrap()
                .mode = NamespaceMode::Pod as i32
        });
        assert!(
            m.contains("userns_options") && m.contains("uids: no mapping"),
            "{m}"
        );
    }

    #[test]
    fn hostname_dns_and_ports() {
        assert!(refused(|c| c.hostname = "a b".into()).starts_with("hostname:"));
        assert!(refused(|c| c.hostname = "x".repeat(65)).starts_with("hostname:"));
        let m = refused(|c| {
            c.dns_config.as_mut().unwrap().searches = vec!["a\nnameserver 6.6.6.6".into()]
        });
        assert!(m.starts_with("dns_config.searches:"), "{m}");
        assert!(
            refused(|c| c.dns_config.as_mut().unwrap().servers = vec!["dns".into()])
                .starts_with("dns_config.servers:")
        );
        assert!(
            refused(|c| c.port_mappings[0].container_port = 0)
                .starts_with("port_mappings[0].container_port:")
        );
        assert!(refused(|c| c.port_mappings[0].host_port = 70000).contains("host_port"));
        assert!(refused(|c| c.port_mappings[0].host_ip = "localhost".into()).contains("host_ip"));
        assert!(refused(|c| c.port_mappings[0].protocol = 5).contains("protocol"));
    }

    #[test]
    fn pod_resources_and_sysctls() {
        let m = refused(|c| {
            c.linux.as_mut().unwrap().overhead = Some(k8s_cri::v1::LinuxContainerResources {
                memory_limit_in_bytes: -1,
                ..Default::default()
            })
        });
        assert!(
            m.starts_with("linux.overhead.memory_limit_in_bytes:"),
            "{m}"
        );
        assert!(
            refused(|c| {
                c.linux
                    .as_mut()
                    .unwrap()
                    .sysctls
                    .insert("net.ipv4.ip_forward\0".into(), "1".into());
            })
            .starts_with("linux.sysctls key:")
        );
    }
}

use super::mounts::{HostPropagation, add_cri_mounts};
use super::security::apparmor_profile;
use super::*;
use k8s_cri::v1::{
    Capability as CriCapability, ContainerMetadata, HugepageLimit, Int64Value, KeyValue,
    LinuxContainerConfig, LinuxContainerResources, LinuxContainerSecurityContext,
    Mount as CriMount, SecurityProfile,
};
use k8s_cri::v1::{MountPropagation, security_profile::ProfileType};
use oci_spec::image::ConfigBuilder;
use oci_spec::runtime::{Capability, LinuxNamespaceType};
use std::collections::HashSet;

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

#[test]
fn a_recursive_read_only_mount_gets_rro() {
    let host = tempfile::tempdir().expect("host dir");
    let mount = |recursive_read_only| CriMount {
        container_path: "/data".into(),
        host_path: host.path().display().to_string(),
        readonly: true,
        recursive_read_only,
        ..Default::default()
    };
    let opts = |m: CriMount| {
        let c = ContainerConfig {
            mounts: vec![m],
            ..Default::default()
        };
        let mut mounts = Vec::new();
        add_cri_mounts(&mut mounts, &c, &|_| Ok(HostPropagation::Private)).expect("mounts");
        mounts[0].options().clone().expect("options")
    };
    assert_eq!(opts(mount(true)), ["rbind", "rprivate", "ro", "rro"]);
    assert_eq!(opts(mount(false)), ["rbind", "rprivate", "ro"]);
}

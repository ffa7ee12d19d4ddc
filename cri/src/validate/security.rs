//! Security contexts of pods and containers: users and groups, namespaces,
//! seccomp and AppArmor profiles, capabilities.

use k8s_cri::v1::security_profile::ProfileType;
use k8s_cri::v1::{
    Capability, Int64Value, NamespaceMode, NamespaceOption, SecurityProfile,
    SupplementalGroupsPolicy,
};

use super::{absolute_path, invalid, known, no_control, shown};
use crate::error::CriResult;

/// The users and groups a security context asks for.
pub(crate) struct Ids<'a> {
    pub run_as_user: Option<&'a Int64Value>,
    /// Empty for a pod, which has no user name field.
    pub run_as_username: &'a str,
    pub run_as_group: Option<&'a Int64Value>,
    pub supplemental_groups: &'a [i64],
    pub supplemental_groups_policy: i32,
}

/// The CRI API: run_as_group only with run_as_user or run_as_username ("otherwise, the
/// runtime MUST error"), not both of those; ids in Kubernetes' range (0 to 2^31-1,
/// apimachinery's IsValidUserID), which a cast to uid_t cannot wrap.
pub(crate) fn ids(field: &str, ids: &Ids) -> CriResult<()> {
    for (name, v) in [
        ("run_as_user", ids.run_as_user),
        ("run_as_group", ids.run_as_group),
    ] {
        if let Some(v) = v {
            id(format!("{field}.{name}"), v.value)?;
        }
    }
    for g in ids.supplemental_groups {
        id(format!("{field}.supplemental_groups"), *g)?;
    }
    no_control(format!("{field}.run_as_username"), ids.run_as_username)?;
    if ids.run_as_user.is_some() && !ids.run_as_username.is_empty() {
        return Err(invalid(
            field,
            "run_as_user and run_as_username are both set: only one may be",
        ));
    }
    if ids.run_as_group.is_some() && ids.run_as_user.is_none() && ids.run_as_username.is_empty() {
        return Err(invalid(
            format!("{field}.run_as_group"),
            "is set without run_as_user or run_as_username: the CRI API requires one of them",
        ));
    }
    let _: SupplementalGroupsPolicy = known(
        format!("{field}.supplemental_groups_policy"),
        ids.supplemental_groups_policy,
    )?;
    Ok(())
}

fn id(field: String, v: i64) -> CriResult<()> {
    if !(0..=i64::from(i32::MAX)).contains(&v) {
        return Err(invalid(
            field,
            format!("{v} is not between 0 and {}", i32::MAX),
        ));
    }
    Ok(())
}

/// Whose namespace options these are.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Owner {
    Pod,
    Container,
}

/// Namespace modes the CRI API defines and crust can honour.
pub(crate) fn namespace_options(field: &str, ns: &NamespaceOption, owner: Owner) -> CriResult<()> {
    for (name, mode) in [("network", ns.network), ("ipc", ns.ipc)] {
        let mode: NamespaceMode = known(format!("{field}.{name}"), mode)?;
        if !matches!(mode, NamespaceMode::Pod | NamespaceMode::Node) {
            return Err(invalid(
                format!("{field}.{name}"),
                format!("{} is not supported (POD or NODE)", mode.as_str_name()),
            ));
        }
    }
    let pid: NamespaceMode = known(format!("{field}.pid"), ns.pid)?;
    no_control(format!("{field}.target_id"), &ns.target_id)?;
    match (pid, owner) {
        (NamespaceMode::Target, Owner::Pod) => {
            return Err(invalid(
                format!("{field}.pid"),
                "TARGET is for containers: a pod has no container to target yet",
            ));
        }
        (NamespaceMode::Target, Owner::Container) if ns.target_id.is_empty() => {
            return Err(invalid(
                format!("{field}.target_id"),
                "is empty: pid mode TARGET names the container to share with",
            ));
        }
        _ => {}
    }
    if let Some(u) = &ns.userns_options {
        let f = format!("{field}.userns_options.mode");
        match known::<NamespaceMode>(&f, u.mode)? {
            NamespaceMode::Node if u.uids.is_empty() && u.gids.is_empty() => {}
            NamespaceMode::Node => {
                return Err(invalid(
                    format!("{field}.userns_options"),
                    "NODE mode takes no uid or gid mappings",
                ));
            }
            NamespaceMode::Pod => {
                crust_sandbox::userns::UserNamespace::from_cri(&u.uids, &u.gids)
                    .validate()
                    .map_err(|e| invalid(format!("{field}.userns_options"), e))?;
                if let Some((name, _)) = [("network", ns.network), ("ipc", ns.ipc), ("pid", ns.pid)]
                    .into_iter()
                    .find(|(_, m)| *m == NamespaceMode::Node as i32)
                {
                    return Err(invalid(
                        format!("{field}.{name}"),
                        "NODE with a user namespace of the pod's own (POD): hostUsers false \
                         needs the pod's own network, IPC and PID namespaces",
                    ));
                }
            }
            other => {
                return Err(invalid(
                    f,
                    format!(
                        "{} is not a user namespace mode (POD or NODE)",
                        other.as_str_name()
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// A seccomp or AppArmor profile: a `localhost_ref` only with `Localhost`, and always
/// with it; for seccomp an absolute path.
pub(crate) fn profile(field: &str, p: Option<&SecurityProfile>, seccomp: bool) -> CriResult<()> {
    let Some(p) = p else { return Ok(()) };
    let kind: ProfileType = known(format!("{field}.profile_type"), p.profile_type)?;
    let reference = format!("{field}.localhost_ref");
    match kind {
        ProfileType::Localhost if p.localhost_ref.is_empty() => Err(invalid(
            reference,
            "is empty: a Localhost profile names one",
        )),
        ProfileType::Localhost if seccomp => absolute_path(reference, &p.localhost_ref),
        ProfileType::Localhost => no_control(reference, &p.localhost_ref),
        _ if !p.localhost_ref.is_empty() => Err(invalid(
            reference,
            format!(
                "{} is set for a {} profile: only Localhost takes one",
                shown(&p.localhost_ref),
                kind.as_str_name()
            ),
        )),
        _ => Ok(()),
    }
}

/// Capability names are checked where they are parsed (the OCI spec); ambient ones
/// are not built.
pub(crate) fn capabilities(field: &str, c: &Capability) -> CriResult<()> {
    for n in c.add_capabilities.iter().chain(&c.drop_capabilities) {
        no_control(field, n)?;
    }
    if !c.add_ambient_capabilities.is_empty() {
        return Err(invalid(
            format!("{field}.add_ambient_capabilities"),
            "ambient capabilities are not supported by crust",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::CriError;
    use k8s_cri::v1::{IdMapping, UserNamespace};

    fn v(value: i64) -> Option<Int64Value> {
        Some(Int64Value { value })
    }

    fn check(user: Option<Int64Value>, name: &str, group: Option<Int64Value>) -> CriResult<()> {
        ids(
            "linux.security_context",
            &Ids {
                run_as_user: user.as_ref(),
                run_as_username: name,
                run_as_group: group.as_ref(),
                supplemental_groups: &[],
                supplemental_groups_policy: 0,
            },
        )
    }

    #[test]
    fn run_as_group_needs_a_user() {
        match check(None, "", v(1000)) {
            Err(CriError::InvalidArgument(m)) => {
                assert!(m.starts_with("linux.security_context.run_as_group:"), "{m}");
                assert!(m.contains("run_as_user or run_as_username"), "{m}");
            }
            other => panic!("{other:?}"),
        }
        assert!(check(v(1000), "", v(1000)).is_ok());
        assert!(check(None, "app", v(1000)).is_ok());
        assert!(check(None, "", None).is_ok());
        // Root's group is a group too.
        assert!(check(None, "", v(0)).is_err());
    }

    #[test]
    fn one_user_at_a_time_and_ids_in_range() {
        assert!(check(v(1000), "app", None).is_err());
        assert!(check(v(-1), "", None).is_err());
        assert!(check(v(1 << 31), "", None).is_err());
        assert!(check(v(i64::from(i32::MAX)), "", None).is_ok());
        assert!(check(v(1), "", v(-5)).is_err());
        let groups = ids(
            "sc",
            &Ids {
                run_as_user: None,
                run_as_username: "",
                run_as_group: None,
                supplemental_groups: &[10, -1],
                supplemental_groups_policy: 0,
            },
        );
        assert!(groups.is_err());
    }

    #[test]
    fn supplemental_groups_policies_known_and_unknown() {
        let with = |policy| {
            ids(
                "sc",
                &Ids {
                    run_as_user: None,
                    run_as_username: "",
                    run_as_group: None,
                    supplemental_groups: &[],
                    supplemental_groups_policy: policy,
                },
            )
        };
        assert!(with(SupplementalGroupsPolicy::Strict as i32).is_ok());
        assert!(with(SupplementalGroupsPolicy::Merge as i32).is_ok());
        let e = with(7).expect_err("unknown policy");
        assert!(
            format!("{e:?}").contains("sc.supplemental_groups_policy"),
            "{e:?}"
        );
    }

    fn ns(network: NamespaceMode, pid: NamespaceMode) -> NamespaceOption {
        NamespaceOption {
            network: network as i32,
            pid: pid as i32,
            ..Default::default()
        }
    }

    #[test]
    fn namespace_modes() {
        use NamespaceMode::*;
        assert!(namespace_options("n", &ns(Node, Container), Owner::Pod).is_ok());
        assert!(namespace_options("n", &ns(Container, Pod), Owner::Pod).is_err());
        assert!(namespace_options("n", &ns(Pod, Target), Owner::Pod).is_err());
        assert!(namespace_options("n", &ns(Pod, Target), Owner::Container).is_err());
        let mut t = ns(Pod, Target);
        t.target_id = "abc".into();
        assert!(namespace_options("n", &t, Owner::Container).is_ok());
        let mut unknown = ns(Pod, Pod);
        unknown.ipc = 9;
        assert!(namespace_options("n", &unknown, Owner::Pod).is_err());
    }

    #[test]
    fn user_namespace_mappings_are_checked() {
        let mut o = ns(NamespaceMode::Pod, NamespaceMode::Container);
        let mapping = IdMapping {
            host_id: 100000,
            container_id: 0,
            length: 65536,
        };
        o.userns_options = Some(UserNamespace {
            mode: NamespaceMode::Pod as i32,
            uids: vec![mapping],
            gids: vec![mapping],
        });
        assert!(namespace_options("n", &o, Owner::Pod).is_ok());
        let refused = |o: &NamespaceOption| match namespace_options("n", o, Owner::Pod) {
            Err(CriError::InvalidArgument(m)) => m,
            other => panic!("{other:?}"),
        };
        // A user namespace needs the pod's own network, IPC and PID namespaces.
        let mut host = o.clone();
        host.network = NamespaceMode::Node as i32;
        assert!(refused(&host).starts_with("n.network: NODE"));
        // Overlapping host ranges, no root, no gid map.
        let mut bad = o.clone();
        let u = bad.userns_options.as_mut().unwrap();
        u.uids.push(IdMapping {
            host_id: 100000 + 65535,
            container_id: 70000,
            length: 2,
        });
        assert!(refused(&bad).contains("host ids overlap"));
        let u = bad.userns_options.as_mut().unwrap();
        u.uids = vec![IdMapping {
            host_id: 100000,
            container_id: 1,
            length: 10,
        }];
        assert!(refused(&bad).contains("container id 0 is not mapped"));
        bad.userns_options.as_mut().unwrap().uids = vec![mapping];
        bad.userns_options.as_mut().unwrap().gids.clear();
        assert!(refused(&bad).starts_with("n.userns_options: gids: no mapping"));
        o.userns_options = Some(UserNamespace {
            mode: NamespaceMode::Node as i32,
            ..Default::default()
        });
        assert!(namespace_options("n", &o, Owner::Pod).is_ok());
        o.userns_options = Some(UserNamespace {
            mode: NamespaceMode::Target as i32,
            ..Default::default()
        });
        assert!(namespace_options("n", &o, Owner::Container).is_err());
    }

    #[test]
    fn profiles() {
        let p = |t: ProfileType, r: &str| SecurityProfile {
            profile_type: t as i32,
            localhost_ref: r.into(),
        };
        assert!(profile("s", Some(&p(ProfileType::RuntimeDefault, "")), true).is_ok());
        assert!(profile("s", Some(&p(ProfileType::Localhost, "/p.json")), true).is_ok());
        assert!(profile("s", Some(&p(ProfileType::Localhost, "p.json")), true).is_err());
        assert!(profile("s", Some(&p(ProfileType::Localhost, "")), true).is_err());
        assert!(profile("s", Some(&p(ProfileType::Unconfined, "/p.json")), true).is_err());
        assert!(profile("a", Some(&p(ProfileType::Localhost, "my-profile")), false).is_ok());
    }

    #[test]
    fn ambient_capabilities_are_refused() {
        let c = Capability {
            add_ambient_capabilities: vec!["NET_RAW".into()],
            ..Default::default()
        };
        assert!(capabilities("c", &c).is_err());
        assert!(capabilities("c", &Capability::default()).is_ok());
    }
}

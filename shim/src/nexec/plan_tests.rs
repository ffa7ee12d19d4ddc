use serde_json::json;

use super::*;

fn ctx_with<'a>(passwd: &'a dyn Fn() -> Option<String>) -> Context<'a> {
    Context {
        container_id: "c1",
        no_new_keyring: false,
        last_cap: 40,
        passwd,
    }
}

fn container() -> Value {
    json!({
        "process": {
            "user": {"uid": 0, "gid": 0, "umask": 18},
            "oomScoreAdj": 7,
            "capabilities": {"bounding": ["CAP_KILL"], "effective": ["CAP_KILL"],
                             "permitted": ["CAP_KILL"]},
            "rlimits": [{"type": "RLIMIT_NOFILE", "soft": 100, "hard": 200}]
        },
        "linux": {"namespaces": [{"type": "pid"}, {"type": "mount"}]}
    })
}

fn exec_process() -> Value {
    json!({
        "args": ["sh", "-c", "id"],
        "env": ["PATH=/usr/bin::/bin/"],
        "cwd": "/work",
        "user": {"uid": 1000, "gid": 1000, "additionalGids": [5, 6]},
        "terminal": true,
        "consoleSize": {"height": 40, "width": 120},
        "noNewPrivileges": true,
        "capabilities": {
            "bounding": ["CAP_CHOWN", "CAP_NET_RAW"],
            "effective": ["CAP_CHOWN"],
            "permitted": ["CAP_CHOWN"],
            "inheritable": [],
            "ambient": ["CAP_CHOWN"]
        }
    })
}

#[test]
fn an_exec_gets_what_runc_exec_would_give_it() {
    let passwd = || Some("root:x:0:0::/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n".into());
    let plan = build(&exec_process(), &container(), &ctx_with(&passwd)).unwrap();
    assert_eq!(plan.argv, [c"sh", c"-c", c"id"].map(CString::from));
    assert_eq!(
        plan.candidates,
        [c"/usr/bin/sh", c"./sh", c"/bin/sh"].map(CString::from)
    );
    assert!(
        plan.env.contains(&CString::from(c"HOME=/home/app")),
        "{:?}",
        plan.env
    );
    assert_eq!(
        (plan.uid, plan.gid, plan.groups.as_slice()),
        (1000, 1000, &[5, 6][..])
    );
    assert_eq!(plan.cwd.as_c_str(), c"/work");
    assert_eq!(
        plan.caps,
        CapSets {
            bounding: 1 << 0 | 1 << 13,
            effective: 1,
            permitted: 1,
            inheritable: 0,
            ambient: 1,
        }
    );
    // umask and oom_score_adj are the container's (runc takes them from its config);
    // the exec has no rlimits of its own, so the container's apply.
    assert_eq!(plan.umask, Some(18));
    assert_eq!(plan.oom_score_adj, Some(7));
    assert_eq!(
        plan.rlimits,
        [Rlimit {
            resource: 7,
            soft: 100,
            hard: 200
        }]
    );
    assert!(plan.no_new_privs && plan.terminal);
    assert_eq!(plan.console_size, Some((40, 120)));
    assert_eq!(plan.keyring.as_deref(), Some(c"_ses.c1"));
}

#[test]
fn the_containers_capabilities_apply_when_the_exec_has_none() {
    let mut p = exec_process();
    p["capabilities"] = Value::Null;
    p["env"] = json!(["HOME=/x"]);
    let none = || None;
    let mut ctx = ctx_with(&none);
    ctx.no_new_keyring = true;
    let plan = build(&p, &container(), &ctx).unwrap();
    assert_eq!(plan.caps.bounding, 1 << 5);
    assert_eq!(plan.caps.ambient, 0);
    assert_eq!(plan.keyring, None);
    // No PATH: Go's LookPath finds nothing for a bare name.
    assert!(plan.candidates.is_empty());
    assert_eq!(plan.env, [CString::from(c"HOME=/x")]);
}

#[test]
fn home_defaults_to_root_dir_as_runc_does() {
    assert_eq!(home_of(None, 5), "/");
    assert_eq!(home_of(Some("a:x:5:5::/h:/bin/sh\n"), 6), "/");
    assert_eq!(home_of(Some("a:x:5:5::/h:/bin/sh\n"), 5), "/h");
}

#[test]
fn a_program_with_a_slash_is_not_searched() {
    assert_eq!(candidates("./x", Some("/bin")), ["./x"]);
    assert_eq!(candidates("/bin/x", None), ["/bin/x"]);
}

#[test]
fn what_only_runc_applies_goes_to_runc() {
    let none = || None;
    let ctx = ctx_with(&none);
    let refused = |p: Value, c: Value| build(&p, &c, &ctx).unwrap_err().0;
    let mut c = container();
    c["linux"]["seccomp"] = json!({"defaultAction": "SCMP_ACT_ERRNO"});
    assert_eq!(refused(exec_process(), c), "linux.seccomp is set");
    let mut c = container();
    c["process"]["apparmorProfile"] = json!("crust-default");
    assert_eq!(refused(exec_process(), c), "an AppArmor profile is set");
    let mut p = exec_process();
    p["selinuxLabel"] = json!("system_u:system_r:container_t:s0");
    assert_eq!(refused(p, container()), "an SELinux label is set");
    let mut c = container();
    c["linux"]["namespaces"] = json!([{"type": "user"}]);
    assert_eq!(
        refused(exec_process(), c),
        "the container has a user namespace"
    );
    let mut p = exec_process();
    p["scheduler"] = json!({"policy": "SCHED_OTHER"});
    assert_eq!(refused(p, container()), "process.scheduler is set");
    let mut p = exec_process();
    p["user"]["username"] = json!("app");
    assert_eq!(refused(p, container()), "process.user.username is set");
    let mut p = exec_process();
    p["capabilities"]["bounding"] = json!(["CAP_NEW_THING"]);
    assert!(refused(p, container()).contains("CAP_NEW_THING"));
    let mut p = exec_process();
    p["rlimits"] = json!([{"type": "RLIMIT_FOO", "soft": 1, "hard": 1}]);
    assert!(refused(p, container()).contains("RLIMIT_FOO"));
    let mut p = exec_process();
    p["cwd"] = json!("work");
    assert!(refused(p, container()).contains("not absolute"));
    let mut p = exec_process();
    p["args"] = json!([]);
    assert_eq!(refused(p, container()), "process.args is empty");
    let mut p = exec_process();
    p["env"] = json!(["A=\u{0}"]);
    assert!(refused(p, container()).contains("NUL"));
}

#[test]
fn a_capability_beyond_the_kernels_last_goes_to_runc() {
    let none = || None;
    let mut ctx = ctx_with(&none);
    ctx.last_cap = 37;
    let mut p = exec_process();
    p["capabilities"]["bounding"] = json!(["CAP_BPF"]);
    assert!(build(&p, &container(), &ctx).is_err());
}

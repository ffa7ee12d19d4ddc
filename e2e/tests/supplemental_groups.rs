//! SupplementalGroupsPolicy: Merge (the default) adds the groups the image's
//! /etc/group gives the user, Strict gives only those the pod names; and
//! ContainerStatus.user reports the ids the container's process has.

use crust_e2e::cri;
use crust_e2e::workload::*;

/// A container running as the fixture's `app` (uid 1000, a member of `extra`,
/// gid 2000, in the image's /etc/group) with supplemental group 3000.
fn app(name: &str, image: &str, policy: cri::SupplementalGroupsPolicy) -> cri::ContainerConfig {
    let mut c = container_config(name, image, &["/bin/sh", "-c", "sleep 1000"]);
    c.linux = Some(cri::LinuxContainerConfig {
        security_context: Some(cri::LinuxContainerSecurityContext {
            run_as_username: "app".into(),
            supplemental_groups: vec![3000],
            supplemental_groups_policy: policy as i32,
            ..Default::default()
        }),
        ..Default::default()
    });
    c
}

async fn groups_seen(rt: &mut Rt, id: &str) -> String {
    let out = exec(rt, id, &["/bin/sh", "-c", "id -G"], 10)
        .await
        .expect("exec");
    assert_eq!(out.exit_code, 0);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[tokio::test]
async fn strict_gives_only_the_named_groups_and_status_reports_the_process_user() {
    let (_registry, _crustd, _net, image, mut rt, pc, pod) = scene(181, "groups").await;
    let runtime_status = rt
        .status(cri::StatusRequest { verbose: false })
        .await
        .expect("Status")
        .into_inner();
    assert_eq!(
        runtime_status
            .features
            .map(|f| f.supplemental_groups_policy),
        Some(true)
    );

    let merge = create(
        &mut rt,
        &pod,
        &pc,
        app("merge", &image, cri::SupplementalGroupsPolicy::Merge),
    )
    .await
    .expect("create merge");
    let strict = create(
        &mut rt,
        &pod,
        &pc,
        app("strict", &image, cri::SupplementalGroupsPolicy::Strict),
    )
    .await
    .expect("create strict");
    // Before it runs, the user is the one of its spec.
    let created = status(&mut rt, &strict)
        .await
        .user
        .and_then(|u| u.linux)
        .expect("user");
    assert_eq!((created.uid, created.gid), (1000, 1000));
    assert_eq!(created.supplemental_groups, [3000]);
    start(&mut rt, &merge).await;
    start(&mut rt, &strict).await;

    // `id -G`: the primary group first, then the supplemental ones.
    assert_eq!(groups_seen(&mut rt, &merge).await, "1000 2000 3000");
    assert_eq!(groups_seen(&mut rt, &strict).await, "1000 3000");

    // ContainerStatus.user: what the running process has, read from /proc.
    for (id, groups) in [(&merge, vec![2000, 3000]), (&strict, vec![3000])] {
        let pid = pid_of(&mut rt, id).await;
        let user = status(&mut rt, id)
            .await
            .user
            .and_then(|u| u.linux)
            .expect("user");
        assert_eq!((user.uid, user.gid), (1000, 1000));
        assert_eq!(user.supplemental_groups, groups);
        // The same ids the kernel shows for the process.
        let proc_status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
        let line = proc_status
            .lines()
            .find(|l| l.starts_with("Groups:"))
            .expect("Groups");
        let kernel: Vec<i64> = line[7..]
            .split_whitespace()
            .map(|g| g.parse().expect("gid"))
            .collect();
        assert_eq!(kernel, groups);
    }

    // An unknown policy is refused at the edge.
    let mut bad = app("bad", &image, cri::SupplementalGroupsPolicy::Merge);
    if let Some(sc) = bad.linux.as_mut().and_then(|l| l.security_context.as_mut()) {
        sc.supplemental_groups_policy = 9;
    }
    let err = create(&mut rt, &pod, &pc, bad)
        .await
        .expect_err("unknown policy");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message().contains("supplemental_groups_policy"),
        "{}",
        err.message()
    );
    remove_pod(&mut rt, &pod).await;
}

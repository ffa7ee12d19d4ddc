//! A full disk under root_dir (a small tmpfs the test mounts): writes fail with
//! ResourceExhausted naming the path and the space left, nothing half-written stays,
//! and once space is back everything works again without restarting crustd.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crust_e2e::net::{TestNet, mounts_under};
use crust_e2e::registry::Registry;
use crust_e2e::workload::*;
use crust_e2e::{Crustd, Options, cri};
use tonic::Code;

/// Fills the filesystem of `dir` with one file, until not one more byte fits.
fn fill(dir: &Path) -> PathBuf {
    let p = dir.join("filler");
    let mut f = std::fs::File::create(&p).expect("filler");
    let chunk = vec![0u8; 1 << 20];
    while f.write(&chunk).is_ok_and(|n| n > 0) {}
    while f.write(&[0u8]).is_ok_and(|n| n == 1) {}
    p
}

/// Names in `dir` (none when it does not exist), sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn assert_full(e: &tonic::Status, root: &Path, what: &str) {
    assert_eq!(e.code(), Code::ResourceExhausted, "{what}: {e:?}");
    let m = e.message();
    assert!(
        m.contains(&root.display().to_string()) && m.contains("no space left on device"),
        "{what}: the message names the path under {}: {m}",
        root.display()
    );
    assert!(
        m.contains("bytes free"),
        "{what}: the message gives the free space: {m}"
    );
}

#[tokio::test]
async fn a_full_disk_is_resource_exhausted_and_heals_without_a_restart() {
    let registry = Registry::start(None).expect("registry");
    let crustd = Crustd::start_with(Options {
        images_config: format!("insecure_registries = [\"{}\"]", registry.addr),
        root_dir_tmpfs: Some("64m".into()),
        ..Default::default()
    })
    .await
    .expect("crustd starts");
    let pid = crustd.pid();
    let net = TestNet::new(&crustd, 241);
    let image = registry.image("crust/busybox:latest");
    pull(&crustd, &image).await;
    let mut rt = crustd.runtime().await.expect("client");
    let log_dir = crustd.dir().join("logs");
    let pc = pod_config("diskfull", &net, &log_dir);
    let pod = run_pod(&mut rt, &pc).await;

    let root = crustd.root_dir.clone();
    let snapshots = root.join("images/snapshots");
    let ingest = root.join("images/content/ingest");
    let bundles = crustd.state_dir.join("containers");
    let snapshots_before = names(&snapshots);
    let filler = fill(&root);

    // A write that still fits into the state store's file succeeds; the first that
    // needs a page more fails. Either way, never redb's "previous I/O error" (Internal)
    // that used to answer every write after the first failure.
    let mut made = Vec::new();
    let mut failures = 0;
    for i in 0..40 {
        if failures == 2 {
            break;
        }
        let config = container_config(&format!("c{i}"), &image, &["/bin/sleep", "1000"]);
        match create(&mut rt, &pod, &pc, config).await {
            Ok(id) => made.push(id),
            Err(e) => {
                assert_full(&e, &root, &format!("CreateContainer c{i}"));
                failures += 1;
            }
        }
    }
    assert_eq!(failures, 2, "creates on a full disk fail");
    let e = crust_e2e::workload::try_pull(&crustd, &registry.image("crust/config:latest"))
        .await
        .expect_err("PullImage on a full disk");
    assert_full(&e, &root, "PullImage");
    rt.version(cri::VersionRequest::default())
        .await
        .expect("Version");
    // Nothing half-written stays: no bundle, mount or snapshot of a failed create, no
    // ingest file or staging snapshot of the failed pull.
    made.sort();
    assert_eq!(names(&bundles), made, "bundles");
    assert_eq!(mounts_under(&bundles).len(), made.len(), "mounts");
    wait_for(
        "the failed creates' snapshots to go",
        Duration::from_secs(5),
        || names(&snapshots).len() == snapshots_before.len() + made.len(),
    )
    .await;
    assert_eq!(names(&ingest), Vec::<String>::new(), "ingest files");

    std::fs::remove_file(&filler).expect("free the space");

    // The same crustd now does everything again.
    for id in &made {
        rt.remove_container(cri::RemoveContainerRequest {
            container_id: id.clone(),
        })
        .await
        .expect("RemoveContainer of a container made while the disk filled");
    }
    let id = create(
        &mut rt,
        &pod,
        &pc,
        container_config("c", &image, &["/bin/sleep", "1000"]),
    )
    .await
    .expect("CreateContainer once space is back");
    start(&mut rt, &id).await;
    rt.stop_container(cri::StopContainerRequest {
        container_id: id.clone(),
        timeout: 0,
    })
    .await
    .expect("StopContainer");
    wait_exited(&mut rt, &id, Duration::from_secs(10)).await;
    rt.remove_container(cri::RemoveContainerRequest {
        container_id: id.clone(),
    })
    .await
    .expect("RemoveContainer");
    rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: pod.clone(),
    })
    .await
    .expect("StopPodSandbox");
    remove_pod(&mut rt, &pod).await;
    let pod2 = run_pod(&mut rt, &pod_config("diskfull-again", &net, &log_dir)).await;
    remove_pod(&mut rt, &pod2).await;
    crust_e2e::workload::try_pull(&crustd, &registry.image("crust/config:latest"))
        .await
        .expect("PullImage once space is back");
    assert_eq!(crustd.pid(), pid, "crustd was not restarted");
    assert!(
        crustd
            .log()
            .contains("state store reopened after an I/O error"),
        "the reopen is logged"
    );
}

#[tokio::test]
async fn a_full_state_dir_fails_a_create_naming_its_bundle_and_keeps_nothing_of_it() {
    let registry = Registry::start(None).expect("registry");
    let crustd = Crustd::start_with(Options {
        images_config: format!("insecure_registries = [\"{}\"]", registry.addr),
        state_dir_tmpfs: Some("16m".into()),
        ..Default::default()
    })
    .await
    .expect("crustd starts");
    let net = TestNet::new(&crustd, 243);
    let image = registry.image("crust/busybox:latest");
    pull(&crustd, &image).await;
    let mut rt = crustd.runtime().await.expect("client");
    let pc = pod_config("statefull", &net, &crustd.dir().join("logs"));
    let pod = run_pod(&mut rt, &pc).await;
    let state = crustd.state_dir.clone();
    let bundles = state.join("containers");
    let snapshots = crustd.root_dir.join("images/snapshots");
    let snapshots_before = names(&snapshots);
    let filler = fill(&state);

    let e = create(
        &mut rt,
        &pod,
        &pc,
        container_config("c", &image, &["/bin/sleep", "1000"]),
    )
    .await
    .expect_err("CreateContainer with a full state_dir");
    assert_full(&e, &bundles, "CreateContainer");
    assert!(e.message().contains("config.json"), "{}", e.message());
    assert_eq!(names(&bundles), Vec::<String>::new(), "bundles");
    assert_eq!(mounts_under(&bundles), Vec::<String>::new(), "mounts");
    wait_for(
        "the failed create's snapshot to go",
        Duration::from_secs(5),
        || names(&snapshots) == snapshots_before,
    )
    .await;

    std::fs::remove_file(&filler).expect("free the space");
    let id = create(
        &mut rt,
        &pod,
        &pc,
        container_config("c", &image, &["/bin/sleep", "1000"]),
    )
    .await
    .expect("CreateContainer once space is back");
    start(&mut rt, &id).await;
    remove_pod(&mut rt, &pod).await;
}

#[tokio::test]
async fn a_full_root_dir_fails_run_pod_sandbox_naming_the_cni_cache_and_keeps_nothing() {
    let crustd = Crustd::start_with(Options {
        root_dir_tmpfs: Some("16m".into()),
        ..Default::default()
    })
    .await
    .expect("crustd starts");
    let net = TestNet::new(&crustd, 101);
    let mut rt = crustd.runtime().await.expect("client");
    let pc = pod_config("cnifull", &net, &crustd.dir().join("logs"));
    let cni_cache = crustd.root_dir.join("cni");
    let pods = crustd.state_dir.join("pods");
    let filler = fill(&crustd.root_dir);

    let e = rt
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(pc.clone()),
            runtime_handler: String::new(),
        })
        .await
        .expect_err("RunPodSandbox with a full root_dir");
    assert_full(&e, &cni_cache, "RunPodSandbox");
    // The CNI cache entry is written before any plugin runs: no plugin ran, and
    // nothing of the pod stays (pod dir, pins, cache entry or its temporary file,
    // lease, cgroup).
    assert_eq!(names(&cni_cache), Vec::<String>::new(), "CNI cache");
    assert_eq!(names(&pods), Vec::<String>::new(), "pod dirs");
    assert_eq!(mounts_under(&pods), Vec::<String>::new(), "mounts");
    assert_eq!(net.leases(), Vec::<String>::new(), "IP leases");
    assert_no_cgroups_left(&net);

    std::fs::remove_file(&filler).expect("free the space");
    let pod = run_pod(&mut rt, &pc).await;
    assert_eq!(
        net.leases().len(),
        1,
        "the pod has its IP once space is back"
    );
    remove_pod(&mut rt, &pod).await;
    assert_eq!(net.leases(), Vec::<String>::new(), "IP leases");
}

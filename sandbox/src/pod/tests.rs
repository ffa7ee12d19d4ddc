//! The pod lifecycle with a fake CNI plugin runner (the process seam) and no cgroups: name
//! reservation under kubelet retries, rollback, restart. Needs root (real namespaces, mounts).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

use super::*;
use crate::cni::{RunFailure, RunFuture};

/// Answers ADD with an IP after `delay`; fails ADD when `fail_add` is set. Counts leases.
#[derive(Clone, Default)]
struct FakeCni {
    delay: Duration,
    fail_add: bool,
    leases: Arc<AtomicUsize>,
    calls: Arc<Mutex<Vec<String>>>,
}

impl PluginRunner for FakeCni {
    fn run<'a>(
        &'a self,
        binary: &'a Path,
        env: Vec<(String, String)>,
        _stdin: Vec<u8>,
        _timeout: Duration,
    ) -> RunFuture<'a> {
        Box::pin(async move {
            let cmd = env
                .iter()
                .find(|(k, _)| k == "CNI_COMMAND")
                .map(|(_, v)| v.clone())
                .unwrap_or_default();
            let plugin = binary.file_name().unwrap().to_string_lossy().into_owned();
            self.calls.lock().unwrap().push(format!("{plugin} {cmd}"));
            if cmd == "DEL" {
                let _ = self
                    .leases
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
                return Ok(b"".to_vec());
            }
            tokio::time::sleep(self.delay).await;
            if self.fail_add {
                return Err(RunFailure::Exit {
                    code: Some(1),
                    stdout: br#"{"code":7,"msg":"fake failure"}"#.to_vec(),
                    stderr: vec![],
                });
            }
            let n = self.leases.fetch_add(1, Ordering::SeqCst);
            let res: Value = json!({"cniVersion": "1.0.0", "ips": [{"address": format!("10.99.0.{}/24", n + 2)}]});
            Ok(serde_json::to_vec(&res).unwrap())
        })
    }
}

struct Env {
    dir: tempfile::TempDir,
    db: Arc<crust_state::StateDb>,
    config: Config,
}

impl Env {
    fn new() -> Option<Env> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: needs root");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("net.d");
        let bin = dir.path().join("bin");
        std::fs::create_dir_all(&conf).unwrap();
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::write(
            conf.join("10-fake.conflist"),
            r#"{"cniVersion":"1.0.0","name":"fake","plugins":[{"type":"fakenet"}]}"#,
        )
        .unwrap();
        let plugin = bin.join("fakenet");
        std::fs::write(&plugin, "#!/bin/sh\nexit 1\n").unwrap();
        std::fs::set_permissions(&plugin, std::fs::Permissions::from_mode(0o755)).unwrap();
        let db = Arc::new(crust_state::StateDb::open(&dir.path().join("state.redb")).unwrap());
        let config = Config {
            cni_conf_dir: conf,
            cni_bin_dirs: vec![bin],
            ..Config::default()
        };
        Some(Env { dir, db, config })
    }

    fn pods(&self, cni: &FakeCni) -> PodSandboxes {
        PodSandboxes::open_with(
            self.config.clone(),
            self.db.clone(),
            Paths {
                root_dir: self.dir.path().join("root"),
                state_dir: self.dir.path().join("state"),
            },
            CgroupDriver::Cgroupfs,
            Seams {
                cni_runner: Box::new(cni.clone()),
                hierarchies: None,
                spawn_shims: false,
                connector: None,
            },
        )
        .unwrap()
    }

    fn pod_dirs(&self) -> usize {
        std::fs::read_dir(self.dir.path().join("state/pods"))
            .map(|d| d.count())
            .unwrap_or(0)
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        // Failed tests: release what is still pinned under the temp dir.
        let dir = self.dir.path().to_string_lossy().into_owned();
        let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut points: Vec<&str> = mi
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|p| p.starts_with(&dir))
            .collect();
        points.sort_by_key(|p| std::cmp::Reverse(p.len()));
        for p in points {
            let _ = crate::namespaces::unmount(Path::new(p));
        }
    }
}

fn spec(name: &str) -> PodSpec {
    PodSpec {
        metadata: PodMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: "unit".into(),
            attempt: 0,
        },
        hostname: name.into(),
        namespaces: NamespaceOptions {
            pid: NamespaceMode::Container,
            ..Default::default()
        },
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_while_the_first_create_runs_gets_the_same_pod() {
    let Some(env) = Env::new() else { return };
    let cni = FakeCni {
        delay: Duration::from_millis(300),
        ..Default::default()
    };
    let pods = env.pods(&cni);
    let (a, b) = tokio::join!(pods.run(spec("slow")), pods.run(spec("slow")));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a, b);
    assert_eq!(pods.list(&PodFilter::default()).len(), 1);
    // A different request for the same name is refused, naming the holder.
    let mut other = spec("slow");
    other.hostname = "different".into();
    let err = pods.run(other).await.unwrap_err().to_string();
    assert!(err.contains(&a), "{err}");
    pods.remove(&a).await.unwrap();
    assert_eq!(cni.leases.load(Ordering::SeqCst), 0);
    assert_eq!(env.pod_dirs(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_whose_caller_left_is_handed_to_the_retry() {
    let Some(env) = Env::new() else { return };
    let cni = FakeCni {
        delay: Duration::from_millis(300),
        ..Default::default()
    };
    let pods = env.pods(&cni);
    // kubelet's call times out: the RPC future is dropped mid-create.
    let p = pods.clone();
    let first = tokio::spawn(async move { p.run(spec("timeout")).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    first.abort();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let created = pods.list(&PodFilter::default());
    assert_eq!(created.len(), 1, "the create finished on its own");
    // The retry takes the finished pod over instead of failing on the name.
    let id = pods.run(spec("timeout")).await.unwrap();
    assert_eq!(id, created[0].id);
    // Once taken over, the name is held as usual.
    assert!(matches!(
        pods.run(spec("timeout")).await,
        Err(Error::AlreadyExists(_))
    ));
    pods.remove(&id).await.unwrap();
    assert_eq!(cni.leases.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_add_rolls_everything_back_and_frees_the_name() {
    let Some(env) = Env::new() else { return };
    let cni = FakeCni {
        fail_add: true,
        ..Default::default()
    };
    let pods = env.pods(&cni);
    let err = pods.run(spec("broken")).await.unwrap_err();
    assert!(err.to_string().contains("fake failure"), "{err}");
    assert_eq!(
        *cni.calls.lock().unwrap(),
        vec!["fakenet ADD", "fakenet DEL"]
    );
    assert_eq!(env.pod_dirs(), 0);
    assert!(pods.list(&PodFilter::default()).is_empty());
    let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mi.contains(&*env.dir.path().to_string_lossy()),
        "mount left"
    );
    // The name is free: a working network now succeeds.
    let ok = env.pods(&FakeCni::default());
    let id = ok.run(spec("broken")).await.unwrap();
    ok.remove(&id).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_survive_a_reopen_and_stop_uses_the_cni_cache() {
    let Some(env) = Env::new() else { return };
    let cni = FakeCni::default();
    let id = {
        let pods = env.pods(&cni);
        pods.run(spec("keep")).await.unwrap()
    };
    // The conf dir changes meanwhile: DEL must still use what ADD used.
    std::fs::remove_file(env.config.cni_conf_dir.join("10-fake.conflist")).unwrap();
    let pods = env.pods(&cni);
    let rec = pods.status(&id[..10]).unwrap();
    assert_eq!(rec.state, PodState::Ready);
    assert_eq!(rec.ips, vec!["10.99.0.2"]);
    assert_eq!(cni.leases.load(Ordering::SeqCst), 1);
    pods.stop(&id).await.unwrap();
    assert_eq!(cni.leases.load(Ordering::SeqCst), 0);
    let rec = pods.status(&id).unwrap();
    assert_eq!(rec.state, PodState::NotReady);
    assert!(rec.ips.is_empty());
    pods.remove(&id).await.unwrap();
    pods.remove(&id).await.unwrap();
    assert!(matches!(pods.status(&id), Err(Error::NotFound(_))));
    assert_eq!(env.pod_dirs(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cni_result_is_kept_and_read_without_running_a_plugin() {
    let Some(env) = Env::new() else { return };
    let cni = FakeCni::default();
    let pods = env.pods(&cni);
    let id = pods.run(spec("kept")).await.unwrap();
    let calls = cni.calls.lock().unwrap().clone();
    assert_eq!(calls, vec!["fakenet ADD"]);
    let rec = pods.status(&id).unwrap();
    let want = json!({"cniVersion": "1.0.0", "ips": [{"address": "10.99.0.2/24"}]});
    assert_eq!(rec.cni_result.as_ref(), Some(&want));
    assert_eq!(pods.cni_result(&rec), Some(want.clone()));
    // A record of an older crustd has none: the CNI cache entry answers.
    let old = PodRecord {
        cni_result: None,
        ..rec.clone()
    };
    assert_eq!(pods.cni_result(&old), Some(want));
    assert_eq!(*cni.calls.lock().unwrap(), calls, "no plugin ran");
    pods.stop(&id).await.unwrap();
    let rec = pods.status(&id).unwrap();
    assert_eq!(rec.cni_result, None);
    assert_eq!(pods.cni_result(&rec), None);
    pods.remove(&id).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_requests_touch_nothing() {
    let Some(env) = Env::new() else { return };
    let cni = FakeCni::default();
    let pods = env.pods(&cni);
    let mut s = spec("bad");
    s.runtime_handler = "kata".into();
    assert!(matches!(pods.run(s).await, Err(Error::InvalidArgument(_))));
    let mut s = spec("bad");
    s.sysctls.insert("kernel.panic".into(), "1".into());
    assert!(matches!(pods.run(s).await, Err(Error::InvalidArgument(_))));
    let mut s = spec("bad");
    s.cgroup_parent = "relative/parent".into();
    assert!(matches!(pods.run(s).await, Err(Error::InvalidArgument(_))));
    assert!(cni.calls.lock().unwrap().is_empty());
    assert_eq!(env.pod_dirs(), 0);
    assert!(matches!(
        pods.stop("").await,
        Err(Error::InvalidArgument(_))
    ));
    pods.stop("feedbeef").await.unwrap();
    pods.remove("feedbeef").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_whose_directory_vanished_come_back_not_ready() {
    let Some(env) = Env::new() else { return };
    let cni = FakeCni::default();
    let id = env.pods(&cni).run(spec("reboot")).await.unwrap();
    // What a reboot does to the state dir (tmpfs): pins and pod dir gone.
    let dir = env.dir.path().join("state/pods").join(&id);
    for p in ["ns/net", "ns/ipc", "ns/uts", "shm"] {
        crate::namespaces::unmount(&dir.join(p)).unwrap();
    }
    std::fs::remove_dir_all(&dir).unwrap();
    let pods = env.pods(&cni);
    assert_eq!(pods.status(&id).unwrap().state, PodState::NotReady);
    // Stop still releases the lease through the cache; remove cleans the rest.
    pods.stop(&id).await.unwrap();
    assert_eq!(cni.leases.load(Ordering::SeqCst), 0);
    pods.remove(&id).await.unwrap();
    assert!(pods.list(&PodFilter::default()).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_crash_mid_create_left_is_released_at_start() {
    let Some(env) = Env::new() else { return };
    let cni = FakeCni::default();
    let id = env.pods(&cni).run(spec("crashed")).await.unwrap();
    // As if crustd died after every step but writing the record.
    store::table(env.db.clone()).delete(&id).unwrap();
    let dir = env.dir.path().join("state/pods").join(&id);
    assert!(dir.exists());
    assert_eq!(cni.leases.load(Ordering::SeqCst), 1);

    let pods = env.pods(&cni);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while (dir.exists() || cni.leases.load(Ordering::SeqCst) > 0)
        && std::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!dir.exists(), "pod dir left");
    assert_eq!(cni.leases.load(Ordering::SeqCst), 0, "lease left");
    let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mi.contains(&*dir.to_string_lossy()), "mount left");
    assert!(pods.list(&PodFilter::default()).is_empty());
    // The name is free.
    let again = pods.run(spec("crashed")).await.unwrap();
    pods.remove(&again).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_of_a_create_that_fails_tries_again_itself() {
    let Some(env) = Env::new() else { return };
    let cni = FakeCni {
        delay: Duration::from_millis(200),
        fail_add: true,
        ..Default::default()
    };
    let pods = env.pods(&cni);
    let (a, b) = tokio::time::timeout(Duration::from_secs(10), async {
        tokio::join!(pods.run(spec("flaky")), pods.run(spec("flaky")))
    })
    .await
    .expect("no retry loop");
    assert!(a.is_err() && b.is_err());
    // Each made its own attempt: two ADDs, each undone.
    let adds = cni
        .calls
        .lock()
        .unwrap()
        .iter()
        .filter(|c| c.ends_with("ADD"))
        .count();
    assert_eq!(adds, 2);
    assert_eq!(env.pod_dirs(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_orderly_stop_is_not_taken_for_a_lost_infra_process() {
    let Some(env) = Env::new() else { return };
    let pods = env.pods(&FakeCni::default());
    let in_pod_pid_ns = |name: &str| {
        let mut s = spec(name);
        s.namespaces.pid = NamespaceMode::Pod;
        s
    };
    let kill_infra = |id: &str| {
        let ns = pods.status(id).unwrap().namespaces;
        assert!(
            ns.infra_pid.is_some(),
            "a POD pid namespace has an infra process"
        );
        crate::namespaces::kill_infra(&ns);
        assert!(!crate::namespaces::running(
            ns.infra_pid.unwrap(),
            ns.infra_start_time
        ));
    };

    // StopPodSandbox's window, made wide: under the pod's op lock the infra process is gone
    // and the record still says READY. A status read then must not call it a loss.
    let stopping = pods.run(in_pod_pid_ns("stopping")).await.unwrap();
    let held = pods.inner.op_lock(&stopping).lock_owned().await;
    kill_infra(&stopping);
    assert_eq!(pods.status(&stopping).unwrap().state, PodState::Ready);
    assert_eq!(pods.list(&PodFilter::default()).len(), 1);
    assert_eq!(pods.status(&stopping).unwrap().state, PodState::Ready);
    drop(held);

    // Without an operation, a dead infra process is a lost pod.
    let lost = pods.run(in_pod_pid_ns("lost")).await.unwrap();
    kill_infra(&lost);
    assert_eq!(pods.status(&lost).unwrap().state, PodState::NotReady);

    for id in [&stopping, &lost] {
        pods.stop(id).await.unwrap();
        assert_eq!(pods.status(id).unwrap().state, PodState::NotReady);
        pods.remove(id).await.unwrap();
    }
    assert_eq!(env.pod_dirs(), 0);
}

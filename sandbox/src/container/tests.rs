//! The container lifecycle against the fake task runtime (`task::fake`) and a fake rootfs:
//! kubelet retries, a create failing half-way or panicking, UNKNOWN containers, a removal
//! racing a stop, an exit seen while crustd was down, a start a crash cut short. Needs root
//! (the pod's namespaces).

use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_cri::v1::{ContainerConfig, ContainerMetadata};

use super::*;
use crate::cni::ProcessRunner;
use crate::pod::{NamespaceMode, NamespaceOptions, PodMetadata, PodSpec};
use crate::task::fake::FakeConnector;
use crate::{CgroupDriver, Config, Paths, Seams};

/// Snapshots as directories; `mount` panics once when told to.
#[derive(Default)]
struct FakeRootfs {
    snapshots: Mutex<HashSet<String>>,
    panic_once: AtomicBool,
}

impl Rootfs for FakeRootfs {
    fn mount(&self, key: &str, _image_id: &str, target: &Path) -> Result<()> {
        if self.panic_once.swap(false, Ordering::SeqCst) {
            panic!("mount panicked");
        }
        std::fs::create_dir_all(target)?;
        self.snapshots.lock().unwrap().insert(key.to_string());
        Ok(())
    }
    fn remove(&self, key: &str) -> Result<()> {
        self.snapshots.lock().unwrap().remove(key);
        Ok(())
    }
    fn usage(&self, _key: &str) -> Option<(u64, u64)> {
        None
    }
    fn keys(&self) -> std::result::Result<Vec<String>, String> {
        Ok(self.snapshots.lock().unwrap().iter().cloned().collect())
    }
}

struct Env {
    dir: tempfile::TempDir,
    db: Arc<crust_state::StateDb>,
    pods: PodSandboxes,
    runtime: FakeConnector,
    rootfs: Arc<FakeRootfs>,
    pod: String,
}

impl Env {
    async fn new() -> Option<Env> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: needs root");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let db = Arc::new(crust_state::StateDb::open(&dir.path().join("state.redb")).unwrap());
        let runtime = FakeConnector::default();
        let pods = PodSandboxes::open_with(
            Config::default(),
            db.clone(),
            Paths {
                root_dir: dir.path().join("root"),
                state_dir: dir.path().join("state"),
            },
            CgroupDriver::Cgroupfs,
            Seams {
                cni_runner: Box::new(ProcessRunner),
                hierarchies: None,
                spawn_shims: false,
                connector: Some(Arc::new(runtime.clone())),
            },
        )
        .unwrap();
        // The host's network and IPC: nothing to pin, no CNI.
        let pod = pods
            .run(PodSpec {
                metadata: PodMetadata {
                    name: "p".into(),
                    uid: "uid-p".into(),
                    namespace: "unit".into(),
                    attempt: 0,
                },
                namespaces: NamespaceOptions {
                    network: NamespaceMode::Node,
                    pid: NamespaceMode::Container,
                    ipc: NamespaceMode::Node,
                    target_id: String::new(),
                    userns: None,
                },
                ..Default::default()
            })
            .await
            .unwrap();
        Some(Env {
            dir,
            db,
            pods,
            runtime,
            rootfs: Arc::new(FakeRootfs::default()),
            pod,
        })
    }

    /// An environment and its containers (None without root).
    async fn with_containers() -> Option<(Env, Containers)> {
        let env = Env::new().await?;
        let c = env.containers().await;
        Some((env, c))
    }

    async fn containers(&self) -> Containers {
        Containers::open(
            ContainersConfig {
                state_dir: self.dir.path().join("state"),
                systemd_cgroup: false,
            },
            self.db.clone(),
            self.pods.clone(),
            self.rootfs.clone(),
        )
        .await
        .unwrap()
    }

    fn bundles(&self) -> Vec<String> {
        let mut out = Vec::new();
        for d in ["containers", "containers-trash"] {
            for e in std::fs::read_dir(self.dir.path().join("state").join(d))
                .into_iter()
                .flatten()
                .flatten()
            {
                out.push(e.file_name().to_string_lossy().into_owned());
            }
        }
        out
    }

    /// No bundle (also none in the trash) and no snapshot is left.
    fn assert_nothing_left(&self) {
        assert!(self.bundles().is_empty(), "{:?}", self.bundles());
        assert!(self.rootfs.snapshots.lock().unwrap().is_empty());
    }
}

/// A container created (CREATED).
async fn created(env: &Env, c: &Containers) -> String {
    c.create(&env.pod, config("web", &["sleep"]), image())
        .await
        .unwrap()
}

/// A container created and started.
async fn running(env: &Env, c: &Containers) -> String {
    let id = created(env, c).await;
    c.start(&id).await.unwrap();
    id
}

fn config(name: &str, command: &[&str]) -> ContainerConfig {
    ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        command: command.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

fn image() -> ImageInfo {
    ImageInfo {
        name: "busybox".into(),
        id: "sha256:00".into(),
        config: None,
    }
}

async fn state_of(c: &Containers, id: &str, want: ContainerState) -> ContainerRecord {
    for _ in 0..200 {
        let r = c.get(id).unwrap();
        if r.state == want {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!(
        "container {id} never became {want:?}: {:?}",
        c.get(id).unwrap().state
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_identical_creates_make_one_container() {
    let Some((env, c)) = Env::with_containers().await else {
        return;
    };
    let (a, b) = tokio::join!(
        c.create(&env.pod, config("web", &["sleep"]), image()),
        c.create(&env.pod, config("web", &["sleep"]), image())
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a, b);
    assert_eq!(c.list(&ContainerFilter::default()).unwrap().len(), 1);
    // Untouched, it is handed to an identical retry; another request is refused.
    assert_eq!(
        c.create(&env.pod, config("web", &["sleep"]), image())
            .await
            .unwrap(),
        a
    );
    match c.create(&env.pod, config("web", &["other"]), image()).await {
        Err(Error::AlreadyExists(m)) => assert!(m.contains(&a), "{m}"),
        other => panic!("{other:?}"),
    }
    c.remove_all_of_pod(&env.pod).await.unwrap();
    env.assert_nothing_left();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_failing_half_way_leaves_nothing_and_frees_the_name() {
    let Some((env, c)) = Env::with_containers().await else {
        return;
    };
    // The rootfs is mounted, then the spec cannot be built (no command).
    let err = c
        .create(&env.pod, config("web", &[]), image())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
    env.assert_nothing_left();
    c.create(&env.pod, config("web", &["sleep"]), image())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_that_panics_frees_its_name() {
    let Some((env, c)) = Env::with_containers().await else {
        return;
    };
    env.rootfs.panic_once.store(true, Ordering::SeqCst);
    let first = tokio::time::timeout(
        Duration::from_secs(10),
        c.create(&env.pod, config("web", &["sleep"]), image()),
    )
    .await
    .expect("the create answers");
    assert!(matches!(first, Err(Error::Internal(_))), "{first:?}");
    // The identical retry does not wait for ever on the lost create, nor is the name taken.
    let id = tokio::time::timeout(
        Duration::from_secs(10),
        c.create(&env.pod, config("web", &["sleep"]), image()),
    )
    .await
    .expect("the retry answers")
    .unwrap();
    assert_eq!(c.get(&id).unwrap().state, ContainerState::Created);
}

/// A container whose shim was lost, once stopped: EXITED 255, reason `Unknown`.
fn assert_settled_unknown(c: &Containers, id: &str) {
    let r = c.get(id).unwrap();
    assert_eq!(
        (r.state, r.exit_code, r.reason.as_str()),
        (ContainerState::Exited, 255, "Unknown")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_container_whose_shim_is_gone_stops_as_exited() {
    let Some((env, c)) = Env::with_containers().await else {
        return;
    };
    let id = running(&env, &c).await;
    assert_eq!(c.get(&id).unwrap().state, ContainerState::Running);
    // The shim dies: the exit watch turns the container UNKNOWN.
    env.runtime.unreachable.store(true, Ordering::SeqCst);
    env.runtime.shim.lose();
    state_of(&c, &id, ContainerState::Unknown).await;
    c.stop(&id, Duration::from_secs(5)).await.unwrap();
    assert_settled_unknown(&c, &id);
    c.remove(&id).await.unwrap();
    assert!(matches!(c.get(&id), Err(Error::NotFound(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_that_finds_the_shim_gone_kills_what_is_left_before_answering() {
    let Some((env, c)) = Env::with_containers().await else {
        return;
    };
    let id = running(&env, &c).await;
    // The shim cannot be reached (a crustd restarted after it died has no connection to
    // it), and nothing has told the container's record yet.
    env.runtime.unreachable.store(true, Ordering::SeqCst);
    let pod = c.get(&id).unwrap().pod_id;
    c.inner.pods.forget_task_runtime(&pod).await;
    assert_eq!(c.get(&id).unwrap().state, ContainerState::Running);
    c.stop(&id, Duration::from_secs(5)).await.unwrap();
    // An OK means stopped: not UNKNOWN, left for a later call to settle.
    assert_settled_unknown(&c, &id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shim_lost_during_the_stop_leaves_nothing_running_behind_an_ok() {
    let Some((env, c)) = Env::with_containers().await else {
        return;
    };
    let id = running(&env, &c).await;
    // The shim dies as the stop begins: its signal fails, and the exit the stop waits for
    // is the watch marking the container UNKNOWN, not an exit.
    env.runtime.shim.lose();
    c.stop(&id, Duration::from_secs(5)).await.unwrap();
    assert_settled_unknown(&c, &id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_container_its_shim_still_runs_is_stopped_gracefully() {
    let Some((env, c)) = Env::with_containers().await else {
        return;
    };
    let id = running(&env, &c).await;
    c.inner.mark_unknown(&id, "a passing error");
    assert_eq!(c.get(&id).unwrap().state, ContainerState::Unknown);
    c.stop(&id, Duration::from_secs(5)).await.unwrap();
    let r = state_of(&c, &id, ContainerState::Exited).await;
    assert_eq!(r.exit_code, 128 + libc::SIGTERM);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removal_racing_a_stop_leaves_nothing() {
    let Some((env, c)) = Env::with_containers().await else {
        return;
    };
    let id = running(&env, &c).await;
    env.runtime.shim.ignore_sigterm();
    let (stopped, removed) = tokio::join!(c.stop(&id, Duration::from_secs(2)), async {
        tokio::time::sleep(Duration::from_millis(20)).await;
        c.remove(&id).await
    });
    stopped.unwrap();
    removed.unwrap();
    assert!(matches!(c.get(&id), Err(Error::NotFound(_))));
    c.remove_all_of_pod(&env.pod).await.unwrap();
    assert!(
        env.runtime.shim.tasks().is_empty(),
        "{:?}",
        env.runtime.shim.tasks()
    );
    env.assert_nothing_left();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exit_while_crustd_was_down_is_recorded_after_the_restart() {
    let Some(env) = Env::new().await else { return };
    let id = running(&env, &env.containers().await).await;
    // Its exit watch waits; then crustd is gone (its waits with it) and the container
    // exits meanwhile.
    while !env.runtime.shim.calls().contains(&format!("wait {id}/")) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    env.runtime.shim.drop_client();
    env.runtime.shim.exit(&id, 3);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let stored = record::table(env.db.clone())
        .load_all(crate::registry::Unreadable::Skip)
        .unwrap();
    assert_eq!(
        stored[0].state,
        ContainerState::Running,
        "nobody saw the exit yet"
    );
    let c = env.containers().await;
    let r = state_of(&c, &id, ContainerState::Exited).await;
    assert_eq!((r.exit_code, r.reason.as_str()), (3, "Error"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removal_cut_short_is_finished_at_the_next_start() {
    let Some((env, c)) = Env::with_containers().await else {
        return;
    };
    let id = created(&env, &c).await;
    // As a crash after the bundle went to the trash, before its cleanup ran.
    let trash = env.dir.path().join("state/containers-trash");
    std::fs::create_dir_all(&trash).unwrap();
    let rec = c.get(&id).unwrap();
    c.inner.records.remove(&id).unwrap();
    std::fs::rename(&rec.bundle, trash.join(&id)).unwrap();
    let _c = env.containers().await;
    env.assert_nothing_left();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_start_is_recorded_and_killed() {
    let Some((env, c)) = Env::with_containers().await else {
        return;
    };
    let id = created(&env, &c).await;
    env.runtime.shim.fail_start("runc run failed");
    assert!(c.start(&id).await.is_err());
    let r = c.get(&id).unwrap();
    assert_eq!(
        (r.state, r.reason.as_str()),
        (ContainerState::Exited, "StartError")
    );
    assert!(
        env.runtime.shim.tasks().is_empty(),
        "the started process is gone"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removal_after_the_exit_sends_the_shim_no_second_delete() {
    let Some((env, c)) = Env::with_containers().await else {
        return;
    };
    let id = running(&env, &c).await;
    env.runtime.shim.exit(&id, 0);
    state_of(&c, &id, ContainerState::Exited).await;
    c.remove(&id).await.unwrap();
    c.remove_all_of_pod(&env.pod).await.unwrap();
    let deletes = env
        .runtime
        .shim
        .calls()
        .iter()
        .filter(|c| **c == format!("delete {id}"))
        .count();
    assert_eq!(deletes, 1, "{:?}", env.runtime.shim.calls());
    assert!(env.runtime.shim.tasks().is_empty());
    env.assert_nothing_left();
}

/// A start cut by a crustd crash: the shim ran the container, its record still says
/// CREATED. The next start settles it (`recover.rs`).
async fn started_behind_the_record(env: &Env, c: &Containers, id: &str) {
    use crate::shim::CreateTask;
    use crate::task::TaskRuntime;
    let rec = c.get(id).unwrap();
    env.runtime
        .shim
        .create_and_start(&CreateTask {
            id: rec.id.clone(),
            bundle: rec.bundle.clone(),
            rootfs: Vec::new(),
            io: Default::default(),
            runtime: Default::default(),
        })
        .await
        .unwrap();
    env.runtime.shim.drop_client();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_the_shim_finished_before_a_crash_is_running_after_the_restart() {
    let Some(env) = Env::new().await else { return };
    let c = env.containers().await;
    let id = created(&env, &c).await;
    started_behind_the_record(&env, &c, &id).await;
    drop(c);
    let c = env.containers().await;
    let r = c.get(&id).unwrap();
    assert_eq!(r.state, ContainerState::Running, "{r:?}");
    assert!(r.pid > 0 && r.started_at_ns > 0, "{r:?}");
    // Its exit is watched, as for any start.
    env.runtime.shim.exit(&id, 0);
    let r = state_of(&c, &id, ContainerState::Exited).await;
    assert_eq!((r.exit_code, r.reason.as_str()), (0, "Completed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_that_never_reached_the_runtime_stays_created_after_the_restart() {
    let Some(env) = Env::new().await else { return };
    let id = created(&env, &env.containers().await).await;
    let c = env.containers().await;
    assert_eq!(c.get(&id).unwrap().state, ContainerState::Created);
    assert!(env.runtime.shim.tasks().is_empty());
    c.start(&id).await.unwrap();
    assert_eq!(c.get(&id).unwrap().state, ContainerState::Running);
}

//! CheckpointContainer with real CRIU (built by hack/install-deps) and runc:
//! a counting container checkpointed through crictl keeps counting, and the
//! archive holds what CRI-O and containerd put in theirs. Refusals: a
//! container not running, a bad location, an unknown container — and, on a
//! node where CRIU does not work, FailedPrecondition with CRIU's own error.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crust_e2e::cri;
use crust_e2e::workload::*;
use tonic::Code;

/// Counts in /count (replaced by a rename: the archive's copy of the writable
/// layer is taken while the container runs on, so a reader never sees it half
/// written) and logs each tick.
const COUNTER: &str = "i=0; while true; do i=$((i+1)); echo $i > /count.new; mv /count.new /count; echo tick $i; sleep 0.1; done";

async fn checkpoint(rt: &mut Rt, id: &str, location: &str) -> Result<(), tonic::Status> {
    rt.checkpoint_container(cri::CheckpointContainerRequest {
        container_id: id.into(),
        location: location.into(),
        timeout: 0,
    })
    .await
    .map(|_| ())
}

/// The container's count, read in it.
async fn count(rt: &mut Rt, id: &str) -> u64 {
    let out = exec(rt, id, &["cat", "/count"], 10).await.expect("exec");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0)
}

async fn count_reaches(rt: &mut Rt, id: &str, n: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let c = count(rt, id).await;
        if c >= n {
            return c;
        }
        assert!(Instant::now() < deadline, "count stuck at {c}, want {n}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Entries of a tar file, as `tar -t` lists them.
fn tar_list(path: &Path) -> Vec<String> {
    let out = Command::new("tar")
        .arg("-tf")
        .arg(path)
        .output()
        .expect("tar");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim_start_matches("./").to_string())
        .collect()
}

/// One file of a tar file (`tar -xO`).
fn tar_file(path: &Path, name: &str) -> Vec<u8> {
    let out = Command::new("tar")
        .arg("-xOf")
        .arg(path)
        .arg(name)
        .output()
        .expect("tar");
    assert!(
        out.status.success(),
        "{name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Names in `dir` (hidden staging files included).
fn names_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn a_running_container_is_checkpointed_and_keeps_running() {
    let (_registry, crustd, net, image, mut rt, pc, pod) = scene(50, "ckpt").await;
    let out_dir = crustd.dir().join("checkpoints");
    std::fs::create_dir(&out_dir).expect("mkdir");
    let archive = out_dir.join("counter.tar");
    let location = archive.display().to_string();
    let id = create(
        &mut rt,
        &pod,
        &pc,
        container_config("counter", &image, &["/bin/sh", "-c", COUNTER]),
    )
    .await
    .expect("create");

    let e = checkpoint(&mut rt, &id, &location).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("not running"), "{}", e.message());
    let e = checkpoint(&mut rt, &id, "relative.tar").await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    let e = checkpoint(&mut rt, &"f".repeat(64), &location)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");

    start(&mut rt, &id).await;
    count_reaches(&mut rt, &id, 3).await;
    for (bad, why) in [
        (out_dir.join("no/such/dir.tar"), "does not exist"),
        (out_dir.clone(), "is a directory"),
    ] {
        let e = checkpoint(&mut rt, &id, &bad.display().to_string())
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        assert!(e.message().contains(why), "{}", e.message());
    }

    let check = Command::new("criu").arg("check").output();
    match check {
        Ok(o) if o.status.success() => {}
        other => {
            // No working CRIU: refused with CRIU's own word, nothing written.
            let e = checkpoint(&mut rt, &id, &location).await.unwrap_err();
            assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
            match other {
                Err(_) => assert!(e.message().contains("criu is not installed"), "{e:?}"),
                Ok(o) => {
                    let stderr = String::from_utf8_lossy(&o.stderr);
                    let first = stderr.lines().find(|l| l.starts_with("Error"));
                    let first = first.expect("criu error line");
                    assert!(e.message().contains(first), "{} lacks {first}", e.message());
                }
            }
            assert_eq!(names_in(&out_dir), Vec::<String>::new());
            remove_pod(&mut rt, &pod).await;
            return;
        }
    }

    // The real client, as a person would: crictl checkpoint --export. The
    // dumped process has counted at least this far.
    let before = count(&mut rt, &id).await;
    let began = Instant::now();
    let out = Command::new(crust_e2e::crictl::path())
        .args([
            "--runtime-endpoint",
            &format!("unix://{}", crustd.socket.display()),
            "checkpoint",
            &format!("--export={location}"),
            &id,
        ])
        .output()
        .expect("crictl");
    let took = began.elapsed();
    assert!(
        out.status.success(),
        "crictl checkpoint: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("checkpoint took {took:?}");
    assert_eq!(names_in(&out_dir), ["counter.tar"], "no staging left");

    // It keeps running and counting.
    let st = status(&mut rt, &id).await;
    assert_eq!(st.state, cri::ContainerState::ContainerRunning as i32);
    let entries = tar_list(&archive);
    let diff = out_dir.join("rootfs-diff.tar");
    std::fs::write(&diff, tar_file(&archive, "rootfs-diff.tar")).expect("write");
    let at_checkpoint: u64 = String::from_utf8_lossy(
        &Command::new("tar")
            .arg("-xOf")
            .arg(&diff)
            .arg("count")
            .output()
            .expect("tar")
            .stdout,
    )
    .trim()
    .parse()
    .expect("count in rootfs-diff.tar");
    let later = count_reaches(&mut rt, &id, at_checkpoint + 5).await;
    assert!(later > at_checkpoint);

    for want in [
        "checkpoint/pstree.img",
        "checkpoint/inventory.img",
        "config.dump",
        "spec.dump",
        "status.dump",
        "rootfs-diff.tar",
        "deleted.files",
        "dump.log",
        "stats-dump",
        "container.log",
    ] {
        assert!(
            entries.iter().any(|e| e == want),
            "{want} not in {entries:?}"
        );
    }
    assert!(
        entries.iter().any(|e| e.starts_with("checkpoint/pages-")),
        "{entries:?}"
    );
    let config: serde_json::Value =
        serde_json::from_slice(&tar_file(&archive, "config.dump")).expect("config.dump");
    assert_eq!(config["id"], id.as_str());
    assert_eq!(config["name"], "counter");
    assert_eq!(config["rootfsImageName"], image.as_str());
    assert!(
        config["checkpointedTime"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z'))
    );
    let spec: serde_json::Value =
        serde_json::from_slice(&tar_file(&archive, "spec.dump")).expect("spec.dump");
    assert_eq!(spec["process"]["args"][2], COUNTER);
    let status_dump: serde_json::Value =
        serde_json::from_slice(&tar_file(&archive, "status.dump")).expect("status.dump");
    assert_eq!(status_dump["id"], id.as_str());
    let log = String::from_utf8_lossy(&tar_file(&archive, "container.log")).into_owned();
    assert!(log.contains("tick 1"), "{log}");

    // Restored as a new container of another pod (CRI-O's way: the archive
    // as its image, no command): it goes on from the checkpointed count.
    let pc2 = pod_config("ckpt-restored", &net, &crustd.dir().join("logs2"));
    let pod2 = run_pod(&mut rt, &pc2).await;
    let restored = create(
        &mut rt,
        &pod2,
        &pc2,
        container_config("restored", &location, &[]),
    )
    .await
    .expect("create from the checkpoint archive");
    assert_eq!(
        status(&mut rt, &restored).await.state,
        cri::ContainerState::ContainerCreated as i32
    );
    let began = Instant::now();
    start(&mut rt, &restored).await;
    eprintln!("restore took {:?}", began.elapsed());
    let bundle = verbose_info(&mut rt, &restored).await["bundle"]
        .as_str()
        .expect("bundle")
        .to_string();
    assert!(
        !Path::new(&bundle).join("checkpoint").exists(),
        "CRIU images kept after the restore"
    );
    let first = count(&mut rt, &restored).await;
    assert!(
        first >= before,
        "restored at {first}, counted {before} before the checkpoint"
    );
    count_reaches(&mut rt, &restored, first + 5).await;
    let restored_log = crustd_log_of(&mut rt, &restored).await;
    let ticks: Vec<u64> = restored_log
        .lines()
        .filter_map(|l| {
            l.rsplit_once("tick ")
                .and_then(|(_, n)| n.trim().parse().ok())
        })
        .collect();
    assert!(
        ticks
            .first()
            .is_some_and(|t| *t >= before && *t <= at_checkpoint + 1),
        "restored log starts {ticks:?}: counted {before} before the checkpoint, {at_checkpoint} in its layer"
    );
    // The original counts on, on its own.
    assert!(count(&mut rt, &id).await > later);

    // An image path that is no checkpoint archive is refused.
    let e = create(
        &mut rt,
        &pod,
        &pc,
        container_config("bogus", &diff.display().to_string(), &[]),
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");

    remove_pod(&mut rt, &pod2).await;
    remove_pod(&mut rt, &pod).await;
    assert_no_cgroups_left(&net);
}

/// The CRI log of a container, read from the path its status names.
async fn crustd_log_of(rt: &mut Rt, id: &str) -> String {
    let path = status(rt, id).await.log_path;
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[tokio::test]
async fn a_failed_dump_leaves_no_archive_and_the_container_running() {
    if !Command::new("criu")
        .arg("check")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        eprintln!("skipped: criu check fails here (the other test asserts the refusal)");
        return;
    }
    let (_registry, crustd, net, image, mut rt, pc, pod) = scene(51, "ckpt-tcp").await;
    let out_dir = crustd.dir().join("checkpoints");
    std::fs::create_dir(&out_dir).expect("mkdir");
    let location = out_dir.join("tcp.tar").display().to_string();
    // An established TCP connection: CRIU will not dump one unless told to
    // (--tcp-established), which kubelet's checkpoint never asks for.
    let script = format!(
        "httpd -f -p 127.0.0.1:9999 & sleep 0.3; (sleep 1000 | nc 127.0.0.1 9999 >/dev/null) & {COUNTER}"
    );
    let config = container_config("tcp", &image, &["/bin/sh", "-c", &script]);
    let id = create(&mut rt, &pod, &pc, config).await.expect("create");
    start(&mut rt, &id).await;
    count_reaches(&mut rt, &id, 2).await;
    // Wait for the connection: a line in state 01 (ESTABLISHED).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let tcp = exec(&mut rt, &id, &["cat", "/proc/net/tcp"], 10)
            .await
            .expect("exec");
        let text = String::from_utf8_lossy(&tcp.stdout).into_owned();
        if text
            .lines()
            .skip(1)
            .any(|l| l.split_whitespace().nth(3) == Some("01"))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no established connection: {text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let e = checkpoint(&mut rt, &id, &location).await.unwrap_err();
    eprintln!("refused: {}", e.message());
    assert_eq!(e.code(), Code::Internal, "{e:?}");
    assert!(e.message().contains("criu: Error ("), "{}", e.message());
    assert_eq!(names_in(&out_dir), Vec::<String>::new(), "nothing left");
    let before = count(&mut rt, &id).await;
    count_reaches(&mut rt, &id, before + 3).await;
    assert_eq!(
        status(&mut rt, &id).await.state,
        cri::ContainerState::ContainerRunning as i32
    );
    remove_pod(&mut rt, &pod).await;
    assert_no_cgroups_left(&net);
}

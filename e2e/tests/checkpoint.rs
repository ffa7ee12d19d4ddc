//! CheckpointContainer: refused with FailedPrecondition for a container that
//! does not run, and, on a node where CRIU does not work (Debian's criu 3.17
//! fails `criu check` on this kernel), with CRIU's own error.

use std::process::Command;

use crust_e2e::cri;
use crust_e2e::workload::*;
use tonic::Code;

async fn checkpoint(rt: &mut Rt, id: &str, location: &str) -> tonic::Status {
    rt.checkpoint_container(cri::CheckpointContainerRequest {
        container_id: id.into(),
        location: location.into(),
        timeout: 0,
    })
    .await
    .expect_err("no checkpoint here")
}

#[tokio::test]
async fn checkpoint_is_refused_with_the_reason() {
    let (_registry, crustd, _net, image, mut rt, pc, pod) = scene(183, "ckpt").await;
    let archive = crustd.dir().join("ckpt.tar");
    let location = archive.display().to_string();
    let id = create(
        &mut rt,
        &pod,
        &pc,
        container_config("c", &image, &["/bin/sh", "-c", "sleep 1000"]),
    )
    .await
    .expect("create");

    let e = checkpoint(&mut rt, &id, &location).await;
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains("not running"), "{}", e.message());
    assert_eq!(
        checkpoint(&mut rt, &id, "relative.tar").await.code(),
        Code::InvalidArgument
    );
    assert_eq!(
        checkpoint(&mut rt, &"f".repeat(64), &location).await.code(),
        Code::NotFound
    );

    start(&mut rt, &id).await;
    let e = checkpoint(&mut rt, &id, &location).await;
    let check = Command::new("criu").arg("check").output();
    match check {
        Err(_) => {
            assert_eq!(e.code(), Code::FailedPrecondition);
            assert!(
                e.message().contains("criu is not installed"),
                "{}",
                e.message()
            );
        }
        Ok(o) if !o.status.success() => {
            assert_eq!(e.code(), Code::FailedPrecondition);
            // CRIU's own first error line is in the message.
            let stderr = String::from_utf8_lossy(&o.stderr);
            let first = stderr
                .lines()
                .find(|l| l.starts_with("Error"))
                .expect("criu error line");
            assert!(e.message().contains(first), "{} lacks {first}", e.message());
        }
        Ok(_) => assert_eq!(e.code(), Code::Unimplemented, "{}", e.message()),
    }
    assert!(!archive.exists(), "nothing written");
    // The container keeps running.
    assert_eq!(
        status(&mut rt, &id).await.state,
        cri::ContainerState::ContainerRunning as i32
    );
    remove_pod(&mut rt, &pod).await;
}

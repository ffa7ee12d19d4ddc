//! Recursive read-only mounts: the handler says it has them, a submount below
//! an RRO volume is read-only too (with plain `readonly` it is not), and the
//! combinations the CRI API forbids are InvalidArgument.

use std::process::Command;

use crust_e2e::cri;
use crust_e2e::workload::*;

fn volume(host: &std::path::Path, readonly: bool, rro: bool) -> cri::Mount {
    cri::Mount {
        container_path: "/vol".into(),
        host_path: host.display().to_string(),
        readonly,
        recursive_read_only: rro,
        ..Default::default()
    }
}

/// Exit code of `touch <path>` in the container.
async fn touch(rt: &mut Rt, id: &str, path: &str) -> i32 {
    exec(rt, id, &["/bin/sh", "-c", &format!("touch {path}")], 10)
        .await
        .expect("exec")
        .exit_code
}

#[tokio::test]
async fn a_submount_below_a_recursive_read_only_volume_is_read_only() {
    let (_registry, crustd, _net, image, mut rt, pc, pod) = scene(182, "rro").await;
    let status = rt
        .status(cri::StatusRequest { verbose: false })
        .await
        .expect("Status")
        .into_inner();
    let default = status
        .runtime_handlers
        .iter()
        .find(|h| h.name == "runc")
        .or(status.runtime_handlers.first())
        .and_then(|h| h.features)
        .expect("handler features");
    assert!(default.recursive_read_only_mounts);

    // A host volume with a tmpfs mounted inside it (crustd's drop unmounts
    // whatever is left below its temp dir, also when this test fails).
    let host = crustd.dir().join("rro-volume");
    std::fs::create_dir_all(host.join("sub")).expect("mkdir");
    let ok = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(host.join("sub"))
        .status()
        .expect("mount");
    assert!(ok.success());

    let mut rro = container_config("rro", &image, &["/bin/sh", "-c", "sleep 1000"]);
    rro.mounts = vec![volume(&host, true, true)];
    let mut ro = container_config("ro", &image, &["/bin/sh", "-c", "sleep 1000"]);
    ro.mounts = vec![volume(&host, true, false)];
    let rro = create(&mut rt, &pod, &pc, rro).await.expect("create rro");
    let ro = create(&mut rt, &pod, &pc, ro).await.expect("create ro");
    start(&mut rt, &rro).await;
    start(&mut rt, &ro).await;

    // Both: the volume itself is read-only.
    assert_ne!(touch(&mut rt, &rro, "/vol/a").await, 0);
    assert_ne!(touch(&mut rt, &ro, "/vol/a").await, 0);
    // Plain readonly leaves the submount writable; RRO does not.
    assert_eq!(touch(&mut rt, &ro, "/vol/sub/from-ro").await, 0);
    assert!(host.join("sub/from-ro").exists());
    assert_ne!(touch(&mut rt, &rro, "/vol/sub/from-rro").await, 0);
    assert!(!host.join("sub/from-rro").exists());
    let out = exec(
        &mut rt,
        &rro,
        &["/bin/sh", "-c", "grep ' /vol/sub ' /proc/mounts"],
        10,
    )
    .await
    .expect("exec");
    let line = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(line.contains(" ro,") || line.contains(" ro "), "{line}");

    // What the API forbids.
    for (readonly, propagation, why) in [
        (
            false,
            cri::MountPropagation::PropagationPrivate,
            "without readonly",
        ),
        (
            true,
            cri::MountPropagation::PropagationHostToContainer,
            "with rslave",
        ),
        (
            true,
            cri::MountPropagation::PropagationBidirectional,
            "with rshared",
        ),
    ] {
        let mut c = container_config("bad", &image, &["/bin/sh", "-c", "sleep 1000"]);
        let mut m = volume(&host, readonly, true);
        m.propagation = propagation as i32;
        c.mounts = vec![m];
        let err = create(&mut rt, &pod, &pc, c).await.expect_err(why);
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{why}");
        assert!(
            err.message().contains("recursive_read_only"),
            "{why}: {}",
            err.message()
        );
    }

    remove_pod(&mut rt, &pod).await;
    let _ = Command::new("umount").arg(host.join("sub")).status();
}

//! Image volumes (CRI `Mount.image`, KEP-4639): `crust/data` (two layers of data made
//! by `hack/fixtures` with GNU tar) mounted into two containers of a pod, read-only,
//! noexec, one mount shared by both and gone with the last; an absent image and a
//! writable request refused; the image's layers kept while a container uses them, also
//! after RemoveImage; a crustd SIGKILL in between leaks nothing.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crust_e2e::registry::fixtures;
use crust_e2e::workload::*;
use crust_e2e::{Crustd, cri, crictl};

/// An image volume as kubelet sends it: the `image_ref` PullImage answered, read-only.
fn volume(container_path: &str, image: &str) -> cri::Mount {
    cri::Mount {
        container_path: container_path.into(),
        readonly: true,
        image: Some(cri::ImageSpec {
            image: image.into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn with_volume(name: &str, busybox: &str, mount: cri::Mount) -> cri::ContainerConfig {
    let mut c = container_config(name, busybox, &["/bin/sh", "-c", "sleep 1000"]);
    c.mounts = vec![mount];
    c
}

/// The files of `crust/data` and their contents, as hack/fixtures wrote them.
fn data_files() -> Vec<(String, String)> {
    let files = fixtures()["images"]["crust/data:latest"]["files"].clone();
    let files = files
        .as_object()
        .expect("crust/data files in images.json (hack/fixtures)");
    files
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().expect("content").to_string()))
        .collect()
}

/// Mount points below crustd's image volume directory, from the host's mountinfo.
fn volume_mounts(crustd: &Crustd) -> Vec<PathBuf> {
    let dir = crustd.state_dir.join("image-volumes");
    std::fs::read_to_string("/proc/self/mountinfo")
        .expect("mountinfo")
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(PathBuf::from))
        .filter(|p| p.starts_with(&dir))
        .collect()
}

/// Entries left in `dir` (none when it is gone).
fn entries(dir: &Path) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

async fn sh(rt: &mut Rt, id: &str, script: &str) -> cri::ExecSyncResponse {
    exec(rt, id, &["/bin/sh", "-c", script], 10)
        .await
        .expect("exec")
}

/// `crictl inspect` of the container: its state as the real client shows it.
fn crictl_state(crustd: &Crustd, id: &str) -> String {
    let config = crictl::config(&crustd.socket).expect("crictl config");
    let out = Command::new(crictl::path())
        .arg("--config")
        .arg(&config)
        .args(["inspect", id])
        .output()
        .expect("crictl");
    assert!(out.status.success(), "crictl inspect: {out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("crictl json");
    v["status"]["state"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Lower dirs of an image, from verbose ImageStatus.
async fn lower_dirs(crustd: &Crustd, image: &str) -> Vec<PathBuf> {
    let st = crustd
        .images()
        .await
        .expect("image client")
        .image_status(cri::ImageStatusRequest {
            image: Some(cri::ImageSpec {
                image: image.into(),
                ..Default::default()
            }),
            verbose: true,
        })
        .await
        .expect("ImageStatus")
        .into_inner();
    let info: serde_json::Value =
        serde_json::from_str(st.info.get("info").expect("verbose info")).expect("json");
    info["lowerDirs"]
        .as_array()
        .expect("lowerDirs")
        .iter()
        .filter_map(|v| v.as_str().map(PathBuf::from))
        .collect()
}

/// CreateContainer of `config`, which must succeed.
async fn create_with(
    rt: &mut Rt,
    pod: &str,
    pc: &cri::PodSandboxConfig,
    config: cri::ContainerConfig,
) -> String {
    create(rt, pod, pc, config).await.expect("CreateContainer")
}

/// CreateContainer of `config` fails with `code`, its message naming `names`.
async fn refused(
    rt: &mut Rt,
    pod: &str,
    pc: &cri::PodSandboxConfig,
    config: cri::ContainerConfig,
    code: tonic::Code,
    names: &str,
) {
    let err = create(rt, pod, pc, config).await.expect_err("refused");
    assert_eq!(err.code(), code, "{err:?}");
    assert!(err.message().contains(names), "{}", err.message());
}

async fn remove(rt: &mut Rt, id: &str) {
    rt.remove_container(cri::RemoveContainerRequest {
        container_id: id.into(),
    })
    .await
    .expect("RemoveContainer");
}

async fn remove_image(crustd: &Crustd, image: &str) {
    crustd
        .images()
        .await
        .expect("image client")
        .remove_image(cri::RemoveImageRequest {
            image: Some(cri::ImageSpec {
                image: image.into(),
                ..Default::default()
            }),
        })
        .await
        .expect("RemoveImage");
}

#[tokio::test]
async fn an_image_volume_is_shared_read_only_noexec_and_released_with_its_last_user() {
    let (registry, crustd, _net, busybox, mut rt, pc, pod) = scene(45, "imgvol").await;
    let data = pull(&crustd, &registry.image("crust/data:latest")).await;
    let layers = lower_dirs(&crustd, &data).await;
    assert_eq!(layers.len(), 2, "crust/data has two layers");

    // CreateContainer's cost, for the record: a plain one, the one that mounts the
    // volume, the one that shares it.
    let t = std::time::Instant::now();
    let plain = create_sleeper(&mut rt, &pod, &pc, &busybox).await;
    let t_plain = t.elapsed();
    let t = std::time::Instant::now();
    let a = with_volume("a", &busybox, volume("/data", &data));
    let a = create_with(&mut rt, &pod, &pc, a).await;
    let t_a = t.elapsed();
    // The same image by name in the second container: one volume.
    let by_name = registry.image("crust/data:latest");
    let t = std::time::Instant::now();
    let b = with_volume("b", &busybox, volume("/vol", &by_name));
    let b = create_with(&mut rt, &pod, &pc, b).await;
    eprintln!(
        "CreateContainer: plain {t_plain:?}, mounting the volume {t_a:?}, sharing it {:?}",
        t.elapsed()
    );
    remove(&mut rt, &plain).await;
    start(&mut rt, &a).await;
    start(&mut rt, &b).await;
    assert_eq!(crictl_state(&crustd, &a), "CONTAINER_RUNNING");
    assert_eq!(crictl_state(&crustd, &b), "CONTAINER_RUNNING");
    let mounts = volume_mounts(&crustd);
    assert_eq!(mounts.len(), 1, "one mount for both containers: {mounts:?}");

    // Every file, both layers, through both containers.
    for (id, dir) in [(&a, "/data"), (&b, "/vol")] {
        for (file, content) in data_files() {
            let out = sh(&mut rt, id, &format!("cat {dir}/{file}")).await;
            assert_eq!(out.exit_code, 0, "{dir}/{file}: {out:?}");
            assert_eq!(
                String::from_utf8_lossy(&out.stdout),
                content,
                "{dir}/{file}"
            );
        }
        let out = sh(&mut rt, id, &format!("ls {dir}/dir")).await;
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "more.txt\nnested.txt\nsub\n"
        );
        // Writes are refused by the kernel (EROFS), executables do not run (noexec).
        let out = sh(&mut rt, id, &format!("echo x > {dir}/greeting.txt")).await;
        assert_ne!(out.exit_code, 0);
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("Read-only file system"),
            "{out:?}"
        );
        let out = sh(&mut rt, id, &format!("mkdir {dir}/new")).await;
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("Read-only file system"),
            "{out:?}"
        );
        let out = sh(&mut rt, id, &format!("{dir}/bin/tool")).await;
        assert_ne!(out.exit_code, 0, "noexec: {out:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
            "{out:?}"
        );
        let out = sh(&mut rt, id, &format!("grep ' {dir} ' /proc/mounts")).await;
        let line = String::from_utf8_lossy(&out.stdout).to_string();
        let opts: Vec<&str> = line.split(' ').nth(3).unwrap_or("").split(',').collect();
        for o in ["ro", "nosuid", "nodev", "noexec"] {
            assert!(opts.contains(&o), "{o} missing: {line}");
        }
    }
    // The host's view is read-only as well.
    let err = std::fs::write(mounts[0].join("greeting.txt"), b"x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(nix::errno::Errno::EROFS as i32));

    // An absent image: NotFound naming it, and nothing made.
    let absent = registry.image("crust/data:absent");
    let c = with_volume("c", &busybox, volume("/data", &absent));
    refused(
        &mut rt,
        &pod,
        &pc,
        c,
        tonic::Code::NotFound,
        "crust/data:absent",
    )
    .await;
    // A writable image volume: InvalidArgument, as containerd refuses it.
    let mut rw = volume("/data", &data);
    rw.readonly = false;
    let d = with_volume("d", &busybox, rw);
    let code = tonic::Code::InvalidArgument;
    refused(&mut rt, &pod, &pc, d, code, "mounts[0].readonly").await;
    let listed = rt
        .list_containers(cri::ListContainersRequest::default())
        .await
        .expect("list")
        .into_inner()
        .containers;
    assert_eq!(listed.len(), 2, "the refused creates left no container");
    assert_eq!(volume_mounts(&crustd), mounts);
    assert_eq!(entries(&crustd.state_dir.join("containers")), 2);

    // RemoveImage while containers use it: the image goes (as with containerd), its
    // layers stay and the volume keeps working.
    remove_image(&crustd, &data).await;
    let e = with_volume("e", &busybox, volume("/data", &data));
    refused(&mut rt, &pod, &pc, e, tonic::Code::NotFound, &data).await;
    assert!(
        layers.iter().all(|l| l.exists()),
        "layers kept for the volume"
    );
    let out = sh(&mut rt, &b, "cat /vol/dir/more.txt").await;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "second layer\n");

    // The first removal keeps the shared mount, the last one takes it (in the removal's
    // background cleanup, which has released the volume once the bundle left the trash).
    let trash = crustd.state_dir.join("containers-trash");
    remove(&mut rt, &a).await;
    wait_for("a's cleanup", Duration::from_secs(10), || {
        entries(&trash) == 0
    })
    .await;
    assert_eq!(volume_mounts(&crustd), mounts);
    let out = sh(&mut rt, &b, "cat /vol/greeting.txt").await;
    assert_eq!(out.exit_code, 0, "{out:?}");
    remove(&mut rt, &b).await;
    wait_for("b's cleanup", Duration::from_secs(10), || {
        entries(&trash) == 0
    })
    .await;
    assert!(volume_mounts(&crustd).is_empty());
    assert_eq!(entries(&crustd.state_dir.join("image-volumes")), 0);
    remove_pod(&mut rt, &pod).await;
}

#[tokio::test]
async fn image_volumes_survive_a_crustd_kill_and_leave_nothing_behind() {
    let (registry, mut crustd, _net, busybox, mut rt, pc, pod) = scene(46, "imgvol-kill").await;
    let data = pull(&crustd, &registry.image("crust/data:latest")).await;
    let layers = lower_dirs(&crustd, &data).await;
    let a = with_volume("a", &busybox, volume("/data", &data));
    let a = create_with(&mut rt, &pod, &pc, a).await;
    start(&mut rt, &a).await;
    let mounts = volume_mounts(&crustd);
    assert_eq!(mounts.len(), 1);

    crustd.crash().await.expect("SIGKILL crustd");
    crustd.restart().await.expect("restart");
    let mut rt = crustd.runtime().await.expect("client");
    // The running container keeps its volume; a new one shares it.
    let out = sh(&mut rt, &a, "cat /data/greeting.txt").await;
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello from an image volume\n"
    );
    let b = with_volume("b", &busybox, volume("/d", &data));
    let b = create_with(&mut rt, &pod, &pc, b).await;
    start(&mut rt, &b).await;
    assert_eq!(volume_mounts(&crustd), mounts, "still one mount");
    let out = sh(&mut rt, &b, "cat /d/dir/sub/deeper.txt").await;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "two levels down\n");

    // Removed image, then the pod with both containers: the volume goes with them, and
    // after the next gc (crustd's start) the image's layers too — the hold was released.
    remove_image(&crustd, &data).await;
    assert!(
        layers.iter().all(|l| l.exists()),
        "layers kept for the volume"
    );
    remove_pod(&mut rt, &pod).await;
    assert!(volume_mounts(&crustd).is_empty());
    assert!(!crustd.state_dir.join("image-volumes").join(&pod).exists());
    assert_eq!(entries(&crustd.state_dir.join("image-volumes")), 0);
    crustd.restart().await.expect("restart");
    assert!(
        layers.iter().all(|l| !l.exists()),
        "layers collected: {layers:?}"
    );
}

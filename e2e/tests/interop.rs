//! The interop corpus (`crust/interop:*`, docs/fixtures.md): crust/busybox with
//! one more layer holding the same small tree, written by another tool — umoci,
//! GNU tar, bsdtar, Python's tarfile, Go's archive/tar in odd shapes. Each image
//! is pulled through crust, a container is created from it, and the container's
//! rootfs (crust's overlay view, compared before the container starts, so
//! before runc adds mount points) must equal, entry by entry, the reference
//! unpack hack/fixtures made of the same image (`umoci unpack`, or GNU tar where
//! umoci cannot). Then the container runs the image's busybox to cat a corpus
//! file. The images of one tool share a test, a crustd and a pod; the first of
//! each is pulled with crictl, the others with PullImage. A test reports every
//! image that fails, each failure naming the image, the entry and the field.
//!
//! The references are umoci's; `references_are_what_containerd_unpacks` checks
//! them against Debian's containerd, whose applier is the rule crust follows.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crust_e2e::registry::{Registry, fixtures};
use crust_e2e::tree::{Tree, compare};
use crust_e2e::workload::{self, Rt};
use crust_e2e::{Crustd, require_root};
use crust_e2e::{cri, unmount_below};
use serde_json::Value;

/// What each container prints: the content of /corpus/hello.
const HELLO: &str = "hello from the interop corpus";

/// The tools, by the prefix of their images' tags.
const TOOLS: [&str; 5] = ["umoci-", "gnutar-", "bsdtar-", "python-", "go-"];

/// The interop images of images.json whose tag starts with `prefix`, sorted.
fn corpus(prefix: &str) -> Vec<(String, Value)> {
    let f = fixtures();
    let mut out: Vec<(String, Value)> = f["images"]
        .as_object()
        .expect("images.json: images")
        .iter()
        .filter_map(|(k, v)| k.strip_prefix("crust/interop:").map(|t| (t, v)))
        .filter(|(t, _)| t.starts_with(prefix))
        .map(|(t, v)| (t.to_string(), v.clone()))
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// `../shared/bin/crictl` from the project root.
fn crictl(crustd: &Crustd) -> Command {
    let bin = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/bin/crictl");
    // An empty config, so crictl does not look for /etc/crictl.yaml.
    let config = crustd.dir().join("crictl.yaml");
    std::fs::write(&config, "").expect("crictl config");
    let endpoint = format!("unix://{}", crustd.socket.display());
    let mut c = Command::new(bin);
    c.arg("--config")
        .arg(&config)
        .args([
            "--runtime-endpoint",
            &endpoint,
            "--image-endpoint",
            &endpoint,
        ])
        .args(["--timeout", "10s"]);
    c
}

/// The id ImageStatus gives for `image`, if crust has it.
async fn image_id(crustd: &Crustd, image: &str) -> Result<Option<String>, String> {
    let mut c = crustd.images().await.map_err(|e| e.to_string())?;
    let st = c
        .image_status(cri::ImageStatusRequest {
            image: Some(cri::ImageSpec {
                image: image.into(),
                ..Default::default()
            }),
            verbose: false,
        })
        .await
        .map_err(|e| format!("ImageStatus: {e}"))?;
    Ok(st.into_inner().image.map(|i| i.id))
}

async fn pull(crustd: &Crustd, image: &str, with_crictl: bool) -> Result<String, String> {
    let mut c = crustd.images().await.map_err(|e| e.to_string())?;
    if with_crictl {
        let out = crictl(crustd)
            .args(["pull", "--pull-timeout", "120s", image])
            .output()
            .map_err(|e| format!("crictl: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "crictl pull: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        return image_id(crustd, image)
            .await?
            .ok_or_else(|| "crictl pull succeeded but ImageStatus finds no image".into());
    }
    c.pull_image(cri::PullImageRequest {
        image: Some(cri::ImageSpec {
            image: image.into(),
            ..Default::default()
        }),
        ..Default::default()
    })
    .await
    .map(|r| r.into_inner().image_ref)
    .map_err(|e| format!("PullImage: {:?}: {}", e.code(), e.message()))
}

/// Pulls, compares and runs one image; the first problem found. An image
/// containerd refuses (`interop.containerd_refuses`) may be refused, as
/// DataLoss; if crust pulls it, it must match the reference all the same.
async fn check(
    crustd: &Crustd,
    rt: &mut Rt,
    pod: (&str, &cri::PodSandboxConfig),
    image: &str,
    tag: &str,
    fx: &Value,
    with_crictl: bool,
) -> Result<(), String> {
    let refusable = fx["interop"]["containerd_refuses"].as_bool() == Some(true);
    let id = match pull(crustd, image, with_crictl).await {
        Ok(id) => id,
        Err(e) if refusable && e.contains("DataLoss") => {
            eprintln!("{image}: refused, as containerd refuses it: {e}");
            return match image_id(crustd, image).await? {
                None => Ok(()),
                Some(id) => Err(format!("refused, yet ImageStatus finds {id}")),
            };
        }
        Err(e) => return Err(e),
    };
    if fx["config_digest"].as_str() != Some(id.as_str()) {
        return Err(format!(
            "pulled image id {id}, images.json has {}",
            fx["config_digest"]
        ));
    }
    let reference = PathBuf::from(
        fx["interop"]["reference_rootfs"]
            .as_str()
            .ok_or("images.json: no interop.reference_rootfs")?,
    );
    let name = tag.replace('.', "-");
    let config = workload::container_config(&name, image, &["/bin/sh", "-c", "cat /corpus/hello"]);
    let cid = workload::create(rt, pod.0, pod.1, config)
        .await
        .map_err(|e| format!("CreateContainer: {:?}: {}", e.code(), e.message()))?;

    let rootfs = crustd
        .state_dir
        .join("containers")
        .join(&cid)
        .join("rootfs");
    let want = Tree::scan(&reference).map_err(|e| format!("reference {e:#}"))?;
    if !want.entries.contains_key(Path::new("corpus/hello")) {
        return Err(format!("reference {} has no corpus", reference.display()));
    }
    let got = Tree::scan(&rootfs).map_err(|e| format!("container rootfs {e:#}"))?;
    let differences = compare(&want, &got);
    if !differences.is_empty() {
        let shown: Vec<String> = differences.iter().take(40).map(|d| d.to_string()).collect();
        return Err(format!(
            "the container's rootfs differs from the reference ({}) in {} fields:\n    {}",
            fx["interop"]["reference"].as_str().unwrap_or("?"),
            differences.len(),
            shown.join("\n    ")
        ));
    }

    rt.start_container(cri::StartContainerRequest {
        container_id: cid.clone(),
    })
    .await
    .map_err(|e| format!("StartContainer: {:?}: {}", e.code(), e.message()))?;
    let s = workload::wait_exited(rt, &cid, Duration::from_secs(30)).await;
    let out: Vec<String> = workload::log_lines(Path::new(&s.log_path))
        .into_iter()
        .map(|(_, _, text)| text)
        .collect();
    if s.exit_code != 0 || out != [HELLO] {
        return Err(format!(
            "`cat /corpus/hello` exited {} printing {out:?}",
            s.exit_code
        ));
    }
    rt.remove_container(cri::RemoveContainerRequest { container_id: cid })
        .await
        .map_err(|e| format!("RemoveContainer: {e}"))?;
    Ok(())
}

/// Every image of one tool (tags starting with `prefix`), in one crustd and
/// pod whose network is number `n`.
async fn check_tool(n: u8, prefix: &str) {
    require_root();
    let images = corpus(prefix);
    assert!(
        !images.is_empty(),
        "no crust/interop:{prefix}* in images.json: run hack/fixtures"
    );
    let (registry, crustd, net) = workload::setup(n).await;
    let mut rt = crustd.runtime().await.expect("client");
    let pc = workload::pod_config(
        &format!("interop-{}", prefix.trim_end_matches('-')),
        &net,
        &crustd.dir().join("logs"),
    );
    let pod = workload::run_pod(&mut rt, &pc).await;
    let mut failures = Vec::new();
    for (i, (tag, fx)) in images.iter().enumerate() {
        let image = registry.image(&format!("crust/interop:{tag}"));
        let r = check(&crustd, &mut rt, (&pod, &pc), &image, tag, fx, i == 0).await;
        match r {
            Ok(()) => eprintln!("crust/interop:{tag}: ok"),
            Err(e) => {
                eprintln!("crust/interop:{tag}: FAILED: {e}");
                failures.push(format!(
                    "crust/interop:{tag} ({}): {e}",
                    fx["interop"]["made_by"]
                ));
            }
        }
    }
    workload::remove_pod(&mut rt, &pod).await;
    assert!(
        failures.is_empty(),
        "{} of {} images of {prefix}* failed:\n{}",
        failures.len(),
        images.len(),
        failures.join("\n")
    );
}

#[test]
fn every_interop_image_belongs_to_a_tool_test() {
    let all = corpus("");
    assert!(
        all.len() >= 20,
        "{} interop images in images.json",
        all.len()
    );
    for (tag, _) in &all {
        assert!(
            TOOLS.iter().any(|p| tag.starts_with(p)),
            "crust/interop:{tag} is checked by no test here"
        );
    }
}

#[tokio::test]
async fn umoci_layers_match_their_reference_unpack() {
    check_tool(241, TOOLS[0]).await;
}

#[tokio::test]
async fn gnu_tar_layers_match_their_reference_unpack() {
    check_tool(242, TOOLS[1]).await;
}

#[tokio::test]
async fn bsdtar_layers_match_their_reference_unpack() {
    check_tool(243, TOOLS[2]).await;
}

#[tokio::test]
async fn python_tarfile_layers_match_their_reference_unpack() {
    check_tool(244, TOOLS[3]).await;
}

#[tokio::test]
async fn go_archive_tar_shapes_match_their_reference_unpack() {
    check_tool(245, TOOLS[4]).await;
}

const CONTAINERD: &str = "/usr/bin/containerd";

/// A private containerd (hack/lib/containerd.sh writes its config: every path
/// under one temp dir), stopped by PID when dropped.
struct Containerd {
    child: Child,
    dir: tempfile::TempDir,
}

impl Containerd {
    fn start(registry: &str) -> Containerd {
        let dir = tempfile::Builder::new()
            .prefix("crust-e2e-containerd-")
            .tempdir()
            .expect("temp dir");
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let cni = dir.path().join("cni");
        std::fs::create_dir_all(&cni).expect("cni dir");
        let written = Command::new("bash")
            .args([
                "-c",
                "source \"$1/hack/lib/registry.sh\" && source \"$1/hack/lib/containerd.sh\" \
                 && containerd_write_config \"$2\" \"$3\" \"$4\" 0",
                "-",
            ])
            .arg(&root)
            .arg(dir.path())
            .arg(registry)
            .arg(&cni)
            .status()
            .expect("bash");
        assert!(written.success(), "containerd_write_config failed");
        let log = std::fs::File::create(dir.path().join("containerd.log")).expect("log");
        let child = Command::new(CONTAINERD)
            .arg("--config")
            .arg(dir.path().join("config.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start containerd");
        let c = Containerd { child, dir };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !c.dir.path().join("containerd.sock").exists() {
            assert!(
                Instant::now() < deadline,
                "containerd did not start:\n{}",
                std::fs::read_to_string(c.dir.path().join("containerd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        c
    }

    /// `ctr` in a namespace of its own; Err with its stderr when it fails.
    fn ctr(&self, args: &[&str]) -> Result<(), String> {
        let out = Command::new("ctr")
            .arg("--address")
            .arg(self.dir.path().join("containerd.sock"))
            .args(["--namespace", "crust-interop"])
            .args(args)
            .output()
            .map_err(|e| format!("ctr: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        unmount_below(self.dir.path());
    }
}

/// Each reference equals what containerd makes of the image: ctr pulls it
/// into containerd's overlayfs snapshotter and mounts it. containerd 1.6
/// refuses the old GNU sparse type 'S' ("unhandled tar header type 83"); the
/// images marked `containerd_refuses` in images.json must be refused, the
/// others must match.
#[test]
fn references_are_what_containerd_unpacks() {
    require_root();
    if !Path::new(CONTAINERD).exists() {
        eprintln!("{CONTAINERD} is missing (hack/install-deps installs it): skipped");
        return;
    }
    let images = corpus("");
    assert!(
        !images.is_empty(),
        "no crust/interop images: run hack/fixtures"
    );
    let registry = Registry::start(None).expect("registry");
    let containerd = Containerd::start(&registry.addr);
    let mut failures = Vec::new();
    for (tag, fx) in &images {
        let image = registry.image(&format!("crust/interop:{tag}"));
        let refuses = fx["interop"]["containerd_refuses"].as_bool() == Some(true);
        match (
            containerd.ctr(&["images", "pull", "--plain-http", &image]),
            refuses,
        ) {
            (Ok(()), true) => failures.push(format!("{tag}: containerd pulled it")),
            (Err(e), false) => failures.push(format!("{tag}: containerd: {e}")),
            (Err(_), true) => {}
            (Ok(()), false) => {
                let target = containerd.dir.path().join(format!("mnt-{tag}"));
                std::fs::create_dir_all(&target).expect("mount point");
                let t = target.to_str().expect("utf-8 path");
                if let Err(e) = containerd.ctr(&["images", "mount", &image, t]) {
                    failures.push(format!("{tag}: ctr images mount: {e}"));
                    continue;
                }
                let reference = Path::new(
                    fx["interop"]["reference_rootfs"]
                        .as_str()
                        .expect("images.json: interop.reference_rootfs"),
                );
                let d = compare(
                    &Tree::scan(reference).expect("scan the reference"),
                    &Tree::scan(&target).expect("scan containerd's view"),
                );
                if !d.is_empty() {
                    let shown: Vec<String> = d.iter().take(20).map(|d| d.to_string()).collect();
                    failures.push(format!("{tag}: containerd's unpack differs from the reference (got = containerd):\n    {}", shown.join("\n    ")));
                }
                containerd
                    .ctr(&["images", "unmount", t])
                    .expect("ctr images unmount");
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

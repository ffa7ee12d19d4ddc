//! Image volumes against a fake image store at the `ImageVolumeSource` seam: its
//! "layers" are a directory per image, bind-mounted. Mounting needs root (as the e2e
//! tests run); without it the tests say so and check nothing.

use std::collections::HashMap;

use k8s_cri::v1::{ImageSpec, Mount as CriMount};

use super::*;

/// Images by reference and id; holds by key → image id; every call recorded.
struct FakeSource {
    layers: PathBuf,
    images: HashMap<String, String>,
    holds: Mutex<HashMap<String, String>>,
    calls: Mutex<Vec<String>>,
    fail_mount: bool,
}

impl FakeSource {
    fn new(layers: &Path) -> Self {
        let mut images = HashMap::new();
        for (reference, id) in [
            ("data:1", "sha256:aaaa"),
            ("sha256:aaaa", "sha256:aaaa"),
            ("other:1", "sha256:bbbb"),
        ] {
            images.insert(reference.to_string(), id.to_string());
            let dir = layers.join(id.trim_start_matches("sha256:"));
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("file"), id).unwrap();
        }
        FakeSource {
            layers: layers.to_path_buf(),
            images,
            holds: Mutex::default(),
            calls: Mutex::default(),
            fail_mount: false,
        }
    }

    fn holds(&self) -> HashMap<String, String> {
        self.holds.lock().unwrap().clone()
    }

    fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }

    fn bind(&self, image_id: &str, target: &Path) -> Result<()> {
        let src = self.layers.join(image_id.trim_start_matches("sha256:"));
        let c = |p: &Path| CString::new(p.as_os_str().as_bytes()).unwrap();
        let (src, dst) = (c(&src), c(target));
        // SAFETY: valid NUL-terminated paths.
        let r = unsafe {
            libc::mount(
                src.as_ptr(),
                dst.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND,
                std::ptr::null(),
            )
        };
        if r != 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        Ok(())
    }
}

impl ImageVolumeSource for FakeSource {
    fn resolve(&self, reference: &str) -> Result<Option<String>> {
        self.calls
            .lock()
            .unwrap()
            .push(format!("resolve {reference}"));
        Ok(self.images.get(reference).cloned())
    }

    fn mount(&self, key: &str, image_id: &str, target: &Path) -> Result<()> {
        self.calls.lock().unwrap().push(format!("mount {key}"));
        self.holds
            .lock()
            .unwrap()
            .insert(key.to_string(), image_id.to_string());
        if self.fail_mount {
            return Err(Error::Internal("mount refused".into()));
        }
        self.bind(image_id, target)
    }

    fn remount(&self, key: &str, target: &Path) -> Result<()> {
        self.calls.lock().unwrap().push(format!("remount {key}"));
        let id = self.holds.lock().unwrap().get(key).cloned();
        let id = id.ok_or_else(|| Error::NotFound(format!("hold {key}")))?;
        self.bind(&id, target)
    }

    fn release(&self, key: &str) -> Result<()> {
        self.calls.lock().unwrap().push(format!("release {key}"));
        self.holds.lock().unwrap().remove(key);
        Ok(())
    }

    fn keys(&self) -> Result<Vec<String>> {
        Ok(self.holds.lock().unwrap().keys().cloned().collect())
    }
}

struct Setup {
    _dir: tempfile::TempDir,
    state: PathBuf,
    db: Arc<StateDb>,
    source: Arc<FakeSource>,
}

/// None when mounts cannot be made here (not root).
fn setup(fail_mount: bool) -> Option<Setup> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("not root: image volume mounts not checked here (the e2e tests do)");
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let db = Arc::new(StateDb::open(&dir.path().join("s.redb")).unwrap());
    let mut source = FakeSource::new(&dir.path().join("layers"));
    source.fail_mount = fail_mount;
    Some(Setup {
        state,
        db,
        source: Arc::new(source),
        _dir: dir,
    })
}

impl Setup {
    fn volumes(&self) -> ImageVolumes {
        let source: Arc<dyn ImageVolumeSource> = self.source.clone();
        ImageVolumes::new(&self.state, self.db.clone(), Some(source))
    }

    fn target(&self, key: &str) -> PathBuf {
        self.state.join("image-volumes").join(key)
    }
}

fn config(images: &[(&str, &str)]) -> ContainerConfig {
    ContainerConfig {
        mounts: images
            .iter()
            .map(|(path, image)| CriMount {
                container_path: path.to_string(),
                readonly: true,
                image: Some(ImageSpec {
                    image: image.to_string(),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

fn mounted(p: &Path) -> bool {
    is_mount_point(p).unwrap()
}

#[test]
fn containers_of_a_pod_share_one_read_only_mount_released_by_the_last() {
    let Some(s) = setup(false) else { return };
    let v = s.volumes();
    let target = s.target("pod1/aaaa");

    // By reference and by id: the same image, one volume, host paths set for the spec.
    let a = v
        .attach("c1", "pod1", &config(&[("/d", "data:1")]))
        .unwrap();
    let a = a.expect("a spec config");
    assert_eq!(a.mounts[0].host_path, target.display().to_string());
    let b = v
        .attach("c2", "pod1", &config(&[("/x", "sha256:aaaa")]))
        .unwrap();
    assert_eq!(
        b.expect("config").mounts[0].host_path,
        a.mounts[0].host_path
    );
    assert_eq!(
        s.source
            .calls()
            .iter()
            .filter(|c| c.starts_with("mount"))
            .count(),
        1,
        "mounted once: {:?}",
        s.source.calls()
    );
    assert!(mounted(&target));
    assert_eq!(std::fs::read(target.join("file")).unwrap(), b"sha256:aaaa");
    let err = std::fs::write(target.join("new"), b"x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS));
    let info = crate::mountinfo::read().unwrap();
    let line = info
        .lines()
        .find(|l| crate::mountinfo::mount_point(l).as_deref() == Some(target.as_path()))
        .unwrap();
    let opts = line.split(' ').nth(5).unwrap();
    for o in ["ro", "nosuid", "nodev", "noexec"] {
        assert!(opts.split(',').any(|x| x == o), "{o} missing in {opts}");
    }

    // Another pod gets its own volume of the same image.
    v.attach("c3", "pod2", &config(&[("/d", "data:1")]))
        .unwrap();
    assert!(mounted(&s.target("pod2/aaaa")));

    v.detach("c1").unwrap();
    assert!(mounted(&target), "c2 still uses it");
    v.detach("c2").unwrap();
    v.detach("c2").unwrap();
    assert!(!mounted(&target));
    assert!(!s.state.join("image-volumes/pod1").exists());
    assert_eq!(s.source.holds().keys().collect::<Vec<_>>(), ["pod2/aaaa"]);
    v.detach("c3").unwrap();
    assert!(s.source.holds().is_empty());
    assert!(v.all().unwrap().is_empty());
    assert_eq!(
        std::fs::read_dir(s.state.join("image-volumes"))
            .unwrap()
            .count(),
        0
    );
}

#[test]
fn an_absent_image_is_not_found_and_nothing_is_made() {
    let Some(s) = setup(false) else { return };
    let v = s.volumes();
    let err = v
        .attach("c1", "pod1", &config(&[("/d", "data:1"), ("/e", "gone:1")]))
        .unwrap_err();
    assert!(matches!(&err, Error::NotFound(m) if m.contains("\"gone:1\"") && m.contains("/e")));
    assert!(s.source.holds().is_empty());
    assert!(!s.state.join("image-volumes").exists());
    assert!(v.all().unwrap().is_empty());
    // No image mount: nothing to do, even without a source.
    let none = ImageVolumes::new(&s.state, s.db.clone(), None);
    assert!(
        none.attach("c1", "p", &ContainerConfig::default())
            .unwrap()
            .is_none()
    );
    assert!(matches!(
        none.attach("c1", "p", &config(&[("/d", "data:1")])),
        Err(Error::FailedPrecondition(_))
    ));
}

#[test]
fn a_failed_mount_undoes_the_whole_attach() {
    let Some(s) = setup(true) else { return };
    let v = s.volumes();
    assert!(
        v.attach("c1", "pod1", &config(&[("/d", "data:1")]))
            .is_err()
    );
    assert!(s.source.holds().is_empty(), "the hold is released");
    assert!(!s.target("pod1/aaaa").exists());
    assert!(v.all().unwrap().is_empty());
}

#[test]
fn reconcile_keeps_known_users_and_removes_what_a_crash_left() {
    let Some(s) = setup(false) else { return };
    let v = s.volumes();
    v.attach("c1", "pod1", &config(&[("/d", "data:1")]))
        .unwrap();
    v.attach("c2", "pod1", &config(&[("/d", "data:1")]))
        .unwrap();
    v.attach("c3", "pod2", &config(&[("/d", "other:1")]))
        .unwrap();
    // A crash after a mount and its hold, before the record: no record owns them.
    let stray = s.target("pod3/cccc");
    std::fs::create_dir_all(&stray).unwrap();
    s.source.mount("pod3/cccc", "sha256:aaaa", &stray).unwrap();
    // A reboot unmounted pod1's volume.
    crate::namespaces::unmount(&s.target("pod1/aaaa")).unwrap();

    // Only c2 survives in the container store.
    let known: HashSet<String> = ["c2".to_string()].into();
    s.volumes().reconcile(&known);
    assert!(mounted(&s.target("pod1/aaaa")), "mounted again for c2");
    let err = std::fs::write(s.target("pod1/aaaa/new"), b"x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS));
    assert!(!mounted(&s.target("pod2/bbbb")) && !s.target("pod2").exists());
    assert!(!mounted(&stray) && !s.target("pod3").exists());
    assert_eq!(s.source.holds().keys().collect::<Vec<_>>(), ["pod1/aaaa"]);
    let recs = v.all().unwrap();
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0].1.users, BTreeSet::from(["c2".to_string()]));

    v.detach("c2").unwrap();
    assert!(s.source.holds().is_empty());
    assert!(!mounted(&s.target("pod1/aaaa")));
}

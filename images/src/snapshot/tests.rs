//! Snapshot chains, gc and overlay mounts, against a real state store.

use super::*;

fn open() -> (tempfile::TempDir, Snapshotter) {
    let dir = tempfile::tempdir().unwrap();
    let db = Arc::new(StateDb::open(&dir.path().join("state.redb")).unwrap());
    let s = Snapshotter::open(dir.path().join("snapshots"), db).unwrap();
    (dir, s)
}

#[test]
fn the_snapshot_root_spreads_its_subdirectories_on_ext4() {
    let (_dir, s) = open();
    let fs = rustix::fs::statfs(s.root()).unwrap();
    // EXT2/3/4_SUPER_MAGIC; other filesystems do not have the flag.
    if fs.f_type as u64 != 0xEF53 {
        eprintln!("not ext4 ({:#x}): nothing to check", fs.f_type);
        return;
    }
    let fd = rustix::fs::open(
        s.root(),
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY,
        rustix::fs::Mode::empty(),
    )
    .unwrap();
    let flags = rustix::fs::ioctl_getflags(&fd).unwrap();
    assert!(flags.contains(rustix::fs::IFlags::TOPDIR), "{flags:?}");
}

fn layer(s: &Snapshotter, chain: &str, parent: Option<&str>, file: &str) {
    let st = s.begin().unwrap();
    fs::write(st.fs().join(file), file).unwrap();
    s.commit(st, chain, parent).unwrap();
}

#[test]
fn chains_prepare_mount_and_gc() {
    let (_d, s) = open();
    layer(&s, "c1", None, "a");
    layer(&s, "c2", Some("c1"), "b");
    layer(&s, "x1", None, "x");
    // an interrupted unpack
    let st = s.begin().unwrap();
    std::mem::forget(st);
    assert_eq!(s.lowers("c2").unwrap().len(), 2);
    let m = s.mounts("c1").unwrap();
    assert_eq!(m[0].fstype, "bind");

    let m = s.prepare("ctr1", Some("c2")).unwrap();
    assert_eq!(m[0].fstype, "overlay");
    assert!(m[0].options.iter().any(|o| o.starts_with("upperdir=")));
    let lower = m[0]
        .options
        .iter()
        .find(|o| o.starts_with("lowerdir="))
        .unwrap();
    assert_eq!(lower.matches(':').count(), 1);
    assert!(matches!(
        s.prepare("ctr1", Some("c2")),
        Err(Error::AlreadyExists(_))
    ));
    assert!(matches!(
        s.prepare("ctr2", Some("nope")),
        Err(Error::NotFound(_))
    ));

    // No image keeps anything, but the container keeps c2 and c1.
    let removed = s.gc(&HashSet::new()).unwrap();
    assert_eq!(removed, 2, "x1 and the interrupted dir");
    assert!(s.exists("c1").unwrap() && s.exists("c2").unwrap());
    assert!(!s.exists("x1").unwrap());
    assert_eq!(s.active_keys().unwrap(), vec!["ctr1".to_string()]);

    s.remove("ctr1").unwrap();
    s.remove("ctr1").unwrap();
    s.gc(&HashSet::new()).unwrap();
    assert!(!s.exists("c1").unwrap());
    assert_eq!(fs::read_dir(s.root()).unwrap().count(), 0);
    // Removed directories went to the trash, which empties in the background.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while fs::read_dir(&s.trash).unwrap().count() > 0 {
        assert!(std::time::Instant::now() < deadline, "trash not emptied");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

#[test]
fn overlay_mount_through_new_api() {
    let (d, s) = open();
    layer(&s, "c1", None, "a");
    layer(&s, "c2", Some("c1"), "b");
    let m = s.prepare("ctr", Some("c2")).unwrap();
    let target = d.path().join("rootfs");
    fs::create_dir(&target).unwrap();
    if let Err(e) = mount(&m, &target) {
        // Unprivileged test runs cannot mount; the e2e tests cover it as root.
        eprintln!("skipping mount check: {e}");
        return;
    }
    let ok = fs::read(target.join("a")).ok() == Some(b"a".to_vec())
        && fs::read(target.join("b")).ok() == Some(b"b".to_vec());
    fs::write(target.join("c"), b"c").unwrap();
    rustix::mount::unmount(&target, rustix::mount::UnmountFlags::DETACH).unwrap();
    assert!(ok, "both layers visible");
    let upper = m[0]
        .options
        .iter()
        .find_map(|o| o.strip_prefix("upperdir="))
        .unwrap();
    assert_eq!(fs::read(Path::new(upper).join("c")).unwrap(), b"c");
}

//! Owner-only modes for everything crust keeps below `root_dir` and `state_dir`.
//!
//! Bundles hold `config.json` (a container's env: secrets), rootfs mount points lead into
//! containers' writable layers (a setuid binary a root container wrote there would run as root
//! from the host), snapshots are named by small guessable numbers. So every directory crust
//! makes there is 0700 and every file 0600, set explicitly (not left to the umask); runc and the
//! shims run as root and are not hindered. What a container itself must read (the pod's
//! `hosts`, `hostname`, `resolv.conf`, bind-mounted in) keeps its own mode behind the 0700
//! directories.

use std::fs::{self, DirBuilder, File, OpenOptions, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Mode bits crust never leaves on its own directories and files.
const GROUP_OTHER: u32 = 0o077;

/// `mkdir -p path`: every directory it makes is 0700, and `path` itself ends 0700 (also when
/// it existed). Parents that existed keep their mode.
pub fn create_dir(path: &Path) -> io::Result<()> {
    DirBuilder::new().recursive(true).mode(0o700).create(path)?;
    // The umask may have taken bits of the new ones, and `path` may be older.
    fs::set_permissions(path, Permissions::from_mode(0o700))
}

/// Creates (or opens) `path` for writing, 0600 whatever the umask or its old mode was.
pub fn create_file(path: &Path) -> io::Result<File> {
    let f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)?;
    f.set_permissions(Permissions::from_mode(0o600))?;
    Ok(f)
}

/// Writes `bytes` as the whole content of `path`, 0600.
pub fn write_file(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut f = create_file(path)?;
    f.set_len(0)?;
    f.write_all(bytes)
}

/// Takes the group and other bits off `path` (not following a symlink) and logs it; returns
/// the old and new mode when it changed something.
pub fn tighten(path: &Path) -> io::Result<Option<(u32, u32)>> {
    let md = fs::symlink_metadata(path)?;
    let ft = md.file_type();
    // A symlink's mode means nothing; a socket's is what its clients need (crustd sets it).
    if ft.is_symlink() || std::os::unix::fs::FileTypeExt::is_socket(&ft) {
        return Ok(None);
    }
    let old = md.permissions().mode() & 0o7777;
    let new = old & !GROUP_OTHER;
    if new == old {
        return Ok(None);
    }
    fs::set_permissions(path, Permissions::from_mode(new))?;
    tracing::info!(
        path = %path.display(),
        "tightened mode {old:04o} -> {new:04o} (crust's state is private to root)"
    );
    Ok(Some((old, new)))
}

/// Start-up check of an existing install: tightens `dir` and every entry directly in it.
/// Errors are logged, not returned: a mode that cannot be changed must not stop crustd.
/// Returns how many paths changed.
pub fn tighten_dir_and_entries(dir: &Path) -> usize {
    let mut changed = 0;
    let mut one = |p: &Path| match tighten(p) {
        Ok(Some(_)) => changed += 1,
        Ok(None) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(path = %p.display(), "cannot tighten mode: {e}"),
    };
    one(dir);
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            one(&e.path());
        }
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn create_dir_makes_every_new_directory_owner_only() {
        let d = tempfile::tempdir().unwrap();
        let deep = d.path().join("a/b/c");
        create_dir(&deep).unwrap();
        for p in ["a", "a/b", "a/b/c"] {
            assert_eq!(mode(&d.path().join(p)), 0o700, "{p}");
        }
        fs::set_permissions(&deep, Permissions::from_mode(0o755)).unwrap();
        create_dir(&deep).unwrap();
        assert_eq!(mode(&deep), 0o700);
    }

    #[test]
    fn files_are_owner_only_and_rewritten_whole() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("config.json");
        fs::write(&p, "a much longer old content").unwrap();
        fs::set_permissions(&p, Permissions::from_mode(0o644)).unwrap();
        write_file(&p, b"new").unwrap();
        assert_eq!(mode(&p), 0o600);
        assert_eq!(fs::read(&p).unwrap(), b"new");
    }

    #[test]
    fn tighten_takes_group_and_other_bits_only() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("root");
        fs::create_dir(&root).unwrap();
        fs::set_permissions(&root, Permissions::from_mode(0o755)).unwrap();
        let db = root.join("state.redb");
        fs::write(&db, "").unwrap();
        fs::set_permissions(&db, Permissions::from_mode(0o644)).unwrap();
        let private = root.join("images");
        fs::create_dir(&private).unwrap();
        fs::set_permissions(&private, Permissions::from_mode(0o700)).unwrap();
        std::os::unix::fs::symlink("/etc", root.join("link")).unwrap();

        assert_eq!(tighten_dir_and_entries(&root), 2);
        assert_eq!(mode(&root), 0o700);
        assert_eq!(mode(&db), 0o600);
        assert_eq!(mode(&private), 0o700);
        assert_eq!(
            mode(Path::new("/etc")) & 0o055,
            0o055,
            "a symlink is not followed"
        );
        assert_eq!(tighten_dir_and_entries(&root), 0, "nothing left to change");
    }
}

//! The shared handle on the redb state store.
//!
//! redb latches an I/O error: after one failed write (ENOSPC on a full disk) every later
//! transaction fails with `PreviousIo` until the `Database` is closed and opened again. The
//! handle owns the only `Database` of the file and runs every transaction inside a closure while
//! holding a read lock on it; a call that meets `PreviousIo` (or a closed database) takes the lock
//! exclusively — so no transaction of this process is alive — closes the database, opens it again
//! (redb repairs it from the last commit) and runs its closure once more. Two `Database`s are thus
//! never open on the file at once; redb's own file lock would refuse the second anyway.
//!
//! Closures must not call the handle again (the read lock is not reentrant while a reopen waits).

use std::path::{Path, PathBuf};
use std::sync::{PoisonError, RwLock};

use redb::{Database, Durability, ReadTransaction, ReadableDatabase, WriteTransaction};

use crate::space::{NoSpace, is_no_space};

/// A state store failure, naming the file.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StateError {
    /// The write did not fit on the filesystem: cri answers ResourceExhausted.
    #[error(transparent)]
    NoSpace(NoSpace),
    #[error("state store {}: {message}", .path.display())]
    Failed {
        path: PathBuf,
        message: String,
        /// redb reported an earlier I/O error (or a closed database): reopen before retrying.
        needs_reopen: bool,
    },
}

impl StateError {
    /// A record that could not be encoded or decoded, reported from inside a transaction.
    pub fn record(message: impl Into<String>) -> StateError {
        StateError::Failed {
            path: PathBuf::new(),
            message: message.into(),
            needs_reopen: false,
        }
    }

    pub fn is_no_space(&self) -> bool {
        matches!(self, StateError::NoSpace(_))
    }

    fn needs_reopen(&self) -> bool {
        matches!(
            self,
            StateError::Failed {
                needs_reopen: true,
                ..
            }
        )
    }

    /// Fills in the path (and, for a full disk, the free space) once the error leaves the handle.
    fn at(self, path: &Path) -> StateError {
        match self {
            StateError::NoSpace(_) => StateError::NoSpace(NoSpace::at("state store", path)),
            StateError::Failed {
                message,
                needs_reopen,
                ..
            } => StateError::Failed {
                path: path.to_owned(),
                message,
                needs_reopen,
            },
        }
    }
}

impl From<redb::Error> for StateError {
    fn from(e: redb::Error) -> StateError {
        let needs_reopen = matches!(e, redb::Error::PreviousIo | redb::Error::DatabaseClosed);
        match e {
            redb::Error::Io(io) if is_no_space(&io) => StateError::NoSpace(NoSpace {
                what: "state store".into(),
                path: PathBuf::new(),
                free: None,
            }),
            e => StateError::Failed {
                path: PathBuf::new(),
                message: e.to_string(),
                needs_reopen,
            },
        }
    }
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for StateError {
            fn from(e: $t) -> StateError {
                redb::Error::from(e).into()
            }
        }
    )*};
}
from_redb!(
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::DatabaseError,
    redb::SetDurabilityError
);

/// The one open handle on `state.redb`, shared (in an `Arc`) by every crate keeping tables in it.
pub struct StateDb {
    path: PathBuf,
    /// `None` only between a failed reopen and the next call, which tries again.
    db: RwLock<Option<Database>>,
}

impl std::fmt::Debug for StateDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateDb").field("path", &self.path).finish()
    }
}

impl StateDb {
    /// Opens (or creates) the store, owner-only (0600).
    pub fn open(path: &Path) -> Result<StateDb, StateError> {
        let db = open_db(path).map_err(|e| e.at(path))?;
        Ok(StateDb {
            path: path.to_owned(),
            db: RwLock::new(Some(db)),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` in a read transaction.
    pub fn read<T>(
        &self,
        mut f: impl FnMut(&ReadTransaction) -> Result<T, StateError>,
    ) -> Result<T, StateError> {
        self.retrying(|db| f(&db.begin_read()?))
    }

    /// Runs `f` in a write transaction and commits it durably; nothing is written if `f` fails.
    pub fn write<T>(
        &self,
        f: impl FnMut(&WriteTransaction) -> Result<T, StateError>,
    ) -> Result<T, StateError> {
        self.write_with(Durability::Immediate, f)
    }

    /// As [`write`](Self::write), but the commit reaches the disk only with the next durable
    /// one (ids and records whose loss in a crash leaves garbage that gc removes).
    pub fn write_lazy<T>(
        &self,
        f: impl FnMut(&WriteTransaction) -> Result<T, StateError>,
    ) -> Result<T, StateError> {
        self.write_with(Durability::None, f)
    }

    fn write_with<T>(
        &self,
        durability: Durability,
        mut f: impl FnMut(&WriteTransaction) -> Result<T, StateError>,
    ) -> Result<T, StateError> {
        self.retrying(|db| {
            let mut tx = db.begin_write()?;
            tx.set_durability(durability)?;
            let out = f(&tx)?;
            tx.commit()?;
            Ok(out)
        })
    }

    /// Runs `op` once, and once more after reopening the database if redb asks for that.
    fn retrying<T>(
        &self,
        mut op: impl FnMut(&Database) -> Result<T, StateError>,
    ) -> Result<T, StateError> {
        let r = match self.attempt(&mut op) {
            Err(e) if e.needs_reopen() => match self.reopen() {
                Ok(()) => self.attempt(&mut op),
                Err(reopen) => Err(reopen),
            },
            r => r,
        };
        r.map_err(|e| e.at(&self.path))
    }

    fn attempt<T>(
        &self,
        op: &mut impl FnMut(&Database) -> Result<T, StateError>,
    ) -> Result<T, StateError> {
        let guard = self.db.read().unwrap_or_else(PoisonError::into_inner);
        match guard.as_ref() {
            Some(db) => op(db),
            None => Err(redb::Error::DatabaseClosed.into()),
        }
    }

    /// Closes and reopens the database unless another call did so meanwhile.
    fn reopen(&self) -> Result<(), StateError> {
        let mut guard = self.db.write().unwrap_or_else(PoisonError::into_inner);
        // No transaction of ours is alive now: they all run under the read lock.
        if let Some(db) = guard.as_ref()
            && db.begin_write().is_ok()
        {
            return Ok(());
        }
        if let Some(old) = guard.take()
            && let Err(e) = old.close()
        {
            tracing::debug!(path = %self.path.display(), "closing the failed state store: {e}");
        }
        match open_db(&self.path) {
            Ok(db) => {
                tracing::warn!(path = %self.path.display(), "state store reopened after an I/O error (commits not made durable yet are lost)");
                *guard = Some(db);
                Ok(())
            }
            Err(e) => {
                tracing::warn!(path = %self.path.display(), "state store cannot be reopened yet: {e}");
                Err(e)
            }
        }
    }
}

fn open_db(path: &Path) -> Result<Database, StateError> {
    crate::private::create_file(path).map_err(|e| {
        NoSpace::from_io("state store", path, &e).map_or_else(
            || StateError::Failed {
                path: path.to_owned(),
                message: format!("create: {e}"),
                needs_reopen: false,
            },
            StateError::NoSpace,
        )
    })?;
    Ok(Database::create(path)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use redb::TableDefinition;
    use std::os::unix::fs::PermissionsExt;

    const T: TableDefinition<&str, u64> = TableDefinition::new("t");

    fn put(db: &StateDb, k: &str, v: u64) -> Result<(), StateError> {
        db.write(|tx| {
            tx.open_table(T)?.insert(k, v)?;
            Ok(())
        })
    }

    fn get(db: &StateDb, k: &str) -> Result<Option<u64>, StateError> {
        db.read(|tx| Ok(tx.open_table(T)?.get(k)?.map(|v| v.value())))
    }

    #[test]
    fn file_is_owner_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        let _db = StateDb::open(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_failing_closure_commits_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let db = StateDb::open(&dir.path().join("state.redb")).unwrap();
        put(&db, "a", 1).unwrap();
        let r: Result<(), _> = db.write(|tx| {
            tx.open_table(T)?.insert("a", 2)?;
            Err(StateError::record("bad record"))
        });
        let msg = r.unwrap_err().to_string();
        assert!(msg.contains("state.redb: bad record"), "{msg}");
        assert_eq!(get(&db, "a").unwrap(), Some(1));
    }

    #[test]
    fn a_closed_database_is_reopened_and_the_call_retried() {
        let dir = tempfile::tempdir().unwrap();
        let db = StateDb::open(&dir.path().join("state.redb")).unwrap();
        put(&db, "a", 1).unwrap();
        // What a failed reopen leaves: no database until the next call.
        let old = db.db.write().unwrap().take().unwrap();
        old.close().unwrap();
        assert_eq!(get(&db, "a").unwrap(), Some(1));
        put(&db, "b", 2).unwrap();
        assert_eq!(get(&db, "b").unwrap(), Some(2));
    }

    #[test]
    fn errors_name_the_store() {
        let e: StateError = redb::Error::PreviousIo.into();
        assert!(e.needs_reopen());
        let e = e.at(Path::new("/x/state.redb"));
        assert!(
            e.to_string().starts_with("state store /x/state.redb: "),
            "{e}"
        );
        let full: StateError =
            redb::Error::Io(std::io::Error::from_raw_os_error(nix::libc::ENOSPC)).into();
        assert!(full.is_no_space());
        let msg = full.at(Path::new("/")).to_string();
        assert!(
            msg.starts_with("state store /: no space left on device ("),
            "{msg}"
        );
    }

    /// A tmpfs of `size`, unmounted on drop (also when the test fails).
    struct Tmpfs(tempfile::TempDir);

    impl Tmpfs {
        fn mount(size: &str) -> Option<Tmpfs> {
            if !nix::unistd::geteuid().is_root() {
                eprintln!("not root: no tmpfs, nothing to check");
                return None;
            }
            let dir = tempfile::tempdir().unwrap();
            nix::mount::mount(
                Some("tmpfs"),
                dir.path(),
                Some("tmpfs"),
                nix::mount::MsFlags::empty(),
                Some(format!("size={size},mode=0700").as_str()),
            )
            .unwrap();
            Some(Tmpfs(dir))
        }
    }

    impl Drop for Tmpfs {
        fn drop(&mut self) {
            let _ = nix::mount::umount2(self.0.path(), nix::mount::MntFlags::MNT_DETACH);
        }
    }

    /// Fills the filesystem of `dir` with one file; returns it.
    fn fill(dir: &Path) -> PathBuf {
        use std::io::Write;
        let p = dir.join("filler");
        let mut f = std::fs::File::create(&p).unwrap();
        let chunk = vec![0u8; 64 * 1024];
        loop {
            match f.write(&chunk) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if is_no_space(&e) => break,
                Err(e) => panic!("filling: {e}"),
            }
        }
        // Page by page, until not one more byte fits.
        while f.write(&[0u8]).is_ok_and(|n| n == 1) {}
        p
    }

    #[test]
    fn a_full_disk_fails_writes_with_no_space_until_space_is_back_without_reopening_by_hand() {
        let Some(fs) = Tmpfs::mount("4m") else { return };
        let path = fs.0.path().join("state.redb");
        let db = StateDb::open(&path).unwrap();
        put(&db, "before", 1).unwrap();

        let filler = fill(fs.0.path());
        let big = vec![7u8; 256 * 1024];
        let blob: TableDefinition<&str, &[u8]> = TableDefinition::new("blob");
        let write_big = |k: &str| {
            db.write(|tx| {
                tx.open_table(blob)?.insert(k, big.as_slice())?;
                Ok(())
            })
        };
        let err = write_big("full").unwrap_err();
        assert!(err.is_no_space(), "{err}");
        let msg = err.to_string();
        assert!(
            msg.starts_with(&format!(
                "state store {}: no space left on device (",
                path.display()
            )),
            "{msg}"
        );
        // Still full: still NoSpace, not redb's "previous I/O error".
        let again = write_big("full").unwrap_err();
        assert!(again.is_no_space(), "{again}");
        assert_eq!(get(&db, "before").unwrap(), Some(1), "reads still work");

        std::fs::remove_file(filler).unwrap();
        write_big("after").unwrap();
        put(&db, "after", 2).unwrap();
        assert_eq!(get(&db, "after").unwrap(), Some(2));
        assert_eq!(get(&db, "before").unwrap(), Some(1));
        drop(db);
        // What was committed is there for the next crustd too.
        let db = StateDb::open(&path).unwrap();
        assert_eq!(get(&db, "after").unwrap(), Some(2));
    }
}

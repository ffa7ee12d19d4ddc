//! The state store: one redb file, `<root_dir>/state.redb`, opened once at start.
//!
//! cri owns the file and its schema version; the `images` and `sandbox` crates are
//! handed the same `Arc<StateDb>` (crate `crust-state`: it reopens the database after
//! an I/O error such as a full disk) and keep their own tables in it. redb commits
//! are atomic and durable, so a crustd killed at any point reopens the last
//! committed state.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crust_state::{StateDb, StateError};
use redb::TableDefinition;

/// Bump when any table's layout changes in a way older code cannot read.
pub const SCHEMA_VERSION: u64 = 1;

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const RUNTIME: TableDefinition<&str, &str> = TableDefinition::new("runtime");
const SCHEMA_KEY: &str = "schema_version";
const POD_CIDR_KEY: &str = "pod_cidr";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "state store {path} has schema version {found}, newer than this crustd understands ({SCHEMA_VERSION}); refusing to start"
    )]
    NewerSchema { path: PathBuf, found: u64 },
    #[error(transparent)]
    State(#[from] StateError),
}

/// The handle every part of crustd shares.
#[derive(Clone)]
pub struct Store {
    db: Arc<StateDb>,
}

impl Store {
    /// Opens (or creates) the store and checks its schema version.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let db = StateDb::open(path)?;
        let found = db.read(|tx| match tx.open_table(META) {
            Ok(t) => Ok(t.get(SCHEMA_KEY)?.map(|v| v.value())),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
            Err(e) => Err(e.into()),
        })?;
        match found {
            Some(v) if v > SCHEMA_VERSION => {
                return Err(StoreError::NewerSchema {
                    path: path.to_owned(),
                    found: v,
                });
            }
            Some(v) if v == SCHEMA_VERSION => {}
            // A fresh file, or an older schema: there is no older schema yet,
            // so this is where migrations go when there is one.
            _ => db.write(|tx| {
                tx.open_table(META)?.insert(SCHEMA_KEY, SCHEMA_VERSION)?;
                Ok(())
            })?,
        }
        Ok(Store { db: Arc::new(db) })
    }

    /// The database handle, for the crates that keep their own tables in it.
    pub fn database(&self) -> Arc<StateDb> {
        self.db.clone()
    }

    pub fn schema_version(&self) -> Result<u64, StoreError> {
        Ok(self.db.read(|tx| {
            let t = tx.open_table(META)?;
            Ok(t.get(SCHEMA_KEY)?.map(|v| v.value()).unwrap_or(0))
        })?)
    }

    /// The pod CIDR kubelet last gave through UpdateRuntimeConfig.
    pub fn pod_cidr(&self) -> Result<Option<String>, StoreError> {
        Ok(self.db.read(|tx| match tx.open_table(RUNTIME) {
            Ok(t) => Ok(t.get(POD_CIDR_KEY)?.map(|v| v.value().to_string())),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
            Err(e) => Err(e.into()),
        })?)
    }

    pub fn set_pod_cidr(&self, cidr: &str) -> Result<(), StoreError> {
        Ok(self.db.write(|tx| {
            tx.open_table(RUNTIME)?.insert(POD_CIDR_KEY, cidr)?;
            Ok(())
        })?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redb::Database;

    #[test]
    fn fresh_store_gets_current_schema() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("state.redb")).expect("open");
        assert_eq!(store.schema_version().expect("version"), SCHEMA_VERSION);
        assert_eq!(store.pod_cidr().expect("cidr"), None);
    }

    #[test]
    fn pod_cidr_survives_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.redb");
        Store::open(&path)
            .expect("open")
            .set_pod_cidr("10.88.0.0/16")
            .expect("set");
        let store = Store::open(&path).expect("reopen");
        assert_eq!(
            store.pod_cidr().expect("cidr").as_deref(),
            Some("10.88.0.0/16")
        );
    }

    #[test]
    fn newer_schema_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.redb");
        {
            let db = Database::create(&path).expect("create");
            let tx = db.begin_write().expect("tx");
            tx.open_table(META)
                .expect("table")
                .insert(SCHEMA_KEY, SCHEMA_VERSION + 1)
                .expect("insert");
            tx.commit().expect("commit");
        }
        let err = Store::open(&path).err().expect("refused");
        assert!(
            matches!(err, StoreError::NewerSchema { found, .. } if found == SCHEMA_VERSION + 1)
        );
        assert!(err.to_string().contains("refusing to start"), "{err}");
    }
}

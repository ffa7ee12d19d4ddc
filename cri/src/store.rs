//! The state store: one redb file, `<root_dir>/state.redb`, opened once at start.
//!
//! cri owns the file and its schema version; the `images` and `sandbox` crates are
//! handed the same `Arc<Database>` and keep their own tables in it. redb commits
//! are atomic and durable, so a crustd killed at any point reopens the last
//! committed state.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::{Database, ReadableDatabase, TableDefinition};

/// Bump when any table's layout changes in a way older code cannot read.
pub const SCHEMA_VERSION: u64 = 1;

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const RUNTIME: TableDefinition<&str, &str> = TableDefinition::new("runtime");
const SCHEMA_KEY: &str = "schema_version";
const POD_CIDR_KEY: &str = "pod_cidr";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state store {path}: {message}")]
    Open { path: PathBuf, message: String },
    #[error(
        "state store {path} has schema version {found}, newer than this crustd understands ({SCHEMA_VERSION}); refusing to start"
    )]
    NewerSchema { path: PathBuf, found: u64 },
    #[error("state store: {0}")]
    Db(String),
}

fn db_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Db(e.to_string())
}

/// The handle every part of crustd shares.
#[derive(Clone)]
pub struct Store {
    db: Arc<Database>,
}

impl Store {
    /// Opens (or creates) the store and checks its schema version.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let open_err = |e: &dyn std::fmt::Display| StoreError::Open {
            path: path.to_owned(),
            message: e.to_string(),
        };
        let db = Database::create(path).map_err(|e| open_err(&e))?;
        let found = {
            let tx = db.begin_read().map_err(|e| open_err(&e))?;
            match tx.open_table(META) {
                Ok(t) => t
                    .get(SCHEMA_KEY)
                    .map_err(|e| open_err(&e))?
                    .map(|v| v.value()),
                Err(redb::TableError::TableDoesNotExist(_)) => None,
                Err(e) => return Err(open_err(&e)),
            }
        };
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
            _ => {
                let tx = db.begin_write().map_err(|e| open_err(&e))?;
                {
                    let mut t = tx.open_table(META).map_err(|e| open_err(&e))?;
                    t.insert(SCHEMA_KEY, SCHEMA_VERSION)
                        .map_err(|e| open_err(&e))?;
                }
                tx.commit().map_err(|e| open_err(&e))?;
            }
        }
        Ok(Store { db: Arc::new(db) })
    }

    /// The database, for the crates that keep their own tables in it.
    pub fn database(&self) -> Arc<Database> {
        self.db.clone()
    }

    pub fn schema_version(&self) -> Result<u64, StoreError> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let t = tx.open_table(META).map_err(db_err)?;
        Ok(t.get(SCHEMA_KEY)
            .map_err(db_err)?
            .map(|v| v.value())
            .unwrap_or(0))
    }

    /// The pod CIDR kubelet last gave through UpdateRuntimeConfig.
    pub fn pod_cidr(&self) -> Result<Option<String>, StoreError> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let t = match tx.open_table(RUNTIME) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(db_err(e)),
        };
        Ok(t.get(POD_CIDR_KEY)
            .map_err(db_err)?
            .map(|v| v.value().to_string()))
    }

    pub fn set_pod_cidr(&self, cidr: &str) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(db_err)?;
        {
            let mut t = tx.open_table(RUNTIME).map_err(db_err)?;
            t.insert(POD_CIDR_KEY, cidr).map_err(db_err)?;
        }
        tx.commit().map_err(db_err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

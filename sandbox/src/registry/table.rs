//! A typed table of JSON records with a `version`, in the shared redb state store.

use std::marker::PhantomData;
use std::sync::Arc;

use crust_state::StateDb;
use redb::{ReadableTable, TableDefinition};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};

/// A record kept in a [`Table`].
pub trait Versioned: Serialize + DeserializeOwned {
    /// The version this code writes; records of a newer one are refused.
    const VERSION: u32;
    fn version(&self) -> u32;
    /// The record's key (its id).
    fn key(&self) -> &str;
}

/// Implements [`Versioned`] for a record with `version` and `id` fields.
#[macro_export]
macro_rules! versioned_record {
    ($record:ty, $version:expr) => {
        impl $crate::registry::Versioned for $record {
            const VERSION: u32 = $version;
            fn version(&self) -> u32 {
                self.version
            }
            fn key(&self) -> &str {
                &self.id
            }
        }
    };
}

/// What loading does with a record that does not decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unreadable {
    /// The whole load fails.
    Refuse,
    /// It is logged and left out (its key still shows in [`Table::keys`]).
    Skip,
}

/// Records of type `R` in the redb table `name`; `what` names them in errors.
pub struct Table<R> {
    db: Arc<StateDb>,
    name: &'static str,
    what: &'static str,
    _records: PhantomData<fn() -> R>,
}

impl<R: Versioned> Table<R> {
    pub fn new(db: Arc<StateDb>, name: &'static str, what: &'static str) -> Table<R> {
        Table {
            db,
            name,
            what,
            _records: PhantomData,
        }
    }

    fn def(&self) -> TableDefinition<'static, &'static str, &'static [u8]> {
        TableDefinition::new(self.name)
    }

    /// Every key and its bytes (none if the table is not made yet).
    fn raw(&self) -> Result<Vec<(String, Vec<u8>)>> {
        let def = self.def();
        Ok(self.db.read(|tx| {
            let table = match tx.open_table(def) {
                Ok(t) => t,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
                Err(e) => return Err(e.into()),
            };
            let mut raw = Vec::new();
            for entry in table.iter()? {
                let (k, v) = entry?;
                raw.push((k.value().to_string(), v.value().to_vec()));
            }
            Ok(raw)
        })?)
    }

    /// Every record; a record of a newer version fails the load.
    pub fn load_all(&self, unreadable: Unreadable) -> Result<Vec<R>> {
        let what = self.what;
        let mut out = Vec::new();
        for (k, v) in self.raw()? {
            match serde_json::from_slice::<R>(&v) {
                Ok(r) if r.version() <= R::VERSION => out.push(r),
                Ok(r) => {
                    return Err(Error::Store(format!(
                        "{what} record {k} has version {} (this crust knows {})",
                        r.version(),
                        R::VERSION
                    )));
                }
                Err(e) if unreadable == Unreadable::Refuse => {
                    return Err(Error::Store(format!("{what} record {k}: {e}")));
                }
                Err(e) => {
                    // One unreadable record must not hide every other object.
                    tracing::error!(key = %k, error = %e, "unreadable {what} record skipped");
                }
            }
        }
        Ok(out)
    }

    /// The key of every record, readable or not.
    pub fn keys(&self) -> Result<Vec<String>> {
        Ok(self.raw()?.into_iter().map(|(k, _)| k).collect())
    }

    /// Writes a record, durably.
    pub fn put(&self, rec: &R) -> Result<()> {
        let bytes = serde_json::to_vec(rec).map_err(|e| Error::Store(e.to_string()))?;
        let def = self.def();
        self.db.write(|tx| {
            tx.open_table(def)?.insert(rec.key(), bytes.as_slice())?;
            Ok(())
        })?;
        Ok(())
    }

    /// Deletes a record, durably; absent is fine.
    pub fn delete(&self, key: &str) -> Result<()> {
        let def = self.def();
        self.db.write(|tx| {
            tx.open_table(def)?.remove(key)?;
            Ok(())
        })?;
        Ok(())
    }

    /// Writes raw bytes under a key (tests: records of another version or shape).
    #[cfg(test)]
    pub fn put_raw(&self, key: &str, bytes: &[u8]) -> Result<()> {
        let def = self.def();
        self.db.write(|tx| {
            tx.open_table(def)?.insert(key, bytes)?;
            Ok(())
        })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::registry::test_record::{Rec, rec};

    fn table(dir: &tempfile::TempDir) -> Table<Rec> {
        let db = Arc::new(StateDb::open(&dir.path().join("s.redb")).unwrap());
        Table::new(db, "recs", "rec")
    }

    #[test]
    fn records_round_trip_and_unreadable_ones_are_skipped_or_refused() {
        let d = tempfile::tempdir().unwrap();
        let t = table(&d);
        assert!(t.load_all(Unreadable::Refuse).unwrap().is_empty());
        let a = Rec { n: 1, ..rec("a") };
        t.put(&a).unwrap();
        t.put_raw("bad", b"{").unwrap();
        assert_eq!(t.load_all(Unreadable::Skip).unwrap(), vec![a.clone()]);
        assert!(t.load_all(Unreadable::Refuse).is_err());
        let mut keys = t.keys().unwrap();
        keys.sort();
        assert_eq!(keys, ["a", "bad"]);
        t.delete("bad").unwrap();
        t.delete("bad").unwrap();
        assert_eq!(t.load_all(Unreadable::Refuse).unwrap(), vec![a]);
    }

    #[test]
    fn newer_records_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let t = table(&d);
        t.put(&Rec {
            version: 3,
            ..rec("a")
        })
        .unwrap();
        assert!(matches!(
            t.load_all(Unreadable::Skip),
            Err(Error::Store(m)) if m.contains("version 3")
        ));
    }
}

//! The objects of one kind, in memory and in their [`Table`].

use std::collections::HashMap;
use std::sync::Mutex;

use super::locks::KeyedLocks;
use super::table::{Table, Unreadable, Versioned};
use crate::error::{Error, Result};

/// Objects by id. The map's mutex is held only to read or swap a record, never across a
/// commit: every write takes the object's own lock, commits, then swaps the record in memory,
/// so two writes of one object reach the store in order, no write follows its removal, and
/// reads and writes of other objects never wait for the disk.
pub struct Registry<R> {
    /// "container", "pod sandbox": in ids' errors.
    what: &'static str,
    table: Table<R>,
    map: Mutex<HashMap<String, R>>,
    locks: KeyedLocks<Mutex<()>>,
}

impl<R: Versioned + Clone> Registry<R> {
    /// Loads every record of the table.
    pub fn open(table: Table<R>, what: &'static str, unreadable: Unreadable) -> Result<Self> {
        let map = table
            .load_all(unreadable)?
            .into_iter()
            .map(|r| (r.key().to_string(), r))
            .collect();
        Ok(Registry {
            what,
            table,
            map: Mutex::new(map),
            locks: KeyedLocks::default(),
        })
    }

    pub fn table(&self) -> &Table<R> {
        &self.table
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, R>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Full id for a full id or unique prefix; None when nothing matches.
    pub fn resolve(&self, id: &str) -> Result<Option<String>> {
        super::resolve_prefix(&format!("{} id", self.what), id, self.lock().keys())
    }

    /// The record of a full id or unique prefix.
    pub fn get(&self, id: &str) -> Result<R> {
        let what = self.what;
        self.resolve(id)?
            .and_then(|full| self.lock().get(&full).cloned())
            .ok_or_else(|| Error::NotFound(format!("{what} {id:?} not found")))
    }

    /// The record of a full id, if there is one.
    pub fn find(&self, id: &str) -> Option<R> {
        self.lock().get(id).cloned()
    }

    /// Every record `f` selects.
    pub fn filter(&self, f: impl Fn(&R) -> bool) -> Vec<R> {
        self.lock().values().filter(|r| f(r)).cloned().collect()
    }

    /// How many records satisfy `f`.
    pub fn count(&self, f: impl Fn(&R) -> bool) -> usize {
        self.lock().values().filter(|r| f(r)).count()
    }

    /// Whether any record satisfies `f`.
    pub fn any(&self, f: impl Fn(&R) -> bool) -> bool {
        self.lock().values().any(f)
    }

    /// Persists a new (or replaced) record, then lists it.
    pub fn insert(&self, rec: R) -> Result<()> {
        let lock = self.locks.get(rec.key());
        let _held = lock.lock().unwrap_or_else(|p| p.into_inner());
        self.table.put(&rec)?;
        self.lock().insert(rec.key().to_string(), rec);
        Ok(())
    }

    /// Changes a record with `f` and persists it. Memory follows `f` even when the store
    /// cannot (a full disk: an exit must not be lost until the next restart); the error is
    /// returned.
    pub fn update(&self, id: &str, f: impl FnOnce(&mut R)) -> Result<R> {
        let what = self.what;
        let lock = self.locks.get(id);
        let _held = lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut rec = self
            .find(id)
            .ok_or_else(|| Error::NotFound(format!("{what} {id} not found")))?;
        f(&mut rec);
        let stored = self.table.put(&rec);
        self.lock().insert(id.to_string(), rec.clone());
        stored.map(|()| rec)
    }

    /// Deletes a record from the store, then from memory; absent is fine.
    pub fn remove(&self, id: &str) -> Result<()> {
        let lock = self.locks.get(id);
        {
            let _held = lock.lock().unwrap_or_else(|p| p.into_inner());
            self.table.delete(id)?;
            self.lock().remove(id);
        }
        self.locks.forget(id);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crust_state::StateDb;
    use std::sync::Arc;

    use crate::registry::test_record::{Rec, rec};

    #[test]
    fn reads_do_not_wait_for_a_commit_in_progress() {
        let d = tempfile::tempdir().unwrap();
        let db = Arc::new(StateDb::open(&d.path().join("s.redb")).unwrap());
        let reg = Arc::new(
            Registry::open(
                Table::new(db.clone(), "recs", "rec"),
                "rec",
                Unreadable::Skip,
            )
            .unwrap(),
        );
        reg.insert(rec("a")).unwrap();
        // Another writer holds the store's write transaction: the update below waits for it.
        let (hold_tx, hold_rx) = std::sync::mpsc::channel::<()>();
        let (began_tx, began_rx) = std::sync::mpsc::channel::<()>();
        let holder = std::thread::spawn(move || {
            db.write(|_tx| {
                began_tx.send(()).unwrap();
                hold_rx.recv().unwrap();
                Ok(())
            })
            .unwrap();
        });
        began_rx.recv().unwrap();
        let r = reg.clone();
        let writer = std::thread::spawn(move || r.update("a", |r| r.n = 1).unwrap());
        std::thread::sleep(std::time::Duration::from_millis(50));
        // Meanwhile every read answers at once.
        let (read_tx, read_rx) = std::sync::mpsc::channel();
        let r = reg.clone();
        std::thread::spawn(move || {
            read_tx
                .send((r.get("a").unwrap(), r.filter(|_| true).len()))
                .unwrap();
        });
        let read = read_rx.recv_timeout(std::time::Duration::from_secs(2));
        hold_tx.send(()).unwrap();
        holder.join().unwrap();
        assert_eq!(writer.join().unwrap().n, 1);
        let (got, n) = read.expect("a read waited for another object's commit");
        assert_eq!((got.n, n), (0, 1));
        assert_eq!(reg.get("a").unwrap().n, 1);
    }

    #[test]
    fn writes_after_a_removal_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let db = Arc::new(StateDb::open(&d.path().join("s.redb")).unwrap());
        let reg = Registry::open(
            Table::new(db.clone(), "recs", "rec"),
            "rec",
            Unreadable::Skip,
        )
        .unwrap();
        reg.insert(rec("a")).unwrap();
        reg.remove("a").unwrap();
        assert!(matches!(
            reg.update("a", |r| r.n = 2),
            Err(Error::NotFound(_))
        ));
        let reopened = Registry::open(
            Table::<Rec>::new(db, "recs", "rec"),
            "rec",
            Unreadable::Skip,
        )
        .unwrap();
        assert!(reopened.find("a").is_none());
        assert!(matches!(reopened.get("a"), Err(Error::NotFound(_))));
    }
}

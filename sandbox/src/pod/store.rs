//! Pod records in the shared redb state store (table `sandbox_pods`).

use std::sync::Arc;

use crust_state::StateDb;
use redb::{ReadableTable, TableDefinition};

use super::record::PodRecord;
use crate::error::{Error, Result};

const PODS: TableDefinition<&str, &[u8]> = TableDefinition::new("sandbox_pods");

/// The version this code writes; records from a newer crust are refused.
pub const RECORD_VERSION: u32 = 1;

pub struct PodStore {
    db: Arc<StateDb>,
}

impl PodStore {
    pub fn new(db: Arc<StateDb>) -> Self {
        Self { db }
    }

    pub fn load_all(&self) -> Result<Vec<PodRecord>> {
        let raw = self.db.read(|txn| {
            let table = match txn.open_table(PODS) {
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
        })?;
        let mut out = Vec::new();
        for (k, v) in raw {
            let rec: PodRecord = serde_json::from_slice(&v)
                .map_err(|e| Error::Store(format!("pod record {k}: {e}")))?;
            if rec.version > RECORD_VERSION {
                return Err(Error::Store(format!(
                    "pod record {k} has version {} (this crust knows {RECORD_VERSION})",
                    rec.version
                )));
            }
            out.push(rec);
        }
        Ok(out)
    }

    pub fn put(&self, rec: &PodRecord) -> Result<()> {
        let bytes = serde_json::to_vec(rec).map_err(|e| Error::Internal(e.to_string()))?;
        self.db.write(|txn| {
            txn.open_table(PODS)?
                .insert(rec.id.as_str(), bytes.as_slice())?;
            Ok(())
        })?;
        Ok(())
    }

    pub fn delete(&self, id: &str) -> Result<()> {
        self.db.write(|txn| {
            txn.open_table(PODS)?.remove(id)?;
            Ok(())
        })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pod::record::PodRecord;

    #[test]
    fn records_round_trip_and_survive_reopen() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("state.redb");
        let rec = PodRecord {
            id: "ab".repeat(32),
            ips: vec!["10.88.0.2".into()],
            ..PodRecord::for_test()
        };
        {
            let s = PodStore::new(Arc::new(StateDb::open(&path).unwrap()));
            assert!(s.load_all().unwrap().is_empty());
            s.put(&rec).unwrap();
        }
        let s = PodStore::new(Arc::new(StateDb::open(&path).unwrap()));
        assert_eq!(s.load_all().unwrap(), vec![rec.clone()]);
        s.delete(&rec.id).unwrap();
        s.delete(&rec.id).unwrap();
        assert!(s.load_all().unwrap().is_empty());
    }

    #[test]
    fn records_of_an_older_crustd_decode_without_a_cni_result() {
        let rec = PodRecord {
            network: Some("crust".into()),
            cni_result: Some(serde_json::json!({"cniVersion": "1.0.0", "ips": []})),
            ..PodRecord::for_test()
        };
        let mut old = serde_json::to_value(&rec).unwrap();
        old.as_object_mut().unwrap().remove("cni_result");
        let d = tempfile::tempdir().unwrap();
        let db = Arc::new(StateDb::open(&d.path().join("s.redb")).unwrap());
        db.write(|txn| {
            txn.open_table(PODS)?.insert(
                rec.id.as_str(),
                serde_json::to_vec(&old).unwrap().as_slice(),
            )?;
            Ok(())
        })
        .unwrap();
        let loaded = PodStore::new(db).load_all().unwrap();
        assert_eq!(
            loaded,
            vec![PodRecord {
                cni_result: None,
                ..rec
            }]
        );
    }

    #[test]
    fn newer_records_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let s = PodStore::new(Arc::new(StateDb::open(&d.path().join("s.redb")).unwrap()));
        let rec = PodRecord {
            version: RECORD_VERSION + 1,
            ..PodRecord::for_test()
        };
        s.put(&rec).unwrap();
        assert!(s.load_all().is_err());
    }
}

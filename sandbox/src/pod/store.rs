//! Pod records in the shared redb state store (table `sandbox_pods`, JSON with a `version`).

use std::sync::Arc;

use crust_state::StateDb;

use super::record::PodRecord;
use crate::registry::Table;

/// The version this code writes; records from a newer crust are refused.
pub const RECORD_VERSION: u32 = 1;

crate::versioned_record!(PodRecord, RECORD_VERSION);

/// The pods table.
pub fn table(db: Arc<StateDb>) -> Table<PodRecord> {
    Table::new(db, "sandbox_pods", "pod")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Unreadable;

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
            let s = table(Arc::new(StateDb::open(&path).unwrap()));
            assert!(s.load_all(Unreadable::Refuse).unwrap().is_empty());
            s.put(&rec).unwrap();
        }
        let s = table(Arc::new(StateDb::open(&path).unwrap()));
        assert_eq!(s.load_all(Unreadable::Refuse).unwrap(), vec![rec.clone()]);
        s.delete(&rec.id).unwrap();
        s.delete(&rec.id).unwrap();
        assert!(s.load_all(Unreadable::Refuse).unwrap().is_empty());
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
        let t = table(Arc::new(StateDb::open(&d.path().join("s.redb")).unwrap()));
        t.put_raw(&rec.id, &serde_json::to_vec(&old).unwrap())
            .unwrap();
        let loaded = t.load_all(Unreadable::Refuse).unwrap();
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
        let s = table(Arc::new(StateDb::open(&d.path().join("s.redb")).unwrap()));
        let rec = PodRecord {
            version: RECORD_VERSION + 1,
            ..PodRecord::for_test()
        };
        s.put(&rec).unwrap();
        assert!(s.load_all(Unreadable::Refuse).is_err());
    }
}

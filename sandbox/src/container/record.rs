//! What crust keeps of a container, persisted in the state store.
//!
//! ```text
//!   CreateContainer ──▶ CREATED ──StartContainer──▶ RUNNING ──process exits──▶ EXITED
//!                          │            │ start fails (reason StartError) ────▶ EXITED
//!                          │            └── shim lost ──▶ UNKNOWN
//!                          └────────── RemoveContainer (any state; RUNNING is killed first) ──▶ gone
//! ```

use std::path::PathBuf;
use std::sync::Arc;

use crust_state::StateDb;
use k8s_cri::v1::ContainerConfig;
use serde::{Deserialize, Serialize};

use crate::registry::Table;

pub const RECORD_VERSION: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum ContainerState {
    Created,
    Running,
    Exited,
    Unknown,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerRecord {
    pub version: u32,
    pub id: String,
    pub pod_id: String,
    /// The CRI config as given (metadata, labels, annotations, mounts, ...).
    pub config: ContainerConfig,
    /// The image as the request named it.
    pub image: String,
    /// The image id: its config digest (`sha256:...`).
    pub image_ref: String,
    pub state: ContainerState,
    pub created_at_ns: i64,
    pub started_at_ns: i64,
    pub finished_at_ns: i64,
    pub exit_code: i32,
    pub reason: String,
    pub message: String,
    pub pid: u32,
    /// The OCI bundle (config.json, rootfs).
    pub bundle: PathBuf,
    /// The CRI log file, when kubelet gave a log directory and path.
    pub log_path: Option<PathBuf>,
    /// The image's StopSignal, if any (SIGTERM otherwise).
    pub stop_signal: Option<String>,
    /// The cgroup runc puts the container in, relative to each hierarchy.
    pub cgroups_path: String,
    /// The OCI runtime binary the shim drives.
    pub runtime_binary: String,
    /// Its state root (`runc --root`), where a cleanup without the shim finds the
    /// container even once the pod is gone. None in older records.
    #[serde(default)]
    pub runtime_root: Option<PathBuf>,
    /// The user the process runs as, as the spec was built (ContainerStatus reports it).
    /// None in older records: it is then read from the bundle's `config.json`.
    #[serde(default)]
    pub user: Option<RunAs>,
}

/// The ids a container's process runs with.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunAs {
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
}

impl RunAs {
    pub fn of(user: &oci_spec::runtime::User) -> RunAs {
        RunAs {
            uid: user.uid(),
            gid: user.gid(),
            additional_gids: user.additional_gids().clone().unwrap_or_default(),
        }
    }
}

impl ContainerRecord {
    pub fn name(&self) -> &str {
        self.config
            .metadata
            .as_ref()
            .map(|m| m.name.as_str())
            .unwrap_or("")
    }

    pub fn attempt(&self) -> u32 {
        self.config
            .metadata
            .as_ref()
            .map(|m| m.attempt)
            .unwrap_or(0)
    }

    /// The key two containers of a pod may not share.
    pub fn name_key(&self) -> String {
        name_key(&self.pod_id, self.name(), self.attempt())
    }
}

pub fn name_key(pod_id: &str, name: &str, attempt: u32) -> String {
    format!("{pod_id}/{name}/{attempt}")
}

crate::versioned_record!(ContainerRecord, RECORD_VERSION);

/// The containers table.
pub fn table(db: Arc<StateDb>) -> Table<ContainerRecord> {
    Table::new(db, "containers", "container")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Unreadable;

    fn record(id: &str) -> ContainerRecord {
        ContainerRecord {
            version: RECORD_VERSION,
            id: id.into(),
            pod_id: "p".into(),
            config: ContainerConfig {
                metadata: Some(k8s_cri::v1::ContainerMetadata {
                    name: "web".into(),
                    attempt: 2,
                }),
                labels: [("a".to_string(), "b".to_string())].into(),
                ..Default::default()
            },
            image: "busybox".into(),
            image_ref: "sha256:00".into(),
            state: ContainerState::Created,
            created_at_ns: 1,
            started_at_ns: 0,
            finished_at_ns: 0,
            exit_code: 0,
            reason: String::new(),
            message: String::new(),
            pid: 0,
            bundle: "/b".into(),
            log_path: None,
            stop_signal: None,
            cgroups_path: "/crust/x".into(),
            runtime_binary: "runc".into(),
            runtime_root: None,
            user: None,
        }
    }

    #[test]
    fn records_round_trip_through_the_store() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Arc::new(StateDb::open(&dir.path().join("s.redb")).expect("db"));
        let store = table(db);
        assert!(store.load_all(Unreadable::Skip).expect("empty").is_empty());
        store.put(&record("a")).expect("put");
        store.put(&record("b")).expect("put");
        store.delete("a").expect("delete");
        let all = store.load_all(Unreadable::Skip).expect("load");
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].id, "b");
        assert_eq!(all[0].name_key(), "p/web/2");
        assert_eq!(all[0].config.labels.get("a").map(String::as_str), Some("b"));
    }
}

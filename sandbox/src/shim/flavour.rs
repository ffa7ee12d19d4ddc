//! The one seam for what differs between shim v2 binaries.
//!
//! Every shim speaks the same ttrpc task API; they differ in how they are started and in who
//! writes the CRI log:
//!
//! | | crust-shim ([`ShimFlavour::Crust`]) | containerd-style ([`ShimFlavour::Containerd`]) |
//! |---|---|---|
//! | `start` stdin | `BootstrapParams` (events address, socket dir) | nothing (containerd sends an optional runc `Options` `Any`) |
//! | working dir at `start` | the pod dir | the pod dir, holding a `config.json` whose `io.kubernetes.cri.sandbox-id` annotation groups the pod's containers under one shim, and a `log` FIFO the shim's logger blocks on until crustd reads it |
//! | socket | `<state_dir>/s/<hash>` | the shim's own choice (`/run/containerd/s/<hash>` for containerd 1.6), removed by the shim on shutdown |
//! | container stdout/stderr | `file:///log/path` — the shim writes the CRI log | FIFOs in the bundle (`io/stdout`, `io/stderr`) that crustd copies into the CRI log ([`super::logcopy`]) |
//! | ReopenContainerLog | Task `Update` with an annotation | crustd reopens the log file it writes |
//! | runc state root | the `root` option as given | `<root>/<namespace>` |
//!
//! A pod's flavour is chosen from its runtime handler when the shim starts and recorded in
//! the pod dir (`shim.flavour`, absent for crust-shim), so a reconnect — also after a crustd
//! restart or a config change — drives the shim the way it was started.

use std::path::{Path, PathBuf};

use crate::RuntimeKind;

/// File in the pod dir naming a non-default flavour.
const FLAVOUR_FILE: &str = "shim.flavour";

/// How a shim v2 binary expects to be driven.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ShimFlavour {
    /// crust's own `crust-shim`.
    #[default]
    Crust,
    /// A shim following containerd's conventions (containerd-shim-runc-v2 and its kin).
    Containerd,
}

impl ShimFlavour {
    /// The flavour of a runtime handler's shim: `oci` handlers run under crust-shim, `shim-v2`
    /// handlers name a containerd-style shim.
    pub fn of(kind: RuntimeKind) -> Self {
        match kind {
            RuntimeKind::Oci => ShimFlavour::Crust,
            RuntimeKind::ShimV2 => ShimFlavour::Containerd,
        }
    }

    fn name(self) -> &'static str {
        match self {
            ShimFlavour::Crust => "crust",
            ShimFlavour::Containerd => "containerd",
        }
    }

    /// The flavour recorded in `pod_dir` (crust-shim when none is).
    pub fn of_pod_dir(pod_dir: &Path) -> Self {
        match std::fs::read_to_string(pod_dir.join(FLAVOUR_FILE)) {
            Ok(s) if s.trim() == ShimFlavour::Containerd.name() => ShimFlavour::Containerd,
            _ => ShimFlavour::Crust,
        }
    }

    /// Records the flavour in `pod_dir` (nothing for the default).
    pub(super) fn record(self, pod_dir: &Path) -> std::io::Result<()> {
        match self {
            ShimFlavour::Crust => Ok(()),
            f => crust_state::private::write_file(&pod_dir.join(FLAVOUR_FILE), f.name().as_bytes()),
        }
    }

    /// Whether the shim writes the CRI log itself (else crustd copies the output into it).
    pub fn writes_cri_logs(self) -> bool {
        self == ShimFlavour::Crust
    }

    /// Where runc keeps its state for containers of this flavour, given the `root` option.
    pub fn runc_root(self, root: &Path, namespace: &str) -> PathBuf {
        match self {
            ShimFlavour::Crust => root.to_path_buf(),
            ShimFlavour::Containerd => root.join(namespace),
        }
    }

    pub const ALL: [ShimFlavour; 2] = [ShimFlavour::Crust, ShimFlavour::Containerd];

    /// What the shim's working dir needs before `start`: for a containerd-style shim a
    /// `config.json` carrying the grouping annotation (its `start` reads the spec from the
    /// working dir and fails without one).
    pub(super) fn prepare_work_dir(self, pod_dir: &Path, pod_id: &str) -> std::io::Result<()> {
        if self == ShimFlavour::Crust {
            return Ok(());
        }
        let spec = serde_json::json!({
            "ociVersion": "1.0.2",
            "annotations": { SANDBOX_ID_ANNOTATION: pod_id },
        });
        crust_state::private::write_file(&pod_dir.join("config.json"), spec.to_string().as_bytes())
    }
}

/// The annotation containerd-style shims group a pod's containers by.
pub const SANDBOX_ID_ANNOTATION: &str = "io.kubernetes.cri.sandbox-id";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flavour_is_recorded_in_the_pod_dir() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(ShimFlavour::of_pod_dir(d.path()), ShimFlavour::Crust);
        ShimFlavour::Crust.record(d.path()).unwrap();
        assert!(!d.path().join(FLAVOUR_FILE).exists());
        ShimFlavour::Containerd.record(d.path()).unwrap();
        assert_eq!(ShimFlavour::of_pod_dir(d.path()), ShimFlavour::Containerd);
    }

    #[test]
    fn containerd_work_dir_has_the_grouping_spec() {
        let d = tempfile::tempdir().unwrap();
        ShimFlavour::Crust.prepare_work_dir(d.path(), "p1").unwrap();
        assert!(!d.path().join("config.json").exists());
        ShimFlavour::Containerd
            .prepare_work_dir(d.path(), "p1")
            .unwrap();
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(d.path().join("config.json")).unwrap()).unwrap();
        assert_eq!(v["annotations"][SANDBOX_ID_ANNOTATION], "p1");
    }

    #[test]
    fn per_flavour_choices() {
        assert_eq!(ShimFlavour::of(RuntimeKind::Oci), ShimFlavour::Crust);
        assert_eq!(
            ShimFlavour::of(RuntimeKind::ShimV2),
            ShimFlavour::Containerd
        );
        assert!(ShimFlavour::Crust.writes_cri_logs());
        assert!(!ShimFlavour::Containerd.writes_cri_logs());
        let root = Path::new("/s/runc");
        assert_eq!(ShimFlavour::Crust.runc_root(root, "k8s.io"), root);
        assert_eq!(
            ShimFlavour::Containerd.runc_root(root, "k8s.io"),
            Path::new("/s/runc/k8s.io")
        );
    }
}

//! What a runtime handler can do, asked of its OCI runtime once: `<runtime>
//! features` (runc ≥ 1.1 answers JSON with the mount options it knows) and the
//! kernel. Kubelet holds a runtime to every feature it reports, so a feature is
//! true only when both the runtime and the kernel give it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::config::RuntimeHandler;

/// Whether the handler's OCI runtime applies the `rro` mount option (recursive
/// read-only through `mount_setattr`, which the kernel has from 5.12).
pub fn recursive_read_only(handler: &RuntimeHandler) -> bool {
    kernel_at_least(5, 12) && runtime_mount_options(handler.oci_runtime()).contains(&"rro".into())
}

/// Whether the handler's OCI runtime joins a user namespace: `<runtime> features` lists
/// `user` among its namespaces (the kernel side is `crate::userns::supported`).
pub fn runtime_user_namespaces(handler: &RuntimeHandler) -> bool {
    parse_list(
        &runtime_features(handler.oci_runtime()),
        &["linux", "namespaces"],
    )
    .contains(&"user".into())
}

/// The mount options `<runtime> features` lists; empty when the runtime cannot say.
fn runtime_mount_options(runtime: &Path) -> Vec<String> {
    parse_mount_options(&runtime_features(runtime))
}

/// What `<runtime> features` answers, asked once per binary; empty when it cannot say.
fn runtime_features(runtime: &Path) -> Vec<u8> {
    static CACHE: Mutex<Option<HashMap<PathBuf, Vec<u8>>>> = Mutex::new(None);
    let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    let cache = cache.get_or_insert_with(HashMap::new);
    if let Some(v) = cache.get(runtime) {
        return v.clone();
    }
    let out = crate::resolve_binary(runtime)
        .and_then(|bin| {
            std::process::Command::new(bin)
                .arg("features")
                .output()
                .ok()
        })
        .filter(|o| o.status.success())
        .map(|o| o.stdout)
        .unwrap_or_default();
    cache.insert(runtime.to_path_buf(), out.clone());
    out
}

fn parse_mount_options(features_json: &[u8]) -> Vec<String> {
    parse_list(features_json, &["mountOptions"])
}

/// The strings of the array at `path` in the features JSON.
fn parse_list(features_json: &[u8], path: &[&str]) -> Vec<String> {
    serde_json::from_slice::<serde_json::Value>(features_json)
        .ok()
        .and_then(|v| {
            path.iter()
                .try_fold(&v, |v, k| v.get(k))?
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|o| o.as_str().map(str::to_string))
                        .collect()
                })
        })
        .unwrap_or_default()
}

fn kernel_at_least(major: u32, minor: u32) -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    parse_release(&release) >= (major, minor)
}

/// `6.18.44-fc-v1045` → (6, 18).
fn parse_release(release: &str) -> (u32, u32) {
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_options_from_the_features_json() {
        let json = br#"{"ociVersionMin":"1.0.0","mountOptions":["bind","rro","ro"]}"#;
        assert_eq!(parse_mount_options(json), ["bind", "rro", "ro"]);
        assert!(parse_mount_options(b"runc: unknown command").is_empty());
        assert!(parse_mount_options(br#"{"hooks":[]}"#).is_empty());
        let json = br#"{"linux":{"namespaces":["cgroup","user","uts"]}}"#;
        assert_eq!(
            parse_list(json, &["linux", "namespaces"]),
            ["cgroup", "user", "uts"]
        );
        assert!(parse_list(br#"{"linux":{}}"#, &["linux", "namespaces"]).is_empty());
    }

    #[test]
    fn kernel_releases() {
        assert_eq!(parse_release("6.18.44-fc-v1045"), (6, 18));
        assert_eq!(parse_release("5.4.0"), (5, 4));
        assert_eq!(parse_release("garbage"), (0, 0));
        assert!((5, 12) > parse_release("5.11.3"));
    }

    #[test]
    fn a_runtime_that_cannot_answer_has_no_options() {
        assert!(runtime_mount_options(Path::new("/nonexistent/runc")).is_empty());
        assert!(runtime_mount_options(Path::new("/bin/false")).is_empty());
    }
}

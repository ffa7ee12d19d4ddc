//! The `[sandbox]` section of crustd's configuration.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// How a runtime handler runs containers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RuntimeKind {
    /// An OCI runtime binary (runc, crun) driven by crust's own per-pod `crust-shim`.
    Oci,
    /// Another containerd shim v2 binary (e.g. containerd-shim-runc-v2) used instead of crust-shim.
    ShimV2,
}

/// One runtime handler (a Kubernetes RuntimeClass `handler`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeHandler {
    /// `oci` or `shim-v2`.
    pub kind: RuntimeKind,
    /// The binary: a path, or a bare name looked up in PATH (e.g. `runc`).
    pub path: PathBuf,
}

impl RuntimeHandler {
    /// The OCI runtime the handler's containers run with (the runc `Options` sent with each
    /// create): the handler's binary for `oci`; for `shim-v2`, `runc`, which
    /// containerd-shim-runc-v2 drives (other shims disregard runc options).
    pub fn oci_runtime(&self) -> &Path {
        match self.kind {
            RuntimeKind::Oci => &self.path,
            RuntimeKind::ShimV2 => Path::new("runc"),
        }
    }
}

/// Configuration of pods and containers on the node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where CNI network configs are looked for.
    pub cni_conf_dir: PathBuf,
    /// Where CNI plugin binaries are looked for, in order.
    pub cni_bin_dirs: Vec<PathBuf>,
    /// The handler used when RunPodSandbox names none.
    pub default_runtime_handler: String,
    /// Runtime handlers by name.
    pub runtime_handlers: BTreeMap<String, RuntimeHandler>,
    /// The per-pod shim binary: a path, or a bare name looked up next to crustd, then in PATH.
    pub shim_binary: PathBuf,
    /// Size limit of each pod's /dev/shm tmpfs, in bytes.
    pub pod_shm_size_bytes: u64,
    /// Seconds a CNI plugin may run before it is killed.
    pub cni_timeout_seconds: u64,
}

impl Default for Config {
    fn default() -> Self {
        let mut runtime_handlers = BTreeMap::new();
        runtime_handlers.insert(
            "runc".to_string(),
            RuntimeHandler {
                kind: RuntimeKind::Oci,
                path: PathBuf::from("runc"),
            },
        );
        Self {
            cni_conf_dir: PathBuf::from("/etc/cni/net.d"),
            cni_bin_dirs: vec![PathBuf::from("/usr/lib/cni"), PathBuf::from("/opt/cni/bin")],
            default_runtime_handler: "runc".to_string(),
            runtime_handlers,
            shim_binary: PathBuf::from("crust-shim"),
            pod_shm_size_bytes: 64 * 1024 * 1024,
            cni_timeout_seconds: 60,
        }
    }
}

impl Config {
    /// The handler for a RuntimeClass name (empty = the default handler).
    pub fn handler(&self, name: &str) -> Option<(&str, &RuntimeHandler)> {
        let name = if name.is_empty() {
            self.default_runtime_handler.as_str()
        } else {
            name
        };
        self.runtime_handlers
            .get_key_value(name)
            .map(|(k, v)| (k.as_str(), v))
    }

    /// Checks what serde cannot: the default handler exists, sizes are not zero.
    pub fn validate(&self) -> Result<(), String> {
        if !self
            .runtime_handlers
            .contains_key(&self.default_runtime_handler)
        {
            return Err(format!(
                "default_runtime_handler {:?} is not one of runtime_handlers ({})",
                self.default_runtime_handler,
                self.runtime_handlers
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        if let Some(name) = self.runtime_handlers.keys().find(|k| k.is_empty()) {
            return Err(format!("runtime handler name {name:?} is empty"));
        }
        if self.pod_shm_size_bytes == 0 {
            return Err(
                "pod_shm_size_bytes must be more than 0 (tmpfs reads 0 as no limit)".into(),
            );
        }
        if self.cni_timeout_seconds == 0 {
            return Err("cni_timeout_seconds must be more than 0".into());
        }
        Ok(())
    }

    /// The shim binary resolved: as given when it has a `/`, else next to the running
    /// executable, else in PATH.
    pub fn resolve_shim_binary(&self) -> Option<PathBuf> {
        if self.shim_binary.components().count() > 1 {
            return is_executable(&self.shim_binary).then(|| self.shim_binary.clone());
        }
        if let Some(dir) = std::env::current_exe()
            .ok()
            .and_then(|e| e.parent().map(Path::to_path_buf))
        {
            let p = dir.join(&self.shim_binary);
            if is_executable(&p) {
                return Some(p);
            }
        }
        find_in_path(&self.shim_binary)
    }
}

fn toml_value<T: Serialize>(v: &T) -> String {
    // A value alone is not a TOML document: render it as `x = <value>` and strip the key.
    #[derive(Serialize)]
    struct Wrap<'a, T: Serialize> {
        x: &'a T,
    }
    let doc = toml::to_string(&Wrap { x: v }).unwrap_or_default();
    doc.trim_end()
        .strip_prefix("x = ")
        .unwrap_or(doc.trim_end())
        .to_string()
}

/// The `[sandbox]` section body with a comment above every key, values from `Config::default()`.
pub fn commented_default() -> String {
    let d = Config::default();
    let handlers: Vec<String> = d
        .runtime_handlers
        .iter()
        .map(|(name, h)| {
            format!(
                "{} = {{ kind = {}, path = {} }}",
                toml_value(name),
                toml_value(&h.kind),
                toml_value(&h.path)
            )
        })
        .collect();
    format!(
        "# Directory searched (in file-name order) for the first CNI network config: .conflist, .conf, .json.\n\
         cni_conf_dir = {}\n\
         # Directories searched, in order, for CNI plugin binaries.\n\
         cni_bin_dirs = {}\n\
         # Runtime handler used when a pod names no RuntimeClass handler.\n\
         default_runtime_handler = {}\n\
         # Runtime handlers by name: kind \"oci\" (an OCI runtime such as runc, driven by crust-shim) or\n\
         # \"shim-v2\" (another containerd shim v2 binary); path is a file or a name looked up in PATH.\n\
         runtime_handlers = {{ {} }}\n\
         # The per-pod shim: a path, or a name looked up next to crustd and then in PATH.\n\
         shim_binary = {}\n\
         # Size limit of every pod's /dev/shm tmpfs, in bytes.\n\
         pod_shm_size_bytes = {}\n\
         # Seconds a CNI plugin may run before it is killed.\n\
         cni_timeout_seconds = {}\n",
        toml_value(&d.cni_conf_dir),
        toml_value(&d.cni_bin_dirs),
        toml_value(&d.default_runtime_handler),
        handlers.join(", "),
        toml_value(&d.shim_binary),
        d.pod_shm_size_bytes,
        d.cni_timeout_seconds,
    )
}

/// Whether the default runtime handler's binary is there and executable (for Status's
/// RuntimeReady). The error says what is missing.
pub fn runtime_ready(config: &Config) -> Result<(), String> {
    let (name, handler) = config.handler("").ok_or_else(|| {
        format!(
            "default runtime handler {:?} is not configured",
            config.default_runtime_handler
        )
    })?;
    resolve_binary(&handler.path).ok_or_else(|| {
        format!(
            "runtime handler {name:?}: binary {} not found or not executable",
            handler.path.display()
        )
    })?;
    if handler.kind == RuntimeKind::Oci && config.resolve_shim_binary().is_none() {
        return Err(format!(
            "shim binary {} not found next to crustd or in PATH",
            config.shim_binary.display()
        ));
    }
    Ok(())
}

/// A binary path as given when it has a `/`, else looked up in PATH.
pub fn resolve_binary(path: &Path) -> Option<PathBuf> {
    if path.components().count() > 1 {
        is_executable(path).then(|| path.to_path_buf())
    } else {
        find_in_path(path)
    }
}

fn find_in_path(name: &Path) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

pub(crate) fn is_executable(p: &Path) -> bool {
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commented_default_parses_to_default() {
        let text = commented_default();
        let parsed: Config = toml::from_str(&text).expect(&text);
        assert_eq!(parsed, Config::default());
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            assert!(line.contains(" = "), "{line}");
        }
        // A comment line above every key.
        let lines: Vec<&str> = text.lines().collect();
        for (i, l) in lines.iter().enumerate() {
            if !l.starts_with('#') {
                assert!(i > 0 && lines[i - 1].starts_with('#'), "{l}");
            }
        }
    }

    #[test]
    fn unknown_key_is_refused() {
        assert!(toml::from_str::<Config>("cni_conf_dirs = \"/x\"").is_err());
        assert!(
            toml::from_str::<Config>(
                "runtime_handlers = { a = { kind = \"oci\", path = \"x\", y = 1 } }"
            )
            .is_err()
        );
    }

    #[test]
    fn runtime_ready_checks_default_handler_binary() {
        let d = tempfile::tempdir().unwrap();
        let bin = d.path().join("fake-runc");
        std::fs::write(&bin, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut c = Config {
            shim_binary: bin.clone(),
            ..Config::default()
        };
        c.runtime_handlers.get_mut("runc").unwrap().path = bin.clone();
        assert_eq!(runtime_ready(&c), Ok(()));
        c.shim_binary = d.path().join("no-shim");
        assert!(runtime_ready(&c).unwrap_err().contains("shim binary"));
        c.shim_binary = bin.clone();
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(
            runtime_ready(&c)
                .unwrap_err()
                .contains("not found or not executable")
        );
        c.default_runtime_handler = "kata".into();
        assert!(runtime_ready(&c).unwrap_err().contains("not configured"));
    }

    #[test]
    fn validation() {
        assert_eq!(Config::default().validate(), Ok(()));
        let c = Config {
            default_runtime_handler: "kata".into(),
            ..Config::default()
        };
        assert!(c.validate().unwrap_err().contains("kata"));
        let c = Config {
            pod_shm_size_bytes: 0,
            ..Config::default()
        };
        assert!(c.validate().unwrap_err().contains("pod_shm_size_bytes"));
    }

    #[test]
    fn oci_runtime_of_a_shim_v2_handler_is_runc() {
        let h = RuntimeHandler {
            kind: RuntimeKind::ShimV2,
            path: "/usr/bin/containerd-shim-runc-v2".into(),
        };
        assert_eq!(h.oci_runtime(), Path::new("runc"));
        let h = RuntimeHandler {
            kind: RuntimeKind::Oci,
            path: "/usr/sbin/runc".into(),
        };
        assert_eq!(h.oci_runtime(), Path::new("/usr/sbin/runc"));
    }

    #[test]
    fn handler_lookup() {
        let c = Config::default();
        assert_eq!(c.handler("").map(|h| h.0), Some("runc"));
        assert_eq!(c.handler("runc").map(|h| h.0), Some("runc"));
        assert!(c.handler("kata").is_none());
    }
}

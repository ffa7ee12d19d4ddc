//! Finding and parsing the node's CNI network configuration.
//!
//! Like libcni's `ConfFiles` + kubelet's old ocicni: the conf dir is read in file-name order and
//! the first file with extension `.conflist`, `.conf` or `.json` that parses into a usable network
//! wins. A single-plugin `.conf`/`.json` is wrapped as a one-plugin list.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::CniError;

/// A CNI network configuration list (`.conflist`), or a single `.conf` wrapped as one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NetworkConfigList {
    pub name: String,
    pub cni_version: String,
    #[serde(default)]
    pub disable_check: bool,
    /// The plugin configurations, raw, as the plugins expect them (each has at least `type`).
    pub plugins: Vec<Value>,
    /// The file this came from (empty when built in memory).
    #[serde(default)]
    pub source: PathBuf,
}

impl NetworkConfigList {
    /// Parses the bytes of a `.conflist` file.
    pub fn from_conflist(bytes: &[u8], source: &Path) -> Result<Self, String> {
        let v: Value = serde_json::from_slice(bytes).map_err(|e| format!("invalid JSON: {e}"))?;
        let obj = v.as_object().ok_or("not a JSON object")?;
        let name = string_field(&v, "name")?;
        let cni_version = obj
            .get("cniVersion")
            .and_then(Value::as_str)
            .unwrap_or("0.4.0")
            .to_string();
        let disable_check = obj
            .get("disableCheck")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let plugins = obj
            .get("plugins")
            .and_then(Value::as_array)
            .ok_or("no \"plugins\" list")?
            .clone();
        if plugins.is_empty() {
            return Err("\"plugins\" list is empty".into());
        }
        for (i, p) in plugins.iter().enumerate() {
            string_field(p, "type").map_err(|e| format!("plugin {i}: {e}"))?;
        }
        Ok(Self {
            name,
            cni_version,
            disable_check,
            plugins,
            source: source.to_path_buf(),
        })
    }

    /// Parses the bytes of a single-plugin `.conf`/`.json` file and wraps it as a list.
    pub fn from_conf(bytes: &[u8], source: &Path) -> Result<Self, String> {
        let v: Value = serde_json::from_slice(bytes).map_err(|e| format!("invalid JSON: {e}"))?;
        if !v.is_object() {
            return Err("not a JSON object".into());
        }
        if v.get("plugins").is_some() {
            return Err("has a \"plugins\" list: name the file .conflist".into());
        }
        let name = string_field(&v, "name")?;
        string_field(&v, "type")?;
        let cni_version = v
            .get("cniVersion")
            .and_then(Value::as_str)
            .unwrap_or("0.4.0")
            .to_string();
        Ok(Self {
            name,
            cni_version,
            disable_check: false,
            plugins: vec![v],
            source: source.to_path_buf(),
        })
    }

    /// The plugin `type`s in order, e.g. `["bridge", "portmap"]`.
    pub fn plugin_types(&self) -> Vec<String> {
        self.plugins
            .iter()
            .filter_map(|p| p.get("type").and_then(Value::as_str).map(str::to_string))
            .collect()
    }

    /// Whether any plugin declares the given capability (e.g. `portMappings`).
    pub fn has_capability(&self, cap: &str) -> bool {
        self.plugins.iter().any(|p| {
            p.get("capabilities")
                .and_then(|c| c.get(cap))
                .and_then(Value::as_bool)
                .unwrap_or(false)
        })
    }
}

fn string_field(v: &Value, key: &str) -> Result<String, String> {
    match v.get(key) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        Some(_) => Err(format!("\"{key}\" is not a non-empty string")),
        None => Err(format!("no \"{key}\"")),
    }
}

/// Finds the first valid network configuration in `conf_dir` (file-name order; `.conflist`,
/// `.conf`, `.json`). Invalid files are skipped; if none is valid the error lists why each was
/// refused, so Status's `NetworkReady` message can say it.
pub fn find_network_config(conf_dir: &Path) -> Result<NetworkConfigList, CniError> {
    let entries = std::fs::read_dir(conf_dir).map_err(|e| CniError::NoNetworkConfig {
        dir: conf_dir.to_path_buf(),
        reason: format!("cannot read directory: {e}"),
    })?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            matches!(
                p.extension().and_then(|e| e.to_str()),
                Some("conflist" | "conf" | "json")
            )
        })
        .collect();
    files.sort();
    let mut refused = Vec::new();
    for file in &files {
        let bytes = match std::fs::read(file) {
            Ok(b) => b,
            Err(e) => {
                refused.push(format!("{}: {e}", file.display()));
                continue;
            }
        };
        let parsed = if file.extension().and_then(|e| e.to_str()) == Some("conflist") {
            NetworkConfigList::from_conflist(&bytes, file)
        } else {
            NetworkConfigList::from_conf(&bytes, file)
        };
        match parsed {
            Ok(list) => return Ok(list),
            Err(reason) => refused.push(format!("{}: {reason}", file.display())),
        }
    }
    let reason = if files.is_empty() {
        "no network config found (.conflist, .conf or .json)".to_string()
    } else {
        format!("no valid network config: {}", refused.join("; "))
    };
    Err(CniError::NoNetworkConfig {
        dir: conf_dir.to_path_buf(),
        reason,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, body: &str) {
        std::fs::write(dir.join(name), body).expect("write");
    }

    const LIST: &str = r#"{"cniVersion":"1.0.0","name":"net-a","plugins":[{"type":"bridge","bridge":"crust0"},{"type":"portmap","capabilities":{"portMappings":true}}]}"#;

    #[test]
    fn missing_dir_is_an_error_with_reason() {
        let err = find_network_config(Path::new("/nonexistent/crust/cni")).unwrap_err();
        assert!(err.to_string().contains("cannot read directory"), "{err}");
    }

    #[test]
    fn empty_dir_says_no_config() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "README", "not a config");
        let err = find_network_config(d.path()).unwrap_err();
        assert!(err.to_string().contains("no network config found"), "{err}");
    }

    #[test]
    fn conflist_is_parsed() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "10-a.conflist", LIST);
        let c = find_network_config(d.path()).unwrap();
        assert_eq!(c.name, "net-a");
        assert_eq!(c.cni_version, "1.0.0");
        assert_eq!(c.plugin_types(), vec!["bridge", "portmap"]);
        assert!(c.has_capability("portMappings"));
        assert_eq!(c.source, d.path().join("10-a.conflist"));
    }

    #[test]
    fn conf_is_wrapped_as_one_plugin_list() {
        let d = tempfile::tempdir().unwrap();
        write(
            d.path(),
            "05-b.conf",
            r#"{"cniVersion":"0.4.0","name":"net-b","type":"bridge"}"#,
        );
        write(d.path(), "10-a.conflist", LIST);
        let c = find_network_config(d.path()).unwrap();
        assert_eq!(c.name, "net-b");
        assert_eq!(c.plugins.len(), 1);
        assert_eq!(c.plugin_types(), vec!["bridge"]);
        assert!(!c.has_capability("portMappings"));
    }

    #[test]
    fn first_by_file_name_wins_and_invalid_ones_are_skipped() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "00-broken.conflist", "{ not json");
        write(
            d.path(),
            "01-noplugins.conflist",
            r#"{"name":"x","plugins":[]}"#,
        );
        write(d.path(), "02-notype.json", r#"{"name":"y"}"#);
        write(d.path(), "20-a.conflist", LIST);
        write(
            d.path(),
            "30-c.json",
            r#"{"cniVersion":"0.4.0","name":"net-c","type":"ptp"}"#,
        );
        let c = find_network_config(d.path()).unwrap();
        assert_eq!(c.name, "net-a");
    }

    #[test]
    fn only_invalid_files_lists_reasons() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "00-broken.conflist", "{ not json");
        write(d.path(), "01-noname.conf", r#"{"type":"bridge"}"#);
        let err = find_network_config(d.path()).unwrap_err().to_string();
        assert!(err.contains("00-broken.conflist: invalid JSON"), "{err}");
        assert!(err.contains("01-noname.conf: no \"name\""), "{err}");
    }
}

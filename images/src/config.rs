//! Configuration of the images crate: the `[images]` section of crustd's config.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// How crust pulls and keeps images.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Per registry host (as in a normalised reference: `docker.io`, `registry.k8s.io`,
    /// `127.0.0.1:5000`): mirrors, insecure access, credentials.
    pub registries: BTreeMap<String, RegistryConfig>,
    /// Hosts reached over plain HTTP, or over HTTPS without verifying the certificate.
    pub insecure_registries: Vec<String>,
    /// A containerd-style host directory (`<dir>/<host>/hosts.toml`, or Docker's
    /// `<dir>/<host>/{ca.crt,client.cert,client.key}`), e.g. `/etc/containerd/certs.d`;
    /// empty for none. A host with a directory there (or `_default`) is pulled from as
    /// it says, instead of by `registries`' mirrors.
    pub hosts_dir: String,
    /// A Docker `config.json`-style credentials file (`{"auths": {"host": {"auth": ...}}}`);
    /// empty for none. Used when a pull request carries no credentials.
    pub credentials_file: String,
    /// Images never removed by garbage collection and reported as pinned.
    pub pinned_images: Vec<String>,
    /// Layers downloaded at once, over all pulls.
    pub max_concurrent_downloads: usize,
    /// A download that receives no byte for this many seconds fails.
    pub no_progress_timeout_secs: u64,
    /// How often a failed request or dropped download is retried (with backoff).
    pub retries: u32,
}

/// Settings for one registry host.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RegistryConfig {
    /// Endpoints tried in order before the host itself, e.g. `http://127.0.0.1:5000`.
    /// A mirror without a scheme is reached over HTTPS.
    pub mirrors: Vec<String>,
    /// Reach the host itself over plain HTTP / unverified TLS.
    pub insecure: bool,
    /// Basic-auth user name.
    pub username: String,
    /// Basic-auth password.
    pub password: String,
    /// base64 of `user:password`, as in Docker's config.json.
    pub auth: String,
    /// An identity (refresh) token for the registry's token service.
    pub identity_token: String,
    /// A bearer token sent to the registry as is.
    pub registry_token: String,
    /// PEM files of CA certificates trusted for this host, besides the system's.
    pub ca: Vec<String>,
    /// A PEM client certificate presented to this host (mTLS); it may hold the key too.
    pub client_cert: String,
    /// The PEM private key of `client_cert`, if it is in a file of its own.
    pub client_key: String,
    /// HTTPS without verifying this host's certificate (no plain HTTP fallback).
    pub skip_verify: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            registries: BTreeMap::new(),
            insecure_registries: Vec::new(),
            hosts_dir: String::new(),
            credentials_file: String::new(),
            pinned_images: vec!["registry.k8s.io/pause:3.9".to_string()],
            max_concurrent_downloads: 3,
            no_progress_timeout_secs: 30,
            retries: 3,
        }
    }
}

/// The `[images]` section as a commented TOML fragment (no header), values from
/// [`Config::default`].
pub fn commented_default() -> String {
    let d = Config::default();
    let list = |v: &[String]| {
        let items: Vec<String> = v.iter().map(|s| format!("{s:?}")).collect();
        format!("[{}]", items.join(", "))
    };
    format!(
        r#"# Per registry host: mirrors tried in order before the host, insecure access, credentials.
# Example: registries = {{ "registry.k8s.io" = {{ mirrors = ["http://127.0.0.1:5000"] }}, "myreg.local:5000" = {{ insecure = true, username = "u", password = "p" }} }}
# TLS per host: ca = ["/etc/crust/certs/ca.pem"], client_cert = "client.pem", client_key = "client-key.pem",
# skip_verify = true (HTTPS without verification). Reloaded on SIGHUP, with hosts_dir (docs/registries.md).
registries = {{}}
# Hosts reached over plain HTTP, or HTTPS without certificate verification.
insecure_registries = {insecure}
# containerd's host directory layout (<dir>/<host>/hosts.toml, or Docker's ca.crt/client.cert/client.key),
# e.g. "/etc/containerd/certs.d"; "" = none. Re-read on SIGHUP.
hosts_dir = {hosts_dir:?}
# Docker config.json-style credentials file used when a pull carries no credentials ("" = none).
credentials_file = {cred:?}
# Images that garbage collection never removes (e.g. the pause image).
pinned_images = {pinned}
# Layers downloaded at once, across all pulls.
max_concurrent_downloads = {max}
# A download that receives nothing for this many seconds fails.
no_progress_timeout_secs = {timeout}
# Retries of a failed request or dropped download, with backoff.
retries = {retries}
"#,
        insecure = list(&d.insecure_registries),
        hosts_dir = d.hosts_dir,
        cred = d.credentials_file,
        pinned = list(&d.pinned_images),
        max = d.max_concurrent_downloads,
        timeout = d.no_progress_timeout_secs,
        retries = d.retries,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commented_default_parses_to_default() {
        let text = commented_default();
        for (i, line) in text.lines().enumerate() {
            if !line.starts_with('#') {
                let above = text.lines().nth(i.wrapping_sub(1)).unwrap_or("");
                assert!(above.starts_with('#'), "no comment above {line:?}");
            }
        }
        let parsed: Config = toml::from_str(&text).expect("parse");
        assert_eq!(parsed, Config::default());
    }

    #[test]
    fn registries_parse() {
        let c: Config = toml::from_str(
            r#"registries = { "registry.k8s.io" = { mirrors = ["http://127.0.0.1:5000"] } }"#,
        )
        .expect("parse");
        assert_eq!(
            c.registries["registry.k8s.io"].mirrors,
            vec!["http://127.0.0.1:5000".to_string()]
        );
        assert!(toml::from_str::<Config>("nope = 1").is_err());
    }
}

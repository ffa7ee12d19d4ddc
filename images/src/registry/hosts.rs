//! containerd's and Docker's registry host directories, read so that a node moving from
//! containerd keeps its registry set-up (containerd's `docs/hosts.md`):
//!
//! ```text
//! <hosts_dir>/<host>/hosts.toml           (host:port → directory `host_port_`, or `host:port`)
//! <hosts_dir>/_default/hosts.toml         for hosts without a directory of their own
//! <hosts_dir>/<host>/{*.crt, *.cert, *.key}   Docker's layout, when there is no hosts.toml
//! ```
//!
//! A `hosts.toml` lists `[host."<url>"]` mirrors, tried in the order of the file, then the
//! `server` (the registry itself; `https://<host>` when not given). Each may say
//! `capabilities` (`pull`, `resolve`, `push`; all when absent), `ca` (a file or a list),
//! `client` (a file holding certificate and key, a list of them, or a list of
//! `[cert, key]` pairs), `skip_verify`, `override_path` (the URL's path is the API root
//! itself, no `/v2` added) and `[header]` values sent with every request. Relative file
//! names are relative to the host's directory. A file that cannot be parsed is refused
//! with its path (containerd logs it and falls back to the certificate files).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::tls::{ClientPair, TlsFiles};
use crate::error::{Error, Result};

/// One place a host directory says to pull from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostEntry {
    /// Plain HTTP.
    pub http: bool,
    /// `host[:port]`; empty for the registry's own host.
    pub host: String,
    /// The API root, e.g. `/v2`.
    pub path: String,
    /// May resolve tags.
    pub resolve: bool,
    /// May serve manifests by digest and blobs.
    pub pull: bool,
    /// TLS files.
    pub tls: TlsFiles,
    /// Headers sent with every request.
    pub headers: Vec<(String, String)>,
    /// A `[host]` entry rather than the `server`.
    pub mirror: bool,
}

/// Every host directory under a root, read at once.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostsDir {
    /// By directory name.
    dirs: BTreeMap<String, Vec<HostEntry>>,
}

impl HostsDir {
    /// Reads every directory under `root`; a missing root is empty.
    pub fn load(root: &Path) -> Result<HostsDir> {
        let mut dirs = BTreeMap::new();
        let entries = match std::fs::read_dir(root) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(HostsDir::default()),
            Err(e) => {
                return Err(Error::InvalidArgument(format!(
                    "hosts_dir {}: {e}",
                    root.display()
                )));
            }
        };
        for entry in entries {
            let entry = entry.map_err(|e| {
                Error::InvalidArgument(format!("hosts_dir {}: {e}", root.display()))
            })?;
            let path = entry.path();
            if !path.is_dir() {
                continue;
            }
            let name = entry.file_name().to_string_lossy().into_owned();
            dirs.insert(name, load_host_dir(&path)?);
        }
        Ok(HostsDir { dirs })
    }

    /// Every entry of every directory.
    pub fn entries(&self) -> impl Iterator<Item = &HostEntry> {
        self.dirs.values().flatten()
    }

    /// The entries for registry host `host` (`host[:port]`): from its own directory
    /// (`host_port_`, then `host:port`), else from `_default`; `None` without either.
    pub fn hosts(&self, host: &str) -> Option<&[HostEntry]> {
        let mut names = Vec::new();
        if let Some((h, port)) = host.rsplit_once(':') {
            names.push(format!("{h}_{port}_"));
        }
        names.push(host.to_string());
        names.push("_default".to_string());
        names
            .iter()
            .find_map(|n| self.dirs.get(n))
            .map(Vec::as_slice)
    }
}

/// One host directory: its `hosts.toml`, else its certificate files.
fn load_host_dir(dir: &Path) -> Result<Vec<HostEntry>> {
    let file = dir.join("hosts.toml");
    match std::fs::read_to_string(&file) {
        Ok(text) if !text.trim().is_empty() => parse_hosts_toml(dir, &text)
            .map_err(|e| Error::InvalidArgument(format!("{}: {e}", file.display()))),
        Ok(_) => docker_cert_files(dir),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => docker_cert_files(dir),
        Err(e) => Err(Error::InvalidArgument(format!("{}: {e}", file.display()))),
    }
}

/// A file name or a list of them.
#[derive(Deserialize)]
#[serde(untagged)]
enum Files {
    One(String),
    Many(Vec<ClientFiles>),
}

/// An item of `client`: a file with both, or a `[cert, key]` pair.
#[derive(Deserialize)]
#[serde(untagged)]
enum ClientFiles {
    One(String),
    Pair(Vec<String>),
}

/// A header value: one or several.
#[derive(Deserialize)]
#[serde(untagged)]
enum HeaderValue {
    One(String),
    Many(Vec<String>),
}

/// The settings of a `[host]` table or of the top level.
#[derive(Deserialize, Default)]
#[serde(default)]
struct HostFile {
    capabilities: Option<Vec<String>>,
    ca: Option<Files>,
    client: Option<Files>,
    skip_verify: Option<bool>,
    header: BTreeMap<String, HeaderValue>,
    override_path: bool,
}

#[derive(Deserialize)]
struct HostsToml {
    #[serde(default)]
    server: String,
    #[serde(default)]
    host: toml::Table,
    #[serde(flatten)]
    top: HostFile,
}

/// Parses a `hosts.toml` of directory `dir`: its `[host]` entries in the order of the
/// file, then the server.
pub fn parse_hosts_toml(dir: &Path, text: &str) -> Result<Vec<HostEntry>, String> {
    let file: HostsToml = toml::from_str(text).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for (url, table) in file.host {
        let h: HostFile = table
            .try_into()
            .map_err(|e| format!("[host.{url:?}]: {e}"))?;
        out.push(entry(dir, &url, h, true).map_err(|e| format!("[host.{url:?}]: {e}"))?);
    }
    out.push(entry(dir, &file.server, file.top, false).map_err(|e| format!("server: {e}"))?);
    Ok(out)
}

fn entry(dir: &Path, url: &str, h: HostFile, mirror: bool) -> Result<HostEntry, String> {
    let (http, host, path) = if url.is_empty() {
        (false, String::new(), "/v2".to_string())
    } else {
        let with_scheme = if url.starts_with("http://") || url.starts_with("https://") {
            url.to_string()
        } else if url.contains("://") {
            return Err(format!("{url:?}: not an http(s) URL"));
        } else {
            format!("https://{url}")
        };
        let u = reqwest::Url::parse(&with_scheme).map_err(|e| format!("{url:?}: {e}"))?;
        if !matches!(u.scheme(), "http" | "https") || u.host_str().is_none() {
            return Err(format!("{url:?}: not an http(s) URL with a host"));
        }
        let host = match u.port() {
            Some(p) => format!("{}:{p}", u.host_str().unwrap_or_default()),
            None => u.host_str().unwrap_or_default().to_string(),
        };
        let p = u.path().trim_end_matches('/');
        let path = if h.override_path || p.ends_with("/v2") {
            p.to_string()
        } else {
            format!("{p}/v2")
        };
        (u.scheme() == "http", host, path)
    };
    let (mut resolve, mut pull) = (true, true);
    if let Some(caps) = &h.capabilities {
        (resolve, pull) = (false, false);
        for c in caps {
            match c.to_ascii_lowercase().as_str() {
                "pull" => pull = true,
                "resolve" => resolve = true,
                "push" => {}
                other => return Err(format!("unknown capability {other:?}")),
            }
        }
    }
    let (ca, client) = tls_files(dir, h.ca, h.client)?;
    let mut headers = Vec::new();
    for (k, v) in h.header {
        match v {
            HeaderValue::One(v) => headers.push((k, v)),
            HeaderValue::Many(vs) => headers.extend(vs.into_iter().map(|v| (k.clone(), v))),
        }
    }
    Ok(HostEntry {
        http,
        host,
        path,
        resolve,
        pull,
        tls: TlsFiles {
            ca,
            client,
            skip_verify: h.skip_verify.unwrap_or(false),
        },
        headers,
        mirror,
    })
}

/// The `ca` and `client` files of a host, relative to its directory `dir`.
fn tls_files(
    dir: &Path,
    ca: Option<Files>,
    client: Option<Files>,
) -> Result<(Vec<PathBuf>, Vec<ClientPair>), String> {
    let abs = |p: &str| {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            dir.join(p)
        }
    };
    let ca = match ca {
        None => Vec::new(),
        Some(Files::One(f)) => vec![abs(&f)],
        Some(Files::Many(list)) => list
            .into_iter()
            .map(|f| match f {
                ClientFiles::One(f) => Ok(abs(&f)),
                ClientFiles::Pair(_) => Err("ca: a list of file names".to_string()),
            })
            .collect::<Result<_, _>>()?,
    };
    let client = match client {
        None => Vec::new(),
        Some(Files::One(f)) => vec![(abs(&f), None)],
        Some(Files::Many(list)) => list
            .into_iter()
            .map(|f| match f {
                ClientFiles::One(f) => Ok((abs(&f), None)),
                ClientFiles::Pair(p) if p.len() == 2 => Ok((abs(&p[0]), Some(abs(&p[1])))),
                ClientFiles::Pair(p) => Err(format!("client: {p:?} is not a [cert, key] pair")),
            })
            .collect::<Result<_, _>>()?,
    };
    Ok((ca, client))
}

/// Docker's layout: `*.crt` CA certificates, `*.cert` client certificates with their
/// `*.key` (when there is one), for the registry's own host.
fn docker_cert_files(dir: &Path) -> Result<Vec<HostEntry>> {
    let err = |e: std::io::Error| Error::InvalidArgument(format!("{}: {e}", dir.display()));
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(err)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    names.sort();
    let mut tls = TlsFiles::default();
    for p in &names {
        match p.extension().and_then(|e| e.to_str()) {
            Some("crt") => tls.ca.push(p.clone()),
            Some("cert") => {
                let key = p.with_extension("key");
                tls.client.push((p.clone(), key.is_file().then_some(key)));
            }
            _ => {}
        }
    }
    Ok(vec![HostEntry {
        http: false,
        host: String::new(),
        path: "/v2".into(),
        resolve: true,
        pull: true,
        tls,
        headers: Vec::new(),
        mirror: false,
    }])
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOSTS: &str = r#"
server = "https://registry.example:5000/base"
capabilities = ["pull", "resolve"]
ca = "ca.pem"

[host."https://z-mirror.example"]
  capabilities = ["pull"]
  ca = ["/etc/certs/a.pem", "b.pem"]
  client = [["client.pem", "/keys/client.key"], "both.pem"]
  skip_verify = true
  [host."https://z-mirror.example".header]
    x-one = "1"
    x-many = ["a", "b"]

[host."http://a-mirror:5001/custom/api"]
  override_path = true
"#;

    #[test]
    fn hosts_toml_keeps_the_file_order_and_every_setting() {
        let dir = Path::new("/etc/containerd/certs.d/registry.example");
        let h = parse_hosts_toml(dir, HOSTS).unwrap();
        assert_eq!(h.len(), 3);
        let (z, a, server) = (&h[0], &h[1], &h[2]);
        assert_eq!(
            (z.host.as_str(), z.http, z.mirror),
            ("z-mirror.example", false, true)
        );
        assert_eq!((z.resolve, z.pull, z.path.as_str()), (false, true, "/v2"));
        assert_eq!(
            z.tls.ca,
            [PathBuf::from("/etc/certs/a.pem"), dir.join("b.pem")]
        );
        assert_eq!(
            z.tls.client,
            [
                (
                    dir.join("client.pem"),
                    Some(PathBuf::from("/keys/client.key"))
                ),
                (dir.join("both.pem"), None)
            ]
        );
        assert!(z.tls.skip_verify);
        let mut headers = z.headers.clone();
        headers.sort();
        assert_eq!(
            headers,
            [
                ("x-many".into(), "a".into()),
                ("x-many".into(), "b".into()),
                ("x-one".into(), "1".into())
            ]
        );
        assert_eq!(
            (a.host.as_str(), a.http, a.path.as_str()),
            ("a-mirror:5001", true, "/custom/api")
        );
        assert!(a.resolve && a.pull && a.tls == TlsFiles::default());
        assert_eq!(
            (server.host.as_str(), server.mirror),
            ("registry.example:5000", false)
        );
        assert_eq!(server.path, "/base/v2");
        assert_eq!(server.tls.ca, [dir.join("ca.pem")]);
        // No server: the registry's own host, at /v2.
        let h = parse_hosts_toml(dir, "[host.\"https://m\"]\n").unwrap();
        assert_eq!((h[1].host.as_str(), h[1].path.as_str()), ("", "/v2"));
    }

    #[test]
    fn hosts_toml_errors_name_what_is_wrong() {
        let dir = Path::new("/d");
        let err = parse_hosts_toml(dir, "capabilities = [\"fly\"]").unwrap_err();
        assert!(err.contains("unknown capability \"fly\""), "{err}");
        let err = parse_hosts_toml(
            dir,
            "[host.\"https://m\"]\nclient = [[\"a\", \"b\", \"c\"]]",
        )
        .unwrap_err();
        assert!(
            err.contains("[host.\"https://m\"]") && err.contains("pair"),
            "{err}"
        );
        let err = parse_hosts_toml(dir, "server = \"ftp://x\"").unwrap_err();
        assert!(err.contains("server"), "{err}");
        assert!(parse_hosts_toml(dir, "server = [").is_err());
    }

    #[test]
    fn host_directories_by_port_name_and_default() {
        let root = tempfile::tempdir().unwrap();
        let mk = |name: &str, toml: &str| {
            let d = root.path().join(name);
            std::fs::create_dir(&d).unwrap();
            std::fs::write(d.join("hosts.toml"), toml).unwrap();
        };
        mk("reg.example_5000_", "server = \"https://by-port\"");
        mk("other.example:6000", "server = \"https://by-colon\"");
        mk("_default", "server = \"https://default\"");
        // Docker's layout: CA files and a client pair, no hosts.toml.
        let docker = root.path().join("docker.example");
        std::fs::create_dir(&docker).unwrap();
        for f in [
            "ca.crt",
            "client.cert",
            "client.key",
            "other.cert",
            "README",
        ] {
            std::fs::write(docker.join(f), "x").unwrap();
        }
        let dirs = HostsDir::load(root.path()).unwrap();
        let server = |h: &str| dirs.hosts(h).unwrap().last().unwrap().host.clone();
        assert_eq!(server("reg.example:5000"), "by-port");
        assert_eq!(server("other.example:6000"), "by-colon");
        assert_eq!(server("unknown.example"), "default");
        let d = dirs.hosts("docker.example").unwrap();
        assert_eq!(d.len(), 1);
        assert_eq!((d[0].host.as_str(), d[0].mirror), ("", false));
        assert_eq!(d[0].tls.ca, [docker.join("ca.crt")]);
        assert_eq!(
            d[0].tls.client,
            [
                (docker.join("client.cert"), Some(docker.join("client.key"))),
                (docker.join("other.cert"), None)
            ]
        );
        assert_eq!(
            HostsDir::load(&root.path().join("absent")).unwrap(),
            HostsDir::default()
        );
        std::fs::write(root.path().join("_default/hosts.toml"), "server = 1").unwrap();
        let err = HostsDir::load(root.path()).unwrap_err().to_string();
        assert!(err.contains("_default/hosts.toml"), "{err}");
    }
}

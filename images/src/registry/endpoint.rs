//! Where a pull goes and how it connects: the endpoints of a registry host in the order
//! they are tried, the URL rules that decide where `Authorization` may go, and the HTTP
//! clients (the bottom of the registry stack: nothing here knows credentials or tokens).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use super::hosts::HostsDir;
use super::tls::{Tls, TlsFiles};
use crate::config::{Config, RegistryConfig};
use crate::error::{Error, Result};
use crate::reference::DOCKER_DOMAIN;

/// Most redirects followed for one request (as Go's net/http and containerd).
pub(crate) const MAX_REDIRECTS: usize = 10;

/// The `User-Agent` of every request.
const USER_AGENT: &str = concat!("crust/", env!("CARGO_PKG_VERSION"));

/// One place to fetch an image from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `host[:port]`.
    pub host: String,
    /// Plain HTTP.
    pub http: bool,
    /// HTTPS without certificate verification.
    pub skip_verify: bool,
    /// A mirror rather than the image's own registry.
    pub mirror: bool,
    /// The API root: `/v2`, or a mirror's own path (`override_path`).
    pub path: String,
    /// May resolve tags (`capabilities`).
    pub resolve: bool,
    /// May serve manifests by digest and blobs.
    pub pull: bool,
    /// CA certificates and client certificate.
    pub tls: Arc<Tls>,
    /// Headers sent with every request to it.
    pub headers: Vec<(String, String)>,
}

impl Endpoint {
    /// An endpoint of the registry's own `host`, as reached without any configuration.
    pub fn plain(host: &str, http: bool, skip_verify: bool) -> Endpoint {
        Endpoint {
            host: host.to_string(),
            http,
            skip_verify,
            mirror: false,
            path: "/v2".into(),
            resolve: true,
            pull: true,
            tls: Arc::default(),
            headers: Vec::new(),
        }
    }

    /// `<scheme>://<host>[:port]/` the endpoint's API is served at (`registry-1.docker.io`
    /// for `docker.io`). InvalidArgument if the host makes no URL.
    pub fn origin(&self) -> Result<reqwest::Url> {
        let scheme = if self.http { "http" } else { "https" };
        reqwest::Url::parse(&format!("{scheme}://{}/", api_host(&self.host)))
            .map_err(|e| Error::InvalidArgument(format!("registry host {:?}: {e}", self.host)))
    }
}

/// Whether `host` (`host[:port]`) is a loopback host, insecure as Docker treats them.
pub(crate) fn is_loopback(host: &str) -> bool {
    let h = host.rsplit_once(':').map_or(host, |(h, p)| {
        if p.bytes().all(|b| b.is_ascii_digit()) {
            h
        } else {
            host
        }
    });
    h == "localhost" || h.starts_with("127.") || h == "[::1]"
}

/// The registry set-up pulls work from: the `[images]` config and the host directory,
/// with every TLS file read and checked. Replaced whole when crustd reloads (SIGHUP).
#[derive(Debug, Clone)]
pub struct Registries {
    /// The config it was loaded from.
    pub config: Config,
    hosts: HostsDir,
    tls: HashMap<TlsFiles, Arc<Tls>>,
}

impl Registries {
    /// Reads `config`'s host directory and every TLS file it and `config` name;
    /// InvalidArgument naming the file when one is wrong.
    pub fn load(config: Config) -> Result<Registries> {
        let hosts = if config.hosts_dir.is_empty() {
            HostsDir::default()
        } else {
            HostsDir::load(Path::new(&config.hosts_dir))?
        };
        let mut tls = HashMap::new();
        let files = config
            .registries
            .values()
            .map(config_tls)
            .chain(hosts.entries().map(|e| e.tls.clone()));
        for f in files {
            if let std::collections::hash_map::Entry::Vacant(v) = tls.entry(f) {
                let loaded = Arc::new(v.key().load()?);
                v.insert(loaded);
            }
        }
        Ok(Registries { config, hosts, tls })
    }

    /// Hosts whose certificates go unverified wherever they are met (a token realm,
    /// a redirect): configured insecure or `skip_verify`.
    pub fn insecure_hosts(&self) -> Vec<String> {
        let c = &self.config;
        c.insecure_registries
            .iter()
            .cloned()
            .chain(
                c.registries
                    .iter()
                    .filter(|(_, r)| r.insecure || r.skip_verify)
                    .map(|(h, _)| h.clone()),
            )
            .collect()
    }

    fn tls(&self, files: &TlsFiles) -> Arc<Tls> {
        self.tls.get(files).cloned().unwrap_or_default()
    }

    /// Endpoints for `domain`, in the order to try them. From its host directory when
    /// there is one: the `[host]` entries, then the server. Else the configured mirrors,
    /// then the registry itself. An insecure host (configured, or loopback as Docker
    /// treats them unless TLS is configured for it) is tried over unverified HTTPS first
    /// and plain HTTP second.
    pub fn endpoints(&self, domain: &str) -> Vec<Endpoint> {
        if let Some(entries) = self.hosts.hosts(domain) {
            let mut out = Vec::new();
            for e in entries {
                let host = if e.host.is_empty() { domain } else { &e.host };
                let ep = Endpoint {
                    host: host.to_string(),
                    http: e.http,
                    skip_verify: e.tls.skip_verify,
                    // A `[host]` entry naming the registry itself is no mirror.
                    mirror: e.mirror && host != domain,
                    path: e.path.clone(),
                    resolve: e.resolve,
                    pull: e.pull,
                    tls: self.tls(&e.tls),
                    headers: e.headers.clone(),
                };
                self.push_with_fallback(&mut out, ep);
            }
            return out;
        }
        let mut out = Vec::new();
        let rc = self.config.registries.get(domain);
        for m in rc.map(|r| r.mirrors.as_slice()).unwrap_or_default() {
            let (scheme, rest) = match m.split_once("://") {
                Some((s, r)) => (s, r),
                None => ("https", m.as_str()),
            };
            let host = rest.split('/').next().unwrap_or(rest).to_string();
            if host.is_empty() {
                continue;
            }
            let mut ep = self.configured(&host, scheme == "http");
            ep.mirror = true;
            out.push(ep);
        }
        let ep = self.configured(domain, false);
        self.push_with_fallback(&mut out, ep);
        out
    }

    /// `host` as `[images.registries]` and `insecure_registries` configure it.
    fn configured(&self, host: &str, http: bool) -> Endpoint {
        let rc = self.config.registries.get(host);
        let files = rc.map(config_tls).unwrap_or_default();
        let mut ep = Endpoint::plain(host, http, files.skip_verify || self.insecure(host));
        ep.tls = self.tls(&files);
        ep
    }

    /// Configured insecure: plain HTTP allowed, certificates not verified.
    fn insecure(&self, host: &str) -> bool {
        self.config.insecure_registries.iter().any(|h| h == host)
            || self.config.registries.get(host).is_some_and(|r| r.insecure)
    }

    /// Adds `ep`, and after it the same host over plain HTTP when it is insecure: so
    /// configured, or loopback without TLS settings of its own.
    fn push_with_fallback(&self, out: &mut Vec<Endpoint>, mut ep: Endpoint) {
        let tls_set = ep.tls.is_configured() || ep.skip_verify;
        let insecure = self.insecure(&ep.host) || (is_loopback(&ep.host) && !tls_set);
        if ep.http || !insecure {
            out.push(ep);
            return;
        }
        ep.skip_verify = true;
        let mut http = ep.clone();
        http.http = true;
        http.skip_verify = false;
        out.push(ep);
        out.push(http);
    }
}

/// The TLS files `[images.registries."<host>"]` names.
fn config_tls(r: &RegistryConfig) -> TlsFiles {
    TlsFiles {
        ca: r.ca.iter().map(PathBuf::from).collect(),
        client: if r.client_cert.is_empty() {
            Vec::new()
        } else {
            let key = (!r.client_key.is_empty()).then(|| PathBuf::from(&r.client_key));
            vec![(PathBuf::from(&r.client_cert), key)]
        },
        skip_verify: r.skip_verify,
    }
}

/// Endpoints for `domain` under `config` alone (no host directory, no TLS files).
#[cfg(test)]
pub fn endpoints(config: &Config, domain: &str) -> Vec<Endpoint> {
    let plain = Config {
        hosts_dir: String::new(),
        ..config.clone()
    };
    Registries {
        config: plain,
        hosts: HostsDir::default(),
        tls: HashMap::new(),
    }
    .endpoints(domain)
}

/// The host serving the registry API of `host` (Docker Hub's is not served at its name).
pub fn api_host(host: &str) -> &str {
    match host {
        DOCKER_DOMAIN => "registry-1.docker.io",
        h => h,
    }
}

/// Whether `a` and `b` have the same scheme, host and port (the port a scheme implies
/// counts as given).
pub fn same_origin(a: &reqwest::Url, b: &reqwest::Url) -> bool {
    a.scheme() == b.scheme()
        && a.host_str().map(str::to_ascii_lowercase) == b.host_str().map(str::to_ascii_lowercase)
        && a.port_or_known_default() == b.port_or_known_default()
}

/// `host[:port]` of `u`, the port only when the URL gives one, as hosts are configured.
pub fn authority(u: &reqwest::Url) -> String {
    let host = u.host_str().unwrap_or("").to_ascii_lowercase();
    match u.port() {
        Some(p) => format!("{host}:{p}"),
        None => host,
    }
}

/// `url` without its query and fragment, for messages: a redirect to blob storage
/// carries a signature there.
pub fn shown(url: &reqwest::Url) -> String {
    let mut u = url.clone();
    u.set_query(None);
    u.set_fragment(None);
    u.to_string()
}

/// An error with its sources, `a: b: c` (reqwest's own message alone rarely says why).
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let m = s.to_string();
        if !out.contains(&m) {
            out.push_str(": ");
            out.push_str(&m);
        }
        cur = s.source();
    }
    out
}

/// The HTTP clients for registries, token services and the storage they redirect to:
/// one per TLS setting (CA certificates, client certificate, verification), each with
/// its connection pool, built on first use and kept (building a TLS client costs
/// milliseconds). The clients follow no redirects: the registry client does, to decide
/// where `Authorization` goes.
pub struct Transport {
    connect_timeout: Duration,
    clients: Mutex<HashMap<String, reqwest::Client>>,
    /// Hosts (`host[:port]`) whose certificates go unverified wherever they are met.
    insecure: RwLock<HashSet<String>>,
}

impl Transport {
    /// HTTP clients connecting within `connect_timeout`; certificates are not verified
    /// for `insecure` hosts (`host[:port]`, loopback hosts too).
    pub fn new(
        connect_timeout: Duration,
        insecure: impl IntoIterator<Item = String>,
    ) -> Result<Self> {
        let t = Transport {
            connect_timeout,
            clients: Mutex::new(HashMap::new()),
            insecure: RwLock::new(HashSet::new()),
        };
        t.set_insecure(insecure);
        // The two plain clients are there from the start: a bad TLS set-up of the
        // machine shows at once.
        t.client(&Tls::default(), false)?;
        t.client(&Tls::default(), true)?;
        Ok(t)
    }

    /// Replaces the hosts configured insecure (a reload).
    pub fn set_insecure(&self, insecure: impl IntoIterator<Item = String>) {
        *self.insecure.write().unwrap_or_else(|p| p.into_inner()) = insecure
            .into_iter()
            .map(|h| h.to_ascii_lowercase())
            .collect();
    }

    fn client(&self, tls: &Tls, skip_verify: bool) -> Result<reqwest::Client> {
        let key = format!("{}\0{skip_verify}", tls.key());
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = clients.get(&key) {
            return Ok(c.clone());
        }
        let b = reqwest::Client::builder()
            .connect_timeout(self.connect_timeout)
            .user_agent(USER_AGENT)
            .redirect(reqwest::redirect::Policy::none());
        let c = tls
            .apply(b, skip_verify)?
            .build()
            .map_err(|e| Error::Internal(format!("registry HTTP client: {}", chain(&e))))?;
        // Settings that are no longer configured (a reload) leave their clients here;
        // a bound keeps that small.
        if clients.len() >= 64 {
            clients.clear();
        }
        clients.insert(key, c.clone());
        Ok(c)
    }

    /// The HTTP client for `ep` (its TLS settings; certificates verified unless
    /// `skip_verify`).
    pub fn http(&self, ep: &Endpoint) -> Result<reqwest::Client> {
        self.client(&ep.tls, ep.skip_verify)
    }

    /// Whether certificates go unverified at `url`, reached while talking to `ep` (a
    /// redirect target, a token realm): only at the endpoint's own host when the
    /// endpoint is insecure, or at a host configured insecure (or loopback).
    fn unverified_at(&self, ep: &Endpoint, url: &reqwest::Url) -> bool {
        let host = authority(url);
        let same_host = ep.skip_verify
            && ep
                .origin()
                .ok()
                .and_then(|o| o.host_str().map(str::to_ascii_lowercase))
                == url.host_str().map(str::to_ascii_lowercase);
        same_host
            || self
                .insecure
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .contains(&host)
            || is_loopback(&host)
    }

    /// The HTTP client for `url`, reached while talking to `ep`: the endpoint's CA and
    /// client certificates, its certificates verified unless [`Self::unverified_at`].
    pub fn http_for(&self, ep: &Endpoint, url: &reqwest::Url) -> Result<reqwest::Client> {
        self.client(&ep.tls, self.unverified_at(ep, url))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RegistryConfig;

    #[test]
    fn endpoints_mirrors_first() {
        let mut c = Config::default();
        c.registries.insert(
            "registry.k8s.io".into(),
            RegistryConfig {
                mirrors: vec!["http://127.0.0.1:5000".into(), "mirror.example".into()],
                ..Default::default()
            },
        );
        let e = endpoints(&c, "registry.k8s.io");
        assert_eq!(e.len(), 3);
        assert_eq!(
            (e[0].host.as_str(), e[0].http, e[0].mirror),
            ("127.0.0.1:5000", true, true)
        );
        assert_eq!((e[1].host.as_str(), e[1].http), ("mirror.example", false));
        assert_eq!(
            (e[2].host.as_str(), e[2].mirror),
            ("registry.k8s.io", false)
        );
        let e = endpoints(&c, "127.0.0.1:5000");
        assert_eq!(e.len(), 2, "loopback: https unverified, then http");
        assert!(e[0].skip_verify && !e[0].http && e[1].http);
    }

    fn endpoint(host: &str, http: bool, skip_verify: bool) -> Endpoint {
        Endpoint::plain(host, http, skip_verify)
    }

    #[test]
    fn tls_verification_follows_the_host() {
        let t = Transport::new(Duration::from_secs(1), ["insecure.example".to_string()]).unwrap();
        let url = |u: &str| reqwest::Url::parse(u).unwrap();
        let unverified = |e: &Endpoint, u: &str| t.unverified_at(e, &url(u));
        let insecure = endpoint("reg.example:5000", false, true);
        assert!(unverified(&insecure, "https://reg.example:5000/token"));
        assert!(
            unverified(&insecure, "https://reg.example/token"),
            "its host"
        );
        assert!(
            !unverified(&insecure, "https://auth.example/token"),
            "another host"
        );
        assert!(
            unverified(&insecure, "https://insecure.example/t"),
            "configured"
        );
        let secure = endpoint("reg.example", false, false);
        assert!(!unverified(&secure, "https://reg.example/token"));
        assert!(unverified(&secure, "https://insecure.example/t"));
    }

    #[test]
    fn a_host_directory_replaces_the_configured_mirrors() {
        let root = tempfile::tempdir().unwrap();
        let d = root.path().join("docker.io");
        std::fs::create_dir(&d).unwrap();
        std::fs::write(
            d.join("hosts.toml"),
            "[host.\"https://mirror-b.example\"]\ncapabilities = [\"pull\"]\n\
             [host.\"http://127.0.0.1:5000\"]\n",
        )
        .unwrap();
        let local = root.path().join("127.0.0.1_5001_");
        std::fs::create_dir(&local).unwrap();
        std::fs::write(local.join("hosts.toml"), "skip_verify = true\n").unwrap();
        let mut c = Config {
            hosts_dir: root.path().display().to_string(),
            ..Default::default()
        };
        c.registries.insert(
            "docker.io".into(),
            RegistryConfig {
                mirrors: vec!["https://ignored.example".into()],
                ..Default::default()
            },
        );
        let r = Registries::load(c).unwrap();
        let e = r.endpoints("docker.io");
        let got: Vec<_> = e
            .iter()
            .map(|e| (e.host.as_str(), e.http, e.mirror, e.resolve, e.pull))
            .collect();
        assert_eq!(
            got,
            [
                ("mirror-b.example", false, true, false, true),
                ("127.0.0.1:5000", true, true, true, true),
                ("docker.io", false, false, true, true),
            ]
        );
        assert_eq!(
            e[2].origin().unwrap().as_str(),
            "https://registry-1.docker.io/"
        );
        // Loopback with TLS settings of its own: no plain HTTP fallback.
        let e = r.endpoints("127.0.0.1:5001");
        assert_eq!(e.len(), 1);
        assert!(e[0].skip_verify && !e[0].http);
        // Without a directory (and no _default): the configuration.
        let e = r.endpoints("quay.io");
        assert_eq!((e.len(), e[0].host.as_str()), (1, "quay.io"));
    }

    #[test]
    fn a_bad_tls_file_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "not a certificate").unwrap();
        let mut c = Config::default();
        c.registries.insert(
            "r.example".into(),
            RegistryConfig {
                ca: vec![ca.display().to_string()],
                ..Default::default()
            },
        );
        let err = Registries::load(c.clone()).unwrap_err().to_string();
        assert!(
            err.contains("ca.pem") && err.contains("no PEM certificate"),
            "{err}"
        );
        c.registries.get_mut("r.example").unwrap().ca = vec!["/nonexistent/ca.pem".into()];
        let err = Registries::load(c).unwrap_err().to_string();
        assert!(err.contains("/nonexistent/ca.pem"), "{err}");
    }
}

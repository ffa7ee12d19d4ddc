//! Where a pull goes and how it connects: the endpoints of a registry host in the order
//! they are tried, the URL rules that decide where `Authorization` may go, and the HTTP
//! clients (the bottom of the registry stack: nothing here knows credentials or tokens).

use std::collections::HashSet;
use std::time::Duration;

use crate::config::Config;
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
}

impl Endpoint {
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

/// Endpoints for `domain`, in the order to try them: configured mirrors, then the
/// registry itself. Insecure hosts (configured, or loopback as Docker treats them) are
/// tried over unverified HTTPS first and plain HTTP second.
pub fn endpoints(config: &Config, domain: &str) -> Vec<Endpoint> {
    let mut out = Vec::new();
    let rc = config.registries.get(domain);
    for m in rc.map(|r| r.mirrors.as_slice()).unwrap_or_default() {
        let (scheme, rest) = match m.split_once("://") {
            Some((s, r)) => (s, r),
            None => ("https", m.as_str()),
        };
        let host = rest.split('/').next().unwrap_or(rest).to_string();
        if host.is_empty() {
            continue;
        }
        let insecure = config.insecure_registries.contains(&host)
            || config.registries.get(&host).is_some_and(|r| r.insecure);
        out.push(Endpoint {
            http: scheme == "http",
            skip_verify: insecure,
            host,
            mirror: true,
        });
    }
    let insecure = rc.is_some_and(|r| r.insecure)
        || config.insecure_registries.iter().any(|h| h == domain)
        || is_loopback(domain);
    out.push(Endpoint {
        host: domain.to_string(),
        http: false,
        skip_verify: insecure,
        mirror: false,
    });
    if insecure {
        out.push(Endpoint {
            host: domain.to_string(),
            http: true,
            skip_verify: false,
            mirror: false,
        });
    }
    out
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
/// one verifying certificates and one not, each with its TLS setup and connection pool.
/// One per image store: building a TLS client costs milliseconds. The clients follow no
/// redirects: the registry client does, to decide where `Authorization` goes.
pub struct Transport {
    verified: reqwest::Client,
    unverified: reqwest::Client,
    /// Hosts (`host[:port]`) configured insecure: HTTPS without verifying certificates.
    insecure: HashSet<String>,
}

impl Transport {
    /// HTTP clients connecting within `connect_timeout`; certificates are not verified
    /// for `insecure` hosts (`host[:port]`, loopback hosts too).
    pub fn new(
        connect_timeout: Duration,
        insecure: impl IntoIterator<Item = String>,
    ) -> Result<Self> {
        let build = |skip_verify: bool| {
            reqwest::Client::builder()
                .connect_timeout(connect_timeout)
                .user_agent(USER_AGENT)
                .redirect(reqwest::redirect::Policy::none())
                .tls_danger_accept_invalid_certs(skip_verify)
                .build()
                .map_err(|e| Error::Internal(format!("registry HTTP client: {e}")))
        };
        Ok(Transport {
            verified: build(false)?,
            unverified: build(true)?,
            insecure: insecure
                .into_iter()
                .map(|h| h.to_ascii_lowercase())
                .collect(),
        })
    }

    /// The HTTP client for `ep` (certificates verified unless `skip_verify`).
    pub fn http(&self, ep: &Endpoint) -> &reqwest::Client {
        if ep.skip_verify {
            &self.unverified
        } else {
            &self.verified
        }
    }

    /// The HTTP client for `url`, reached while talking to `ep` (a redirect target, a
    /// token realm): certificates go unverified only at the endpoint's own host when
    /// the endpoint is insecure, or at a host configured insecure (or loopback).
    pub fn http_for(&self, ep: &Endpoint, url: &reqwest::Url) -> &reqwest::Client {
        let host = authority(url);
        let same_host = ep.skip_verify
            && ep
                .origin()
                .ok()
                .and_then(|o| o.host_str().map(str::to_ascii_lowercase))
                == url.host_str().map(str::to_ascii_lowercase);
        if same_host || self.insecure.contains(&host) || is_loopback(&host) {
            &self.unverified
        } else {
            &self.verified
        }
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
        Endpoint {
            host: host.into(),
            http,
            skip_verify,
            mirror: false,
        }
    }

    #[test]
    fn tls_verification_follows_the_host() {
        let t = Transport::new(Duration::from_secs(1), ["insecure.example".to_string()]).unwrap();
        let url = |u: &str| reqwest::Url::parse(u).unwrap();
        let unverified =
            |e: &Endpoint, u: &str| std::ptr::eq(t.http_for(e, &url(u)), &t.unverified);
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
}

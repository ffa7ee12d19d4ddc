//! Talking to registries: endpoints (mirrors first, then the host), credentials,
//! manifests and blobs over the distribution v2 API, with `reqwest`.
//!
//! Every request goes straight to the registry, with what [`crate::auth`] knows of its
//! authorization (no `GET /v2/` first); a 401 is answered there and the request is sent
//! once more. Redirects are followed here, not by reqwest, so that `Authorization` never
//! leaves the endpoint and a redirect target's answers are not taken for the registry's
//! (`RegistryClient::get`). Blob bodies are streamed here chunk by chunk to the caller,
//! with resume by Range request, bounded retries with backoff, and a no-progress timeout.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use reqwest::StatusCode;
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_RANGE, LOCATION, RANGE};
use serde::Deserialize;
use tokio::sync::mpsc;

use crate::auth::{Access, Authenticator, Creds, RegistryAuth, authority, chain, same_origin};
use crate::config::{Config, RegistryConfig};
use crate::error::{Error, Result};
use crate::reference::{DOCKER_DOMAIN, Reference};

/// Most redirects followed for one request (as Go's net/http and containerd).
pub(crate) const MAX_REDIRECTS: usize = 10;

/// Longest `Retry-After` of a 429 waited for (and at most half the no-progress
/// timeout); a longer one gives up.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(5);

/// The `Retry-After` of an answer in seconds, if it gives seconds (not a date).
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

/// `url` without its query and fragment, for messages: a redirect to blob storage
/// carries a signature there.
fn shown(url: &reqwest::Url) -> String {
    let mut u = url.clone();
    u.set_query(None);
    u.set_fragment(None);
    u.to_string()
}

/// Media types of manifests and indexes we accept.
const MANIFEST_TYPES: &[&str] = &[
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];

/// Registry credentials, as CRI's `AuthConfig` carries them.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Auth {
    /// User name for basic auth.
    pub username: String,
    /// Password for basic auth.
    pub password: String,
    /// base64 of `username:password`.
    pub auth: String,
    /// Identity (refresh) token.
    pub identity_token: String,
    /// A bearer token for the registry itself.
    pub registry_token: String,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

impl Auth {
    fn is_empty(&self) -> bool {
        *self == Auth::default()
    }

    fn from_registry_config(c: &RegistryConfig) -> Auth {
        Auth {
            username: c.username.clone(),
            password: c.password.clone(),
            auth: c.auth.clone(),
            identity_token: c.identity_token.clone(),
            registry_token: c.registry_token.clone(),
        }
    }

    /// Turns CRI credentials into what is sent to a registry, plus the identity token for
    /// the OAuth2 refresh-token grant ([`crate::auth`]). A registry token is the bearer
    /// token itself. With an identity token, the basic credentials (for a `Basic`
    /// challenge, or the GET token request of a token service without OAuth2) are the
    /// user name and password if a password is given, else the user name (or `<token>`)
    /// and the identity token, as Docker and containerd send them.
    fn to_creds(&self) -> Result<Creds> {
        if !self.registry_token.is_empty() {
            return Ok(RegistryAuth::Bearer(self.registry_token.clone()).into());
        }
        if !self.identity_token.is_empty() {
            let basic = if !self.password.is_empty() {
                RegistryAuth::Basic(self.username.clone(), self.password.clone())
            } else {
                let user = if self.username.is_empty() {
                    "<token>".to_string()
                } else {
                    self.username.clone()
                };
                RegistryAuth::Basic(user, self.identity_token.clone())
            };
            return Ok(Creds {
                auth: basic,
                identity_token: Some(self.identity_token.clone()),
            });
        }
        if !self.username.is_empty() || !self.password.is_empty() {
            return Ok(RegistryAuth::Basic(self.username.clone(), self.password.clone()).into());
        }
        if !self.auth.is_empty() {
            let raw = base64::engine::general_purpose::STANDARD
                .decode(self.auth.trim())
                .map_err(|e| Error::InvalidArgument(format!("auth is not base64: {e}")))?;
            let text = String::from_utf8(raw)
                .map_err(|_| Error::InvalidArgument("auth is not UTF-8".into()))?;
            let (u, p) = text
                .split_once(':')
                .ok_or_else(|| Error::InvalidArgument("auth is not user:password".into()))?;
            return Ok(RegistryAuth::Basic(u.to_string(), p.to_string()).into());
        }
        Ok(RegistryAuth::Anonymous.into())
    }
}

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

#[derive(Deserialize)]
struct DockerConfigFile {
    #[serde(default)]
    auths: BTreeMap<String, DockerAuthEntry>,
}

#[derive(Deserialize, Default)]
struct DockerAuthEntry {
    #[serde(default)]
    auth: String,
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    #[serde(default, rename = "identitytoken")]
    identity_token: String,
    #[serde(default, rename = "registrytoken")]
    registry_token: String,
}

fn normalize_host_key(k: &str) -> String {
    let k = k.split_once("://").map_or(k, |(_, r)| r);
    let k = k.split('/').next().unwrap_or(k);
    match k {
        "index.docker.io" | "registry-1.docker.io" => DOCKER_DOMAIN.to_string(),
        k => k.to_string(),
    }
}

/// Credentials for `host`: from the request if the host is the image's own registry,
/// else from the config, else from the credentials file.
pub fn credentials(
    config: &Config,
    host: &str,
    own_registry: bool,
    request: Option<&Auth>,
) -> Result<Creds> {
    if own_registry
        && let Some(a) = request
        && !a.is_empty()
    {
        return a.to_creds();
    }
    if let Some(rc) = config.registries.get(host) {
        let a = Auth::from_registry_config(rc);
        if !a.is_empty() {
            return a.to_creds();
        }
    }
    if !config.credentials_file.is_empty() {
        let text = match std::fs::read(&config.credentials_file) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(RegistryAuth::Anonymous.into());
            }
            Err(e) => return Err(Error::io(format!("read {}", config.credentials_file), e)),
        };
        let file: DockerConfigFile = serde_json::from_slice(&text).map_err(|e| {
            Error::InvalidArgument(format!("credentials file {}: {e}", config.credentials_file))
        })?;
        for (k, e) in file.auths {
            if normalize_host_key(&k) == host {
                return Auth {
                    username: e.username,
                    password: e.password,
                    auth: e.auth,
                    identity_token: e.identity_token,
                    registry_token: e.registry_token,
                }
                .to_creds();
            }
        }
    }
    Ok(RegistryAuth::Anonymous.into())
}

/// Longest manifest or index accepted (containerd's limit too).
const MAX_MANIFEST: u64 = 4 << 20;

/// Longest config blob accepted, whatever size the manifest states.
const MAX_CONFIG: u64 = 16 << 20;

/// The error for a registry's answer `status` (not 2xx) to a request for `what` at
/// `url`, with the start of the answer's body. Registries explain 4xx answers with an
/// error envelope (`{"errors":[{"code":…}]}`) whose code is used when the status says
/// little.
fn status_error(what: &str, url: &str, status: StatusCode, body: &[u8]) -> Error {
    #[derive(Deserialize)]
    struct Envelope {
        #[serde(default)]
        errors: Vec<Code>,
    }
    #[derive(Deserialize)]
    struct Code {
        #[serde(default)]
        code: String,
    }
    let text = String::from_utf8_lossy(&body[..body.len().min(300)]);
    let msg = format!("{what}: {status} from {url}: {}", text.trim());
    match status.as_u16() {
        404 => return Error::NotFound(msg),
        401 | 403 => return Error::Unauthenticated(msg),
        429 | 500..=599 => return Error::Unavailable(msg),
        _ => {}
    }
    let code = serde_json::from_slice::<Envelope>(body)
        .ok()
        .and_then(|e| e.errors.into_iter().next())
        .map(|c| c.code);
    match code.as_deref() {
        Some("MANIFEST_UNKNOWN" | "NAME_UNKNOWN" | "BLOB_UNKNOWN" | "NOT_FOUND") => {
            Error::NotFound(msg)
        }
        Some("UNAUTHORIZED" | "DENIED") => Error::Unauthenticated(msg),
        Some("TOOMANYREQUESTS") => Error::Unavailable(msg),
        _ => Error::BadContent(msg),
    }
}

/// Reads the whole body of `resp`, refusing more than `limit` bytes.
async fn read_body(mut resp: reqwest::Response, limit: u64, what: &str) -> Result<Bytes> {
    if resp.content_length().is_some_and(|n| n > limit) {
        return Err(Error::BadContent(format!(
            "{what}: larger than {limit} bytes"
        )));
    }
    let mut out = Vec::new();
    while let Some(c) = resp.chunk().await.map_err(|e| {
        Error::Unavailable(format!(
            "{what}: connection lost at byte {}: {}",
            out.len(),
            chain(&e)
        ))
    })? {
        if (out.len() + c.len()) as u64 > limit {
            return Err(Error::BadContent(format!(
                "{what}: larger than {limit} bytes"
            )));
        }
        out.extend_from_slice(&c);
    }
    Ok(Bytes::from(out))
}

/// `start` of a `Content-Range: bytes <start>-<end>/<size>` value.
fn range_start(v: &str) -> Option<u64> {
    v.trim()
        .strip_prefix("bytes ")?
        .split('-')
        .next()?
        .trim()
        .parse()
        .ok()
}

/// Retry policy and timeouts for one pull.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// Retries after the first attempt.
    pub retries: u32,
    /// Longest silence from the registry before an attempt fails.
    pub no_progress: Duration,
}

impl Policy {
    fn backoff(attempt: u32) -> Duration {
        Duration::from_millis(200u64.saturating_mul(1 << attempt.min(6)))
    }

    /// Runs `f` (the request `what` to `host`) until it succeeds, fails with a
    /// non-transient error, or retries run out.
    async fn retry<T, F, Fut>(&self, what: &str, host: &str, mut f: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let mut attempt = 0;
        loop {
            let r = match tokio::time::timeout(self.no_progress, f()).await {
                Ok(r) => r,
                Err(_) => Err(Error::Unavailable(format!(
                    "{what}: no response from {host} in {}s",
                    self.no_progress.as_secs_f32()
                ))),
            };
            match r {
                Err(Error::Unavailable(m)) if attempt < self.retries => {
                    tracing::debug!("retrying after: {m}");
                    tokio::time::sleep(Self::backoff(attempt)).await;
                    attempt += 1;
                }
                r => return r,
            }
        }
    }
}

/// A descriptor as found in manifests.
#[derive(Debug, Clone, Deserialize)]
pub struct Descriptor {
    /// Media type.
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    /// Content digest.
    pub digest: String,
    /// Size in bytes.
    #[serde(default)]
    pub size: i64,
    #[serde(default)]
    platform: Option<Platform>,
}

#[derive(Debug, Clone, Deserialize)]
struct Platform {
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    os: String,
    #[serde(default)]
    variant: Option<String>,
}

/// An image manifest, Docker schema2 or OCI, or an index / manifest list.
#[derive(Debug, Clone, Deserialize)]
pub struct Manifest {
    #[serde(rename = "schemaVersion", default)]
    schema_version: i64,
    #[serde(rename = "mediaType", default)]
    media_type: Option<String>,
    /// The config blob.
    #[serde(default)]
    pub config: Option<Descriptor>,
    /// Layers, bottom first.
    #[serde(default)]
    pub layers: Vec<Descriptor>,
    #[serde(default)]
    manifests: Vec<Descriptor>,
}

impl Manifest {
    fn is_index(&self) -> bool {
        matches!(
            self.media_type.as_deref(),
            Some(
                "application/vnd.oci.image.index.v1+json"
                    | "application/vnd.docker.distribution.manifest.list.v2+json"
            )
        ) || (self.config.is_none() && !self.manifests.is_empty())
    }
}

/// This node's platform in OCI terms.
pub fn node_platform() -> (&'static str, &'static str) {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        a => a,
    };
    ("linux", arch)
}

fn pick_platform(index: &Manifest) -> Option<&Descriptor> {
    let (os, arch) = node_platform();
    let matching = index.manifests.iter().filter(|d| {
        d.platform
            .as_ref()
            .is_some_and(|p| p.os == os && p.architecture == arch)
    });
    // Prefer the plain variant (or v8 on arm64) when several match.
    let mut best = None;
    for d in matching {
        let v = d.platform.as_ref().and_then(|p| p.variant.as_deref());
        if v.is_none() || v == Some("v8") {
            return Some(d);
        }
        best.get_or_insert(d);
    }
    best
}

/// What a reference resolved to.
pub struct Resolved {
    /// Digest of what the reference names (the index, for multi-arch images).
    pub repo_digest: String,
    /// The platform's image manifest.
    pub manifest: Manifest,
    /// Digest of that manifest.
    pub manifest_digest: String,
    /// Raw manifests fetched (index and manifest), to keep in the content store.
    pub blobs: Vec<(String, Bytes)>,
}

/// A client bound to one endpoint and one repository.
#[derive(Clone)]
pub struct RegistryClient {
    auth: Arc<Authenticator>,
    access: Access,
    /// `<scheme>://<host>/v2/<repository>`.
    base: String,
    /// `host/repository`, for messages.
    name: String,
    policy: Policy,
}

impl RegistryClient {
    /// A client for `reference`'s repository at `endpoint` with `creds`, over the HTTP
    /// clients and the authorization state of `auth`.
    pub fn new(
        auth: Arc<Authenticator>,
        endpoint: Endpoint,
        reference: &Reference,
        creds: Creds,
        policy: Policy,
    ) -> Result<Self> {
        let repository = reference.path();
        let name = format!("{}/{repository}", endpoint.host);
        let access = Access::new(endpoint, repository, creds, policy.no_progress)?;
        Ok(RegistryClient {
            base: format!("{}v2/{repository}", access.origin()),
            name,
            access,
            auth,
            policy,
        })
    }

    /// The endpoint this client talks to.
    pub fn endpoint(&self) -> &Endpoint {
        self.access.endpoint()
    }

    /// GETs `url` with the known authorization, `accept` and, to resume, `Range` from
    /// byte `from`, following redirects; on a 401 from the endpoint, learns the
    /// authorization from its challenge and sends the request once more. A success (2xx)
    /// is returned, anything else mapped to an error naming where it came from.
    async fn get(
        &self,
        url: &str,
        what: &str,
        accept: Option<&str>,
        from: Option<u64>,
    ) -> Result<reqwest::Response> {
        let mut authorization = self.auth.authorization(&self.access).await?;
        let mut challenged = false;
        let mut waited = 0;
        loop {
            let (resp, at) = self
                .follow(url, what, accept, from, authorization.as_deref())
                .await?;
            let status = resp.status();
            if status.is_success() {
                return Ok(resp);
            }
            let foreign = !same_origin(&at, self.access.origin());
            if foreign {
                // Blob storage the registry sent us to (S3, GCS, a CDN): its 401 is no
                // challenge of the registry's, and its 4xx (an expired signature) is
                // cured by asking the registry again for a fresh URL.
                let body = read_body(resp, 64 << 10, what).await.unwrap_or_default();
                let text = String::from_utf8_lossy(&body[..body.len().min(300)]);
                return Err(Error::Unavailable(format!(
                    "{what}: {status} from {} (redirected to by {}): {}",
                    shown(&at),
                    self.endpoint().host,
                    text.trim()
                )));
            }
            if status == StatusCode::TOO_MANY_REQUESTS {
                let host = &self.endpoint().host;
                let wait = retry_after(resp.headers());
                let body = read_body(resp, 64 << 10, what).await.unwrap_or_default();
                let cap = MAX_RETRY_AFTER.min(self.policy.no_progress / 2);
                match wait {
                    Some(d) if d <= cap && waited < 2 => {
                        tracing::info!(%host, "{what}: rate limited (429), retrying in {d:?}");
                        tokio::time::sleep(d).await;
                        waited += 1;
                        continue;
                    }
                    Some(d) if d > cap => {
                        let text = String::from_utf8_lossy(&body[..body.len().min(300)]);
                        return Err(Error::RateLimited(format!(
                            "{what}: by {host} (429 Too Many Requests, \
                             Retry-After {}s), giving up: {}",
                            d.as_secs(),
                            text.trim()
                        )));
                    }
                    // No Retry-After (or a date): retried with backoff like a 5xx.
                    _ => return Err(status_error(what, &shown(&at), status, &body)),
                }
            }
            if status == StatusCode::UNAUTHORIZED && !challenged {
                challenged = true;
                let headers = resp.headers().clone();
                // Read the (small) answer, so that its connection is used again.
                let _ = read_body(resp, 64 << 10, what).await;
                let next = self
                    .auth
                    .challenged(&self.access, authorization.as_deref(), &headers, what)
                    .await?;
                authorization = Some(next);
                continue;
            }
            let body = read_body(resp, 64 << 10, what).await.unwrap_or_default();
            return Err(status_error(what, &shown(&at), status, &body));
        }
    }

    /// Sends GET `url`, following up to [`MAX_REDIRECTS`] redirects: the answer that is
    /// not one, and the URL that gave it. `Accept` and `Range` go with every hop;
    /// `authorization` only while the hops stay at the endpoint's scheme, host and port
    /// (once a hop leaves, never again in this chain, as Go's net/http does).
    async fn follow(
        &self,
        url: &str,
        what: &str,
        accept: Option<&str>,
        from: Option<u64>,
        authorization: Option<&str>,
    ) -> Result<(reqwest::Response, reqwest::Url)> {
        let mut at = reqwest::Url::parse(url)
            .map_err(|e| Error::InvalidArgument(format!("{what}: URL {url:?}: {e}")))?;
        let mut left_origin = false;
        for _ in 0..=MAX_REDIRECTS {
            left_origin = left_origin || !same_origin(&at, self.access.origin());
            let http = if left_origin {
                self.auth.http_for(&self.access, &at)
            } else {
                self.auth.http(self.endpoint())
            };
            let mut req = http.get(at.clone());
            if let Some(a) = accept {
                req = req.header(ACCEPT, a);
            }
            if let Some(n) = from {
                req = req.header(RANGE, format!("bytes={n}-"));
            }
            if let Some(a) = authorization
                && !left_origin
            {
                req = req.header(AUTHORIZATION, a);
            }
            let resp = req.send().await.map_err(|e| {
                Error::Unavailable(format!(
                    "{what}: GET {}: {}",
                    shown(&at),
                    chain(&e.without_url())
                ))
            })?;
            let status = resp.status();
            if !matches!(status.as_u16(), 301 | 302 | 303 | 307 | 308) {
                return Ok((resp, at));
            }
            let location = resp
                .headers()
                .get(LOCATION)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let Some(location) = location else {
                return Ok((resp, at));
            };
            let next = at
                .join(&location)
                .ok()
                .filter(|u| matches!(u.scheme(), "http" | "https"))
                .ok_or_else(|| {
                    Error::BadContent(format!(
                        "{what}: {status} from {} to an unusable location",
                        shown(&at)
                    ))
                })?;
            tracing::debug!(from = %shown(&at), to = %shown(&next), %status, "redirect");
            // Read the (small) answer, so that its connection is used again.
            let _ = read_body(resp, 64 << 10, what).await;
            at = next;
        }
        Err(Error::BadContent(format!(
            "{what}: more than {MAX_REDIRECTS} redirects from {url}, the last to {}",
            authority(&at)
        )))
    }

    async fn manifest(&self, tag_or_digest: &str) -> Result<(Bytes, String, Manifest)> {
        let what = format!("manifest {}:{tag_or_digest}", self.name);
        let url = format!("{}/manifests/{tag_or_digest}", self.base);
        let accept = MANIFEST_TYPES.join(", ");
        let (bytes, header) = self
            .policy
            .retry(&what, &self.endpoint().host, || async {
                let resp = self.get(&url, &what, Some(&accept), None).await?;
                let header = resp
                    .headers()
                    .get("docker-content-digest")
                    .and_then(|v| v.to_str().ok())
                    .map(|v| v.trim().to_string())
                    .filter(|v| !v.is_empty());
                Ok((read_body(resp, MAX_MANIFEST, &what).await?, header))
            })
            .await?;
        // What a digest names is that content and nothing else; a tag's manifest is
        // known by the digest of what came, which the registry's header must agree with.
        let digest = crate::digest::sha256(&bytes);
        if tag_or_digest.contains(':') && tag_or_digest != digest {
            return Err(Error::BadContent(format!(
                "{what}: digest mismatch: the content's digest is {digest}"
            )));
        }
        if let Some(h) = header
            && h.starts_with("sha256:")
            && h != digest
        {
            return Err(Error::BadContent(format!(
                "{what}: Docker-Content-Digest {h} does not match the content's {digest}"
            )));
        }
        let m: Manifest = serde_json::from_slice(&bytes)
            .map_err(|e| Error::BadContent(format!("{what}: not a manifest: {e}")))?;
        if m.schema_version != 2 {
            return Err(Error::BadContent(format!(
                "{what}: unsupported schema version {}",
                m.schema_version
            )));
        }
        Ok((bytes, digest, m))
    }

    /// Resolves `reference` to this node's image manifest.
    pub async fn resolve(&self, reference: &Reference) -> Result<Resolved> {
        let top = reference
            .digest()
            .or(reference.tag())
            .unwrap_or("latest")
            .to_string();
        let (bytes, digest, m) = self.manifest(&top).await?;
        let mut blobs = vec![(digest.clone(), bytes)];
        if !m.is_index() {
            return Ok(Resolved {
                repo_digest: digest.clone(),
                manifest: m,
                manifest_digest: digest,
                blobs,
            });
        }
        let (os, arch) = node_platform();
        let entry = pick_platform(&m).ok_or_else(|| {
            Error::NotFound(format!("{reference}: no image for platform {os}/{arch}"))
        })?;
        let (mbytes, mdigest, manifest) = self.manifest(&entry.digest).await?;
        if manifest.is_index() || manifest.config.is_none() {
            return Err(Error::BadContent(format!(
                "{reference}: platform entry {} is not an image manifest",
                entry.digest
            )));
        }
        blobs.push((mdigest.clone(), mbytes));
        Ok(Resolved {
            repo_digest: digest,
            manifest,
            manifest_digest: mdigest,
            blobs,
        })
    }

    /// Fetches a small blob (a config, at most [`MAX_CONFIG`] bytes) whole and verifies
    /// its digest and size.
    pub async fn blob_bytes(&self, desc: &Descriptor) -> Result<Vec<u8>> {
        let what = format!("blob {}", desc.digest);
        let url = format!("{}/blobs/{}", self.base, desc.digest);
        let stated = u64::try_from(desc.size).ok().filter(|n| *n > 0);
        if let Some(n) = stated
            && n > MAX_CONFIG
        {
            return Err(Error::BadContent(format!(
                "{what}: the manifest states {n} bytes, more than the {MAX_CONFIG} a config may have"
            )));
        }
        let limit = stated.unwrap_or(MAX_CONFIG);
        let bytes = self
            .policy
            .retry(&what, &self.endpoint().host, || async {
                let resp = self.get(&url, &what, None, None).await?;
                read_body(resp, limit, &what).await
            })
            .await?;
        let digest = crate::digest::sha256(&bytes);
        if digest != desc.digest {
            return Err(Error::BadContent(format!(
                "{what}: digest mismatch: the content's digest is {digest}"
            )));
        }
        if desc.size > 0 && bytes.len() as u64 != limit {
            return Err(Error::BadContent(format!(
                "{what}: {} bytes, the manifest states {limit}",
                bytes.len()
            )));
        }
        Ok(bytes.to_vec())
    }

    /// Streams blob `desc` into `tx`, in order and each byte once, resuming after a
    /// dropped connection from where it stopped (Range request; if the registry ignores
    /// Range, the bytes already sent are skipped). The receiver verifies the digest.
    ///
    /// `Err(None)` means the receiver went away (it has its own error to report).
    pub async fn stream_blob(
        &self,
        desc: &Descriptor,
        tx: &mpsc::Sender<Result<Bytes>>,
        mut on_bytes: impl FnMut(u64),
    ) -> std::result::Result<(), Option<Error>> {
        let expected = u64::try_from(desc.size).ok().filter(|s| *s > 0);
        let mut sent: u64 = 0;
        let mut attempt = 0;
        loop {
            match self
                .stream_attempt(desc, expected, &mut sent, tx, &mut on_bytes)
                .await
            {
                Ok(()) => return Ok(()),
                Err(Some(Error::Unavailable(m))) if attempt < self.policy.retries => {
                    tracing::info!(digest = %desc.digest, sent, "blob download interrupted, resuming: {m}");
                    tokio::time::sleep(Policy::backoff(attempt)).await;
                    attempt += 1;
                }
                Err(Some(e)) => {
                    let e = match e {
                        Error::Unavailable(m) if attempt > 0 => {
                            Error::Unavailable(format!("{m} (after {} attempts)", attempt + 1))
                        }
                        e => e,
                    };
                    // Wake the receiver with the cause; it may be gone already.
                    let _ = tx.send(Err(e.clone())).await;
                    return Err(Some(e));
                }
                Err(None) => return Err(None),
            }
        }
    }

    async fn stream_attempt(
        &self,
        desc: &Descriptor,
        expected: Option<u64>,
        sent: &mut u64,
        tx: &mpsc::Sender<Result<Bytes>>,
        on_bytes: &mut impl FnMut(u64),
    ) -> std::result::Result<(), Option<Error>> {
        let what = format!("blob {}", desc.digest);
        let url = format!("{}/blobs/{}", self.base, desc.digest);
        let secs = self.policy.no_progress.as_secs_f32();
        let host = &self.endpoint().host;
        let stalled = |at: u64| {
            Error::Unavailable(format!(
                "{what}: no progress for {secs}s at byte {at} (from {host})"
            ))
        };
        let mut resp = tokio::time::timeout(
            self.policy.no_progress,
            self.get(&url, &what, None, (*sent > 0).then_some(*sent)),
        )
        .await
        .map_err(|_| Some(stalled(*sent)))?
        .map_err(Some)?;
        let mut skip = if resp.status() == StatusCode::PARTIAL_CONTENT {
            let start = resp
                .headers()
                .get(CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .and_then(range_start)
                .unwrap_or(*sent);
            if start > *sent {
                return Err(Some(Error::BadContent(format!(
                    "{what}: asked for bytes from {sent}, the registry sent from {start}",
                    sent = *sent
                ))));
            }
            *sent - start
        } else {
            // The registry ignored Range: skip what the receiver already has.
            *sent
        };
        loop {
            let next = tokio::time::timeout(self.policy.no_progress, resp.chunk())
                .await
                .map_err(|_| Some(stalled(*sent)))?;
            let mut chunk = match next {
                Ok(None) => break,
                Ok(Some(c)) => c,
                // Everything arrived; the receiver checks the digest.
                Err(_) if expected.is_some_and(|n| *sent >= n) => break,
                Err(e) => {
                    return Err(Some(Error::Unavailable(format!(
                        "{what}: connection lost at byte {sent}: {}",
                        chain(&e),
                        sent = *sent
                    ))));
                }
            };
            if skip > 0 {
                let n = skip.min(chunk.len() as u64);
                let _ = chunk.split_to(n as usize);
                skip -= n;
                if chunk.is_empty() {
                    continue;
                }
            }
            *sent += chunk.len() as u64;
            on_bytes(chunk.len() as u64);
            if let Some(n) = expected
                && *sent > n
            {
                return Err(Some(Error::BadContent(format!(
                    "{what}: registry sent more than the {n} bytes the manifest states"
                ))));
            }
            tx.send(Ok(chunk)).await.map_err(|_| None)?;
        }
        match expected {
            Some(n) if *sent < n => Err(Some(Error::Unavailable(format!(
                "{what}: truncated: got {sent} of {n} bytes",
                sent = *sent
            )))),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn credentials_sources() {
        let a = Auth {
            auth: base64::engine::general_purpose::STANDARD.encode("u:p"),
            ..Default::default()
        };
        let c = Config::default();
        assert_eq!(
            credentials(&c, "h", true, Some(&a)).unwrap().auth,
            RegistryAuth::Basic("u".into(), "p".into())
        );
        assert_eq!(
            credentials(&c, "h", false, Some(&a)).unwrap().auth,
            RegistryAuth::Anonymous,
            "request credentials never go to a mirror"
        );
        let bad = Auth {
            auth: "%%%".into(),
            ..Default::default()
        };
        assert!(matches!(
            credentials(&c, "h", true, Some(&bad)),
            Err(Error::InvalidArgument(_))
        ));
        let tok = Auth {
            registry_token: "t".into(),
            ..Default::default()
        };
        assert_eq!(
            credentials(&c, "h", true, Some(&tok)).unwrap().auth,
            RegistryAuth::Bearer("t".into())
        );
        let id = Auth {
            identity_token: "refresh".into(),
            ..Default::default()
        };
        let c1 = credentials(&c, "h", true, Some(&id)).unwrap();
        assert_eq!(c1.identity_token.as_deref(), Some("refresh"));
        assert_eq!(
            c1.auth,
            RegistryAuth::Basic("<token>".into(), "refresh".into())
        );
        let id = Auth {
            username: "u".into(),
            password: "p".into(),
            identity_token: "refresh".into(),
            ..Default::default()
        };
        let c2 = credentials(&c, "h", true, Some(&id)).unwrap();
        assert_eq!(c2.auth, RegistryAuth::Basic("u".into(), "p".into()));

        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("config.json");
        std::fs::write(
            &f,
            r#"{"auths":{"https://index.docker.io/v1/":{"auth":"dTpw"},"r.io":{"username":"a","password":"b"}}}"#,
        )
        .unwrap();
        let c = Config {
            credentials_file: f.display().to_string(),
            ..Default::default()
        };
        assert_eq!(
            credentials(&c, "docker.io", true, None).unwrap().auth,
            RegistryAuth::Basic("u".into(), "p".into())
        );
        assert_eq!(
            credentials(&c, "r.io", true, None).unwrap().auth,
            RegistryAuth::Basic("a".into(), "b".into())
        );
        assert_eq!(
            credentials(&c, "x.io", true, None).unwrap().auth,
            RegistryAuth::Anonymous
        );
    }

    #[test]
    fn picks_node_platform() {
        let (_, arch) = node_platform();
        let idx: Manifest = serde_json::from_str(&format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[
              {{"digest":"sha256:a","size":1,"platform":{{"os":"linux","architecture":"s390x"}}}},
              {{"digest":"sha256:b","size":1,"platform":{{"os":"linux","architecture":"{arch}"}}}}]}}"#
        ))
        .unwrap();
        assert!(idx.is_index());
        assert_eq!(pick_platform(&idx).unwrap().digest, "sha256:b");
    }
}

/// Property-based fuzzing of manifest and index decoding (docs/architecture.md, "Fuzzing").
#[cfg(test)]
mod fuzz {
    use super::*;
    use crate::fuzz::config;
    use proptest::prelude::*;
    use serde_json::{Value, json};

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(|f| json!(f)),
            ".{0,10}".prop_map(Value::from),
            prop_oneof![
                Just("linux"),
                Just("amd64"),
                Just("arm64"),
                Just("v8"),
                Just("application/vnd.oci.image.index.v1+json"),
                Just("sha256:0000000000000000000000000000000000000000000000000000000000000000"),
            ]
            .prop_map(Value::from),
        ];
        let key = prop_oneof![
            Just("schemaVersion"),
            Just("mediaType"),
            Just("config"),
            Just("layers"),
            Just("manifests"),
            Just("digest"),
            Just("size"),
            Just("platform"),
            Just("os"),
            Just("architecture"),
            Just("variant"),
            Just("x"),
        ];
        leaf.prop_recursive(4, 48, 6, move |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
                prop::collection::btree_map(key.clone().prop_map(String::from), inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn decode(bytes: &[u8]) {
        if let Ok(m) = serde_json::from_slice::<Manifest>(bytes) {
            let _ = m.is_index();
            let _ = pick_platform(&m);
            for d in m.layers.iter().chain(&m.manifests).chain(&m.config) {
                let _ = crate::reference::validate_digest(&d.digest);
            }
        }
    }

    proptest! {
        #![proptest_config(config(2000))]

        #[test]
        fn arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            decode(&bytes);
        }

        #[test]
        fn arbitrary_json(v in json_value()) {
            decode(&serde_json::to_vec(&v).unwrap());
        }

        #[test]
        fn mutated_json(v in json_value(), at in any::<usize>(), b in any::<u8>()) {
            let mut bytes = serde_json::to_vec(&v).unwrap();
            let n = bytes.len();
            bytes[at % n] = b;
            decode(&bytes);
        }
    }
}

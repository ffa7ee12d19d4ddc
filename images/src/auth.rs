//! Authorizing registry requests, the way containerd's docker authorizer does it.
//!
//! A request goes out at once, with the `Authorization` already known for its endpoint,
//! credentials and repository scope, if any; there is no `GET /v2/` ping. Only a `401`
//! teaches us more, from its `WWW-Authenticate` challenge:
//! - `Bearer realm=…,service=…,scope=…`: a token from the token service (the distribution
//!   token spec): with an identity token, the OAuth2 refresh-token grant (a form `POST`
//!   to the realm; a `401`, `404` or `405` answer falls back to the `GET`); else
//!   `GET <realm>?service=…&scope=…`, with basic credentials if there are any. The token
//!   is kept per (endpoint, credentials, scope) for ¾ of its `expires_in` (60 s when the
//!   answer has none or less); the endpoint is remembered as a bearer one (realm and service),
//!   so the next request of that scope, even after its token expired, gets a token before
//!   it goes out. The challenge's own scopes are asked for in the token request that
//!   answers it only.
//! - `Basic`: the basic credentials, and from then on with every request to the endpoint.
//!
//! The request is retried once with what was learnt; a second `401`, or a `401` with no
//! usable credentials, is Unauthenticated. A registry token is the bearer token itself
//! and is sent with the first request. A refresh token rotated by the token service
//! (a new `refresh_token` in its answer) replaces the given identity token at that
//! service from then on.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use base64::Engine as _;
use reqwest::StatusCode;
use reqwest::header::{AUTHORIZATION, HeaderMap, WWW_AUTHENTICATE};
use serde::Deserialize;

use crate::error::{Error, Result};
use crate::registry::Endpoint;

/// Longest token service answer read.
const MAX_TOKEN_ANSWER: u64 = 1 << 20;

/// The `client_id` sent to token services.
pub const CLIENT_ID: &str = "crust";

/// The `User-Agent` of every request.
const USER_AGENT: &str = concat!("crust/", env!("CARGO_PKG_VERSION"));

/// Credentials as sent to a registry.
#[derive(Clone, PartialEq, Eq)]
pub enum RegistryAuth {
    /// None.
    Anonymous,
    /// User name and password (or identity token), for `Basic` and token services.
    Basic(String, String),
    /// A registry token: the bearer token itself.
    Bearer(String),
}

impl std::fmt::Debug for RegistryAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RegistryAuth::Anonymous => f.write_str("Anonymous"),
            RegistryAuth::Basic(u, _) => f.debug_tuple("Basic").field(u).field(&"…").finish(),
            RegistryAuth::Bearer(_) => f.write_str("Bearer(…)"),
        }
    }
}

/// Credentials for one endpoint.
#[derive(Clone, PartialEq, Eq)]
pub struct Creds {
    /// Used as is, or, with an identity token, for a `Basic` challenge and for the GET
    /// token request when the token service takes no refresh-token grant.
    pub auth: RegistryAuth,
    /// An identity (refresh) token for the OAuth2 refresh-token grant.
    pub identity_token: Option<String>,
}

impl std::fmt::Debug for Creds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match &self.auth {
            RegistryAuth::Anonymous => "anonymous",
            RegistryAuth::Basic(..) => "basic",
            RegistryAuth::Bearer(_) => "bearer",
        };
        f.debug_struct("Creds")
            .field("auth", &kind)
            .field("identity_token", &self.identity_token.is_some())
            .finish()
    }
}

impl From<RegistryAuth> for Creds {
    fn from(auth: RegistryAuth) -> Self {
        Creds {
            auth,
            identity_token: None,
        }
    }
}

impl Creds {
    /// What tells two credentials apart, as a digest (secrets never enter a key).
    fn key(&self) -> String {
        let who = match &self.auth {
            RegistryAuth::Anonymous => "anonymous".to_string(),
            RegistryAuth::Basic(u, p) => format!("basic\0{u}\0{p}"),
            RegistryAuth::Bearer(t) => format!("bearer\0{t}"),
        };
        let id = self.identity_token.as_deref().unwrap_or("");
        crate::digest::sha256(format!("{who}\0{id}").as_bytes())
    }

    fn basic(&self) -> Option<(&str, &str)> {
        match &self.auth {
            RegistryAuth::Basic(u, p) => Some((u, p)),
            _ => None,
        }
    }

    /// The `Authorization` value of the basic credentials, if there are any.
    fn basic_header(&self) -> Option<String> {
        self.basic().map(|(u, p)| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
            )
        })
    }
}

/// What one [`crate::registry::RegistryClient`] authorizes: a repository at an endpoint
/// with some credentials.
#[derive(Clone, Debug)]
pub struct Access {
    endpoint: Endpoint,
    creds: Creds,
    /// `repository:<path>:pull`.
    scope: String,
    /// Endpoint and credentials, hashed: what the endpoint wants is kept under it.
    host_key: String,
    /// `host_key` and scope: tokens are kept under it.
    token_key: String,
    /// Longest wait for one token request.
    timeout: Duration,
    /// `<scheme>://<host>[:port]/` of the endpoint's API (`registry-1.docker.io` for
    /// `docker.io`): requests carry `Authorization` only while they go there.
    origin: reqwest::Url,
}

impl Access {
    /// Pulling `repository` at `endpoint` with `creds`; a token request waits at most
    /// `timeout`. InvalidArgument if the endpoint's host makes no URL.
    pub fn new(
        endpoint: Endpoint,
        repository: &str,
        creds: Creds,
        timeout: Duration,
    ) -> Result<Self> {
        let host_key = crate::digest::sha256(
            format!(
                "{}\0{}\0{}\0{}",
                endpoint.host,
                endpoint.http,
                endpoint.skip_verify,
                creds.key()
            )
            .as_bytes(),
        );
        let scope = format!("repository:{repository}:pull");
        let token_key = format!("{host_key}\0{scope}");
        let scheme = if endpoint.http { "http" } else { "https" };
        let origin = reqwest::Url::parse(&format!("{scheme}://{}/", api_host(&endpoint.host)))
            .map_err(|e| {
                Error::InvalidArgument(format!("registry host {:?}: {e}", endpoint.host))
            })?;
        Ok(Access {
            endpoint,
            creds,
            scope,
            host_key,
            token_key,
            timeout,
            origin,
        })
    }

    /// The endpoint.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// `<scheme>://<host>[:port]/` the endpoint's API is served at.
    pub fn origin(&self) -> &reqwest::Url {
        &self.origin
    }
}

/// The host serving the registry API of `host` (Docker Hub's is not served at its name).
pub fn api_host(host: &str) -> &str {
    match host {
        crate::reference::DOCKER_DOMAIN => "registry-1.docker.io",
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

/// A challenge from `WWW-Authenticate`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    /// The token service URL.
    pub realm: String,
    /// The `service` parameter, if given.
    pub service: Option<String>,
    /// The `scope` parameter, if given.
    pub scope: Option<String>,
}

/// The challenges of one `WWW-Authenticate` value, each its scheme (lower case) and
/// parameters (names lower case): `Basic realm="a", Bearer realm = "b", service=c` is
/// two. After a comma, a name followed by `=` is a parameter, anything else the scheme of
/// the next challenge (RFC 9110 §11.6.1; token68 credentials are not expected here).
fn parse_challenges(header: &str) -> Vec<(String, HashMap<String, String>)> {
    let c: Vec<char> = header.chars().collect();
    let n = c.len();
    let skip_ws = |mut i: usize| {
        while i < n && c[i].is_whitespace() {
            i += 1;
        }
        i
    };
    let mut out: Vec<(String, HashMap<String, String>)> = Vec::new();
    let mut i = 0;
    loop {
        while i < n && (c[i] == ',' || c[i].is_whitespace()) {
            i += 1;
        }
        if i >= n {
            break;
        }
        let start = i;
        while i < n && !c[i].is_whitespace() && c[i] != ',' && c[i] != '=' {
            i += 1;
        }
        let token: String = c[start..i].iter().collect::<String>().to_ascii_lowercase();
        let j = skip_ws(i);
        if j < n && c[j] == '=' && !token.is_empty() {
            i = skip_ws(j + 1);
            let mut value = String::new();
            if i < n && c[i] == '"' {
                i += 1;
                while i < n {
                    match c[i] {
                        '\\' if i + 1 < n => {
                            value.push(c[i + 1]);
                            i += 2;
                            continue;
                        }
                        '"' => {
                            i += 1;
                            break;
                        }
                        ch => value.push(ch),
                    }
                    i += 1;
                }
            } else {
                while i < n && c[i] != ',' {
                    value.push(c[i]);
                    i += 1;
                }
                value = value.trim().to_string();
            }
            // A parameter before any scheme belongs to nothing.
            if let Some((_, params)) = out.last_mut() {
                params.insert(token, value);
            }
        } else if token.is_empty() {
            // A stray '=': skip it.
            i = j + 1;
        } else {
            out.push((token, HashMap::new()));
            i = j;
        }
    }
    out
}

/// Parses the `Bearer` challenge of a `WWW-Authenticate` value (`Bearer realm="…",
/// service="…"`), also among other challenges in the same value; `None` without one
/// with a realm.
pub fn parse_bearer_challenge(header: &str) -> Option<Challenge> {
    parse_challenges(header)
        .into_iter()
        .filter(|(scheme, _)| scheme == "bearer")
        .find_map(|(_, mut params)| {
            Some(Challenge {
                realm: params.remove("realm").filter(|r| !r.is_empty())?,
                service: params.remove("service"),
                scope: params.remove("scope"),
            })
        })
}

fn is_basic_challenge(header: &str) -> bool {
    parse_challenges(header)
        .iter()
        .any(|(scheme, _)| scheme == "basic")
}

/// `application/x-www-form-urlencoded` of `fields`.
fn form(fields: &[(&str, &str)]) -> String {
    fn enc(s: &str, out: &mut String) {
        for b in s.bytes() {
            match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                    out.push(b as char)
                }
                b' ' => out.push('+'),
                b => out.push_str(&format!("%{b:02X}")),
            }
        }
    }
    let mut out = String::new();
    for (i, (k, v)) in fields.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        enc(k, &mut out);
        out.push('=');
        enc(v, &mut out);
    }
    out
}

#[derive(Deserialize)]
struct TokenAnswer {
    #[serde(default)]
    access_token: Option<String>,
    /// Older token services answer `token` only.
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    expires_in: Option<u64>,
    /// A rotated refresh token (OAuth2 answers only).
    #[serde(default)]
    refresh_token: Option<String>,
}

/// How an endpoint (with some credentials) wants to be authorized, learnt from a 401.
#[derive(Clone)]
enum HostAuth {
    Basic,
    Bearer(Challenge),
}

#[derive(Default)]
struct State {
    hosts: HashMap<String, HostAuth>,
    /// `Authorization` values of bearer tokens by [`Access::token_key`], with the time
    /// they are no longer used.
    tokens: HashMap<String, (String, Instant)>,
    /// Rotated refresh tokens by a digest of (realm, service, the given identity token).
    refresh: HashMap<String, String>,
}

/// Entries kept per map before old ones go: credentials rotate (kubelet passes them
/// with each pull), and forgetting costs one more 401 at most.
const LIMIT: usize = 256;

impl State {
    fn learn(&mut self, host_key: &str, how: HostAuth) {
        if self.hosts.len() >= LIMIT && !self.hosts.contains_key(host_key) {
            self.hosts.clear();
        }
        self.hosts.insert(host_key.to_string(), how);
    }
}

/// A token request to a realm.
enum TokenRequest {
    /// The OAuth2 form.
    Post(reqwest::Url, String),
    /// The token spec's GET, with the basic credentials if there are any.
    Get(reqwest::Url, Option<String>),
}

/// What a token service said.
enum Answer {
    Token(TokenAnswer),
    /// Not 200: the status and the start of the body.
    Refused(StatusCode, String),
}

/// The HTTP clients for registries and token services, and what they taught us about
/// authorization. One per image store: building a TLS client costs milliseconds.
pub struct Authenticator {
    verified: reqwest::Client,
    unverified: reqwest::Client,
    /// Hosts (`host[:port]`) configured insecure: HTTPS without verifying certificates.
    insecure: HashSet<String>,
    state: Mutex<State>,
    /// One token request at a time per token key; the others wait and use its token.
    fetching: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Authenticator {
    /// HTTP clients connecting within `connect_timeout`; certificates are not verified
    /// for `insecure` hosts (`host[:port]`, loopback hosts too). The clients follow no
    /// redirects: [`crate::registry`] does, to decide where `Authorization` goes.
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
        Ok(Authenticator {
            verified: build(false)?,
            unverified: build(true)?,
            insecure: insecure
                .into_iter()
                .map(|h| h.to_ascii_lowercase())
                .collect(),
            state: Mutex::new(State::default()),
            fetching: Mutex::new(HashMap::new()),
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

    /// The HTTP client for `url`, reached while talking to `a`'s endpoint (a redirect
    /// target, a token realm): certificates go unverified only at the endpoint's own host
    /// when the endpoint is insecure, or at a host configured insecure (or loopback).
    pub fn http_for(&self, a: &Access, url: &reqwest::Url) -> &reqwest::Client {
        let host = authority(url);
        let same_host = url.host_str().map(str::to_ascii_lowercase)
            == a.origin.host_str().map(str::to_ascii_lowercase);
        let insecure = (a.endpoint.skip_verify && same_host)
            || self.insecure.contains(&host)
            || crate::registry::is_loopback(&host);
        if insecure {
            &self.unverified
        } else {
            &self.verified
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn cached(&self, key: &str) -> Option<String> {
        let st = self.state();
        st.tokens
            .get(key)
            .filter(|(_, until)| Instant::now() < *until)
            .map(|(t, _)| t.clone())
    }

    /// The `Authorization` to send with a request of `a`, if one is known: the registry
    /// token; the basic credentials for an endpoint that asked for them; for a bearer
    /// endpoint the kept token, or a new one when it expired.
    pub async fn authorization(&self, a: &Access) -> Result<Option<String>> {
        if let RegistryAuth::Bearer(t) = &a.creds.auth {
            return Ok(Some(format!("Bearer {t}")));
        }
        let known = self.state().hosts.get(&a.host_key).cloned();
        match known {
            None => Ok(None),
            Some(HostAuth::Basic) => Ok(a.creds.basic_header()),
            Some(HostAuth::Bearer(ch)) => {
                if let Some(t) = self.cached(&a.token_key) {
                    return Ok(Some(t));
                }
                self.token(a, &ch, None).await.map(Some)
            }
        }
    }

    /// A request of `a` sent with `sent` was answered 401 with `headers`: the
    /// `Authorization` to retry it with, or why there is none. `what` names the request.
    pub async fn challenged(
        &self,
        a: &Access,
        sent: Option<&str>,
        headers: &HeaderMap,
        what: &str,
    ) -> Result<String> {
        let host = &a.endpoint.host;
        if matches!(a.creds.auth, RegistryAuth::Bearer(_)) {
            return Err(Error::Unauthenticated(format!(
                "{what}: {host} refused the registry token (401)"
            )));
        }
        let values: Vec<&str> = headers
            .get_all(WWW_AUTHENTICATE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        if let Some(ch) = values.iter().find_map(|v| parse_bearer_challenge(v)) {
            let realm = reqwest::Url::parse(&ch.realm)
                .ok()
                .filter(|u| matches!(u.scheme(), "http" | "https"))
                .ok_or_else(|| {
                    Error::Unauthenticated(format!(
                        "{what}: token realm {:?} of {host} is not an HTTP URL",
                        ch.realm
                    ))
                })?;
            if realm.scheme() == "http" && !(a.endpoint.http || a.endpoint.skip_verify) {
                return Err(Error::Unauthenticated(format!(
                    "{what}: {host} is served over HTTPS but names a plain HTTP token realm \
                     {:?}: refused, credentials and tokens would travel in cleartext \
                     (configure the registry as insecure to allow it)",
                    ch.realm
                )));
            }
            {
                // Realm and service are the endpoint's; the scope is this request's only.
                let learnt = Challenge {
                    scope: None,
                    ..ch.clone()
                };
                let mut st = self.state();
                st.learn(&a.host_key, HostAuth::Bearer(learnt));
                if let Some(s) = sent
                    && st.tokens.get(&a.token_key).is_some_and(|(t, _)| t == s)
                {
                    st.tokens.remove(&a.token_key);
                }
            }
            return self.token(a, &ch, sent).await;
        }
        if values.iter().any(|v| is_basic_challenge(v)) {
            return match a.creds.basic_header() {
                None => Err(Error::Unauthenticated(format!(
                    "{what}: {host} asks for credentials (401, Basic) and none are configured"
                ))),
                Some(h) if Some(h.as_str()) == sent => Err(Error::Unauthenticated(format!(
                    "{what}: {host} refused the credentials (401)"
                ))),
                Some(h) => {
                    self.state().learn(&a.host_key, HostAuth::Basic);
                    Ok(h)
                }
            };
        }
        Err(Error::Unauthenticated(format!(
            "{what}: {host} answered 401 without a usable challenge ({values:?})"
        )))
    }

    /// A bearer token for `a` from the token service of `ch`, as an `Authorization`
    /// value: the kept one if another request got it meanwhile (and it is not `stale`),
    /// else a new one, kept.
    async fn token(&self, a: &Access, ch: &Challenge, stale: Option<&str>) -> Result<String> {
        let lock = {
            let mut map = self.fetching.lock().unwrap_or_else(|p| p.into_inner());
            map.retain(|_, m| Arc::strong_count(m) > 1);
            map.entry(a.token_key.clone()).or_default().clone()
        };
        let _one = lock.lock().await;
        if let Some(t) = self.cached(&a.token_key)
            && Some(t.as_str()) != stale
        {
            return Ok(t);
        }
        let (token, life) = self.fetch_token(a, ch).await?;
        let value = format!("Bearer {token}");
        let mut st = self.state();
        if st.tokens.len() >= LIMIT {
            let now = Instant::now();
            st.tokens.retain(|_, (_, until)| *until > now);
            if st.tokens.len() >= LIMIT {
                st.tokens.clear();
            }
        }
        st.tokens
            .insert(a.token_key.clone(), (value.clone(), Instant::now() + life));
        Ok(value)
    }

    /// Asks the token service of `ch` for a token for `a`'s scope (and the challenge's
    /// scopes, space-separated, if it names others: only a challenge just received
    /// carries any): the token and how long to use it.
    async fn fetch_token(&self, a: &Access, ch: &Challenge) -> Result<(String, Duration)> {
        let host = &a.endpoint.host;
        let realm = &ch.realm;
        let mut scopes = vec![a.scope.as_str()];
        for s in ch.scope.as_deref().unwrap_or("").split_whitespace() {
            if !scopes.contains(&s) {
                scopes.push(s);
            }
        }
        let realm_url = reqwest::Url::parse(realm)
            .map_err(|e| Error::Unauthenticated(format!("{host}: token realm {realm:?}: {e}")))?;
        let mut refused_post = None;
        if let Some(identity) = a.creds.identity_token.as_deref() {
            let refresh_key = crate::digest::sha256(
                format!(
                    "{realm}\0{}\0{identity}",
                    ch.service.as_deref().unwrap_or("")
                )
                .as_bytes(),
            );
            let rotated = self.state().refresh.get(&refresh_key).cloned();
            let refresh = rotated.as_deref().unwrap_or(identity);
            let scope = scopes.join(" ");
            let mut fields = vec![
                ("grant_type", "refresh_token"),
                ("refresh_token", refresh),
                ("client_id", CLIENT_ID),
                ("scope", scope.as_str()),
            ];
            if let Some(s) = ch.service.as_deref() {
                fields.push(("service", s));
            }
            let req = TokenRequest::Post(realm_url.clone(), form(&fields));
            match self.ask(a, req, realm, a.timeout).await? {
                Answer::Token(t) => {
                    if let Some(r) = t.refresh_token.as_deref().filter(|r| !r.is_empty())
                        && r != refresh
                    {
                        tracing::debug!(%realm, "token service rotated the refresh token");
                        let mut st = self.state();
                        if st.refresh.len() >= LIMIT {
                            st.refresh.clear();
                        }
                        st.refresh.insert(refresh_key, r.to_string());
                    }
                    return answer_token(t, realm);
                }
                // No OAuth2 here (404, 405), or this grant refused (401, as Artifactory
                // answers): the GET token request of the token spec instead.
                Answer::Refused(status, body) if matches!(status.as_u16(), 401 | 404 | 405) => {
                    tracing::debug!(%realm, %status, "refresh-token grant not taken, using GET");
                    if rotated.is_some() {
                        // Next time, start again from the identity token we were given.
                        self.state().refresh.remove(&refresh_key);
                    }
                    if status == StatusCode::UNAUTHORIZED {
                        refused_post = Some(format!("{status}: {body}"));
                    }
                }
                Answer::Refused(status, body) => {
                    return Err(Error::Unauthenticated(format!(
                        "{host}: identity token refused by token service {realm}: {status}: {body}"
                    )));
                }
            }
        }
        let mut url = realm_url;
        {
            let mut q = url.query_pairs_mut();
            if let Some(s) = ch.service.as_deref() {
                q.append_pair("service", s);
            }
            for s in &scopes {
                q.append_pair("scope", s);
            }
        }
        let req = TokenRequest::Get(url, a.creds.basic_header());
        match self.ask(a, req, realm, a.timeout).await? {
            Answer::Token(t) => answer_token(t, realm),
            Answer::Refused(status, body) => Err(Error::Unauthenticated(match refused_post {
                Some(post) => format!(
                    "{host}: identity token refused by token service {realm}: {post}; \
                     GET token request: {status}: {body}"
                ),
                None if a.creds.basic().is_some() => {
                    format!(
                        "{host}: token service {realm} refused the credentials: {status}: {body}"
                    )
                }
                None => format!(
                    "{host}: token service {realm} refused an anonymous token: {status}: {body}"
                ),
            })),
        }
    }

    /// Sends a token request (for `a`) and reads the answer: a token, a refusal, or
    /// Unavailable when the service cannot be reached, is overloaded or fails (429, 5xx).
    /// A GET follows redirects, its basic credentials only while it stays at the realm's
    /// scheme, host and port; a POST (its form carries the refresh token) follows none.
    async fn ask(
        &self,
        a: &Access,
        request: TokenRequest,
        realm: &str,
        timeout: Duration,
    ) -> Result<Answer> {
        let exchange = async {
            let origin = match &request {
                TokenRequest::Post(u, _) | TokenRequest::Get(u, _) => u.clone(),
            };
            let mut at = origin.clone();
            let mut left = false;
            let mut hops = 0;
            let mut resp = loop {
                left = left || !same_origin(&at, &origin);
                let http = self.http_for(a, &at);
                let req = match &request {
                    TokenRequest::Post(_, body) => http
                        .post(at.clone())
                        .header(
                            reqwest::header::CONTENT_TYPE,
                            "application/x-www-form-urlencoded",
                        )
                        .body(body.clone()),
                    TokenRequest::Get(_, Some(basic)) if !left => {
                        http.get(at.clone()).header(AUTHORIZATION, basic)
                    }
                    TokenRequest::Get(..) => http.get(at.clone()),
                };
                let resp = req.send().await?;
                let redirect = matches!(request, TokenRequest::Get(..))
                    && matches!(resp.status().as_u16(), 301 | 302 | 303 | 307 | 308)
                    && hops < crate::registry::MAX_REDIRECTS;
                let next = redirect
                    .then(|| resp.headers().get(reqwest::header::LOCATION))
                    .flatten()
                    .and_then(|v| v.to_str().ok())
                    .and_then(|l| at.join(l).ok())
                    .filter(|u| matches!(u.scheme(), "http" | "https"));
                match next {
                    Some(u) => {
                        at = u;
                        hops += 1;
                    }
                    None => break resp,
                }
            };
            let status = resp.status();
            let mut body = Vec::new();
            if resp.content_length().is_some_and(|n| n > MAX_TOKEN_ANSWER) {
                return Ok((status, None));
            }
            while let Some(c) = resp.chunk().await? {
                if (body.len() + c.len()) as u64 > MAX_TOKEN_ANSWER {
                    return Ok((status, None));
                }
                body.extend_from_slice(&c);
            }
            Ok::<_, reqwest::Error>((status, Some(body)))
        };
        let (status, body) = tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| {
                Error::Unavailable(format!("token service {realm}: no answer in {timeout:?}"))
            })?
            .map_err(|e| {
                Error::Unavailable(format!(
                    "token service {realm}: {}",
                    chain(&e.without_url())
                ))
            })?;
        let body = body.ok_or_else(|| {
            Error::Unauthenticated(format!(
                "token service {realm}: {status} answer larger than {MAX_TOKEN_ANSWER} bytes"
            ))
        })?;
        let text = || String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
        match status.as_u16() {
            200 => serde_json::from_slice(&body)
                .map(Answer::Token)
                .map_err(|e| {
                    Error::Unauthenticated(format!("token service {realm}: unreadable answer: {e}"))
                }),
            429 | 500..=599 => Err(Error::Unavailable(format!(
                "token service {realm}: {status}: {}",
                text()
            ))),
            _ => Ok(Answer::Refused(status, text())),
        }
    }
}

/// The token of a token service's answer and how long to use it: ¾ of its lifetime
/// (`expires_in`, 60 s by default and at least, as the token spec says and
/// containers/image does; a token refused before that gets a 401 and is fetched again).
/// Longest life of a token taken from its `expires_in`.
const MAX_TOKEN_LIFE_SECS: u64 = 365 * 24 * 3600;

fn answer_token(t: TokenAnswer, realm: &str) -> Result<(String, Duration)> {
    let token = t
        .access_token
        .filter(|t| !t.is_empty())
        .or(t.token)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| Error::Unauthenticated(format!("token service {realm}: no token")))?;
    // At least a minute; at most a year, so that neither `* 3` nor `now + life`
    // overflows whatever `expires_in` a token service sends.
    let secs = t.expires_in.unwrap_or(60).clamp(60, MAX_TOKEN_LIFE_SECS);
    let life = Duration::from_secs(secs) * 3 / 4;
    Ok((token, life))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bearer_challenges() {
        let c = parse_bearer_challenge(
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push""#,
        )
        .unwrap();
        assert_eq!(c.realm, "https://auth.example/token");
        assert_eq!(c.service.as_deref(), Some("registry.example"));
        assert_eq!(c.scope.as_deref(), Some("repository:a/b:pull,push"));
        let c = parse_bearer_challenge(r#"bearer  realm=http://x/t , service="s\"q""#).unwrap();
        assert_eq!(
            (c.realm.as_str(), c.service.as_deref()),
            ("http://x/t", Some("s\"q"))
        );
        assert!(parse_bearer_challenge(r#"Basic realm="x""#).is_none());
        assert!(parse_bearer_challenge(r#"Bearer service="x""#).is_none());
        let c = parse_bearer_challenge(r#"Bearer realm = "https://a/t" , service= "s""#).unwrap();
        assert_eq!(
            (c.realm.as_str(), c.service.as_deref()),
            ("https://a/t", Some("s"))
        );
        // Two challenges in one value: the Bearer one is found, whatever comes first.
        let two = r#"Basic realm="a", Bearer realm="https://b/t",service="x",scope="repository:p:pull repository:q:pull""#;
        let c = parse_bearer_challenge(two).unwrap();
        assert_eq!(c.realm, "https://b/t");
        assert_eq!(c.service.as_deref(), Some("x"));
        assert_eq!(
            c.scope.as_deref(),
            Some("repository:p:pull repository:q:pull")
        );
        assert!(is_basic_challenge(two));
        let c = parse_bearer_challenge(r#"Bearer realm="https://b/t", Basic realm="a""#).unwrap();
        assert_eq!((c.realm.as_str(), c.service), ("https://b/t", None));
        assert!(is_basic_challenge(r#"Basic realm="Registry Realm""#));
        assert!(is_basic_challenge("basic"));
        assert!(!is_basic_challenge(r#"Bearer realm="x""#));
    }

    #[test]
    fn form_encoding() {
        assert_eq!(
            form(&[("scope", "repository:a/b:pull x"), ("t", "a+b=c&~")]),
            "scope=repository%3Aa%2Fb%3Apull+x&t=a%2Bb%3Dc%26~"
        );
    }

    #[test]
    fn token_lifetime() {
        let t = |json: &str| answer_token(serde_json::from_str(json).unwrap(), "r");
        let (tok, life) = t(r#"{"token":"a","expires_in":300}"#).unwrap();
        assert_eq!((tok.as_str(), life), ("a", Duration::from_secs(225)));
        let (tok, life) = t(r#"{"access_token":"b","token":"a"}"#).unwrap();
        assert_eq!((tok.as_str(), life), ("b", Duration::from_secs(45)));
        let (_, life) = t(r#"{"token":"a","expires_in":1}"#).unwrap();
        assert_eq!(life, Duration::from_secs(45), "60 s at least");
        // Found by fuzzing: `expires_in` past u64::MAX / 3 overflowed `Duration * 3`
        // (a panic in the pull); a year at most now.
        let (_, life) = t(r#"{"token":"a","expires_in":6148914691236517206}"#).unwrap();
        assert_eq!(life, Duration::from_secs(MAX_TOKEN_LIFE_SECS) * 3 / 4);
        let (_, life) = t(r#"{"token":"a","expires_in":18446744073709551615}"#).unwrap();
        assert!(Instant::now().checked_add(life).is_some());
        assert!(matches!(
            t(r#"{"token":""}"#),
            Err(Error::Unauthenticated(_))
        ));
    }

    fn access(host: &str, http: bool, skip_verify: bool) -> Access {
        Access::new(
            Endpoint {
                host: host.into(),
                http,
                skip_verify,
                mirror: false,
            },
            "a/b",
            RegistryAuth::Basic("u".into(), "p".into()).into(),
            Duration::from_secs(1),
        )
        .unwrap()
    }

    #[test]
    fn tls_verification_follows_the_host() {
        let auth =
            Authenticator::new(Duration::from_secs(1), ["insecure.example".to_string()]).unwrap();
        let url = |u: &str| reqwest::Url::parse(u).unwrap();
        let unverified =
            |a: &Access, u: &str| std::ptr::eq(auth.http_for(a, &url(u)), &auth.unverified);
        let insecure = access("reg.example:5000", false, true);
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
        let secure = access("reg.example", false, false);
        assert!(!unverified(&secure, "https://reg.example/token"));
        assert!(unverified(&secure, "https://insecure.example/t"));
    }

    #[tokio::test]
    async fn plain_http_realm_only_for_insecure_endpoints() {
        let auth = Authenticator::new(Duration::from_secs(1), []).unwrap();
        let mut h = HeaderMap::new();
        h.insert(
            WWW_AUTHENTICATE,
            r#"Bearer realm="http://127.0.0.1:1/token",service="s""#
                .parse()
                .unwrap(),
        );
        let err = auth
            .challenged(&access("reg.example", false, false), None, &h, "m")
            .await
            .unwrap_err();
        assert!(
            matches!(&err, Error::Unauthenticated(m) if m.contains("cleartext")),
            "{err}"
        );
        // An insecure or plain HTTP registry may: the token service is asked (and is
        // not there).
        for a in [
            access("reg.example", false, true),
            access("reg.example", true, false),
        ] {
            let err = auth.challenged(&a, None, &h, "m").await.unwrap_err();
            assert!(matches!(err, Error::Unavailable(_)), "{err}");
        }
    }

    #[test]
    fn secrets_stay_out_of_debug_and_keys() {
        let c = Creds {
            auth: RegistryAuth::Basic("u".into(), "hunter2".into()),
            identity_token: Some("refresh-xyz".into()),
        };
        assert!(!format!("{c:?}{:?}", c.auth).contains("hunter2"));
        let a = Access::new(
            Endpoint {
                host: "r.io".into(),
                http: false,
                skip_verify: false,
                mirror: false,
            },
            "a/b",
            c,
            Duration::from_secs(1),
        )
        .unwrap();
        assert!(!format!("{a:?}").contains("hunter2"));
        assert!(!a.token_key.contains("hunter2") && !a.token_key.contains("refresh-xyz"));
    }
}

/// Property-based fuzzing of `WWW-Authenticate` parsing (docs/architecture.md, "Fuzzing").
#[cfg(test)]
mod fuzz {
    use super::*;
    use crate::fuzz::config;
    use proptest::prelude::*;

    /// RFC 9110 token characters.
    const TOKEN: &str = "[A-Za-z0-9!#$%&'*+.^_`|~-]{1,10}";

    #[derive(Debug, Clone)]
    enum Value {
        Token(String),
        Quoted(String),
    }

    fn challenge() -> impl Strategy<Value = (String, Vec<(String, Value)>)> {
        let value = prop_oneof![
            TOKEN.prop_map(Value::Token),
            ".{0,20}".prop_map(Value::Quoted),
        ];
        (
            prop_oneof![
                Just("Bearer".to_string()),
                Just("basic".to_string()),
                TOKEN.prop_map(String::from)
            ],
            prop::collection::vec(
                (
                    prop_oneof![Just("realm".to_string()), TOKEN.prop_map(String::from)],
                    value,
                ),
                0..4,
            ),
        )
    }

    fn render(challenges: &[(String, Vec<(String, Value)>)], ws: &str) -> String {
        challenges
            .iter()
            .map(|(scheme, params)| {
                let params: Vec<String> = params
                    .iter()
                    .map(|(k, v)| match v {
                        Value::Token(t) => format!("{k}{ws}={ws}{t}"),
                        Value::Quoted(q) => {
                            let q = q.replace('\\', "\\\\").replace('"', "\\\"");
                            format!("{k}{ws}={ws}\"{q}\"")
                        }
                    })
                    .collect();
                if params.is_empty() {
                    scheme.clone()
                } else {
                    format!("{scheme} {}", params.join(&format!("{ws},{ws}")))
                }
            })
            .collect::<Vec<_>>()
            .join(&format!("{ws},{ws}"))
    }

    /// A token service's answer, as JSON of roughly its shape.
    fn token_answer() -> impl Strategy<Value = String> {
        let n = prop_oneof![
            any::<u64>().prop_map(|n| n.to_string()),
            Just(u64::MAX.to_string()),
            (0u64..1000).prop_map(|n| n.to_string()),
            Just("-1".to_string()),
            Just("1.5".to_string()),
            Just("\"60\"".to_string()),
        ];
        let s = prop_oneof![
            Just("\"\"".to_string()),
            "\"[a-z]{0,5}\"",
            Just("null".to_string())
        ];
        (
            prop::option::of(s.clone()),
            prop::option::of(s.clone()),
            prop::option::of(n),
            prop::option::of(s),
        )
            .prop_map(|(a, t, e, r)| {
                let mut fields = Vec::new();
                for (k, v) in [
                    ("access_token", a),
                    ("token", t),
                    ("expires_in", e),
                    ("refresh_token", r),
                ] {
                    if let Some(v) = v {
                        fields.push(format!("\"{k}\":{v}"));
                    }
                }
                format!("{{{}}}", fields.join(","))
            })
    }

    proptest! {
        #![proptest_config(config(3000))]

        /// Whatever a token service answers, the token's life can be added to now.
        #[test]
        fn token_answers(json in token_answer()) {
            if let Ok(t) = serde_json::from_str::<TokenAnswer>(&json)
                && let Ok((token, life)) = answer_token(t, "r")
            {
                prop_assert!(!token.is_empty());
                prop_assert!(life >= Duration::from_secs(45));
                prop_assert!(Instant::now().checked_add(life).is_some(), "{}", json);
            }
        }

        #[test]
        fn arbitrary_header_values(s in ".{0,120}") {
            let _ = parse_bearer_challenge(&s);
            let _ = is_basic_challenge(&s);
        }

        #[test]
        fn challenge_alphabet(s in "[A-Za-z =,\"\\\\\t]{0,80}") {
            let _ = parse_challenges(&s);
        }

        #[test]
        fn well_formed_challenges_parse(
            challenges in prop::collection::vec(challenge(), 1..4),
            ws in prop_oneof![Just(""), Just(" "), Just(" \t ")],
        ) {
            let header = render(&challenges, ws);
            let got = parse_challenges(&header);
            prop_assert_eq!(got.len(), challenges.len(), "{}", header);
            for ((scheme, params), (want_scheme, want)) in got.iter().zip(&challenges) {
                prop_assert_eq!(scheme, &want_scheme.to_ascii_lowercase());
                let mut expect = HashMap::new();
                for (k, v) in want {
                    let v = match v {
                        Value::Token(t) | Value::Quoted(t) => t.clone(),
                    };
                    expect.insert(k.to_ascii_lowercase(), v);
                }
                prop_assert_eq!(params, &expect, "{}", header);
            }
            let bearer = challenges
                .iter()
                .zip(&got)
                .filter(|((s, _), _)| s.eq_ignore_ascii_case("bearer"))
                .find_map(|(_, (_, p))| p.get("realm").filter(|r| !r.is_empty()).cloned());
            prop_assert_eq!(parse_bearer_challenge(&header).map(|c| c.realm), bearer);
        }
    }
}

//! A client for one repository at one endpoint: GET with the known authorization,
//! redirects followed here (not by reqwest) so that `Authorization` never leaves the
//! endpoint and a redirect target's answers are not taken for the registry's, a 401
//! answered through [`super::authorize`] and the request sent once more, a 429 waited
//! for when it asks for little, answers mapped to errors, and retries with backoff.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use reqwest::StatusCode;
use reqwest::header::{ACCEPT, AUTHORIZATION, LOCATION, RANGE};
use serde::Deserialize;

use super::authorize::Authorizer;
use super::credentials::Creds;
use super::endpoint::{Endpoint, MAX_REDIRECTS, authority, chain, same_origin, shown};
use super::token::Access;
use crate::error::{Error, Result};
use crate::reference::Reference;

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

/// The error for a registry's answer `status` (not 2xx) to a request for `what` at
/// `url`, with the start of the answer's body. Registries explain 4xx answers with an
/// error envelope (`{"errors":[{"code":…}]}`) whose code is used when the status says
/// little.
pub(super) fn status_error(what: &str, url: &str, status: StatusCode, body: &[u8]) -> Error {
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
pub(super) async fn read_body(
    mut resp: reqwest::Response,
    limit: u64,
    what: &str,
) -> Result<Bytes> {
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

/// What to check when a TLS handshake failed: the host's CA and client certificate.
fn tls_hint(why: &str, host: &str) -> String {
    let tls = ["certificate", "UnknownIssuer", "alert", "handshake"];
    if tls.iter().any(|w| why.contains(w)) {
        format!(
            " (TLS with {host} failed: check the CA certificates and the client certificate \
             configured for it in [images.registries] or hosts_dir)"
        )
    } else {
        String::new()
    }
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
    pub(super) fn backoff(attempt: u32) -> Duration {
        Duration::from_millis(200u64.saturating_mul(1 << attempt.min(6)))
    }

    /// Runs `f` (the request `what` to `host`) until it succeeds, fails with a
    /// non-transient error, or retries run out.
    pub(super) async fn retry<T, F, Fut>(&self, what: &str, host: &str, mut f: F) -> Result<T>
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

/// A client bound to one endpoint and one repository.
#[derive(Clone)]
pub struct RegistryClient {
    auth: Arc<Authorizer>,
    access: Access,
    /// `<scheme>://<host>/v2/<repository>`.
    pub(super) base: String,
    /// `host/repository`, for messages.
    pub(super) name: String,
    pub(super) policy: Policy,
}

impl RegistryClient {
    /// A client for `reference`'s repository at `endpoint` with `creds`, over the HTTP
    /// clients and the authorization state of `auth`.
    pub fn new(
        auth: Arc<Authorizer>,
        endpoint: Endpoint,
        reference: &Reference,
        creds: Creds,
        policy: Policy,
    ) -> Result<Self> {
        let repository = reference.path();
        let name = format!("{}/{repository}", endpoint.host);
        let access = Access::new(endpoint, repository, creds, policy.no_progress)?;
        Ok(RegistryClient {
            base: format!(
                "{}{}/{repository}",
                access.origin().as_str().trim_end_matches('/'),
                access.endpoint().path.trim_end_matches('/')
            ),
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
    pub(super) async fn get(
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
                self.auth.transport().http_for(self.endpoint(), &at)?
            } else {
                self.auth.transport().http(self.endpoint())?
            };
            let mut req = http.get(at.clone());
            if !left_origin {
                for (k, v) in &self.endpoint().headers {
                    req = req.header(k.as_str(), v.as_str());
                }
            }
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
                let why = chain(&e.without_url());
                Error::Unavailable(format!(
                    "{what}: GET {}: {why}{}",
                    shown(&at),
                    tls_hint(&why, &authority(&at))
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
}

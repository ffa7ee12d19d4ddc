//! Bearer tokens from a registry's token service, the distribution token spec's way
//! and containerd's: with an identity token, the OAuth2 refresh-token grant (a form
//! `POST` to the realm; a `401`, `404` or `405` answer falls back to the `GET`); else
//! `GET <realm>?service=…&scope=…`, with basic credentials if there are any. A token is
//! kept per (endpoint, credentials, scope) for ¾ of its `expires_in` (60 s when the
//! answer has none or less). One token request per scope at a time: the others wait
//! and use its token. A refresh token rotated by the token service (a new
//! `refresh_token` in its answer) replaces the given identity token at that service
//! from then on.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use reqwest::header::AUTHORIZATION;
use serde::Deserialize;

use super::challenge::Challenge;
use super::credentials::Creds;
use super::endpoint::{Endpoint, MAX_REDIRECTS, Transport, chain, same_origin};
use crate::error::{Error, Result};
use crate::keyed::KeyedLocks;

/// Longest token service answer read.
const MAX_TOKEN_ANSWER: u64 = 1 << 20;

/// The `client_id` sent to token services.
pub const CLIENT_ID: &str = "crust";

/// Entries kept per map before old ones go: credentials rotate (kubelet passes them
/// with each pull), and forgetting costs one more 401 at most.
pub(super) const LIMIT: usize = 256;

/// What one registry client authorizes: a repository at an endpoint with some
/// credentials.
#[derive(Clone, Debug)]
pub struct Access {
    pub(super) endpoint: Endpoint,
    pub(super) creds: Creds,
    /// `repository:<path>:pull`.
    scope: String,
    /// Endpoint and credentials, hashed: what the endpoint wants is kept under it.
    pub(super) host_key: String,
    /// `host_key` and scope: tokens are kept under it.
    pub(super) token_key: String,
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
        let origin = endpoint.origin()?;
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

/// A token request to a realm.
enum TokenRequest {
    /// The OAuth2 form.
    Post(reqwest::Url, String),
    /// The token spec's GET, with the basic credentials if there are any.
    Get(reqwest::Url, Option<String>),
}

/// What the refresh-token grant came to.
enum Grant {
    Token((String, Duration)),
    /// Make the GET token request; the grant's refusal (a 401), if it was one.
    Get(Option<String>),
}

/// What a token service said.
enum Answer {
    Token(TokenAnswer),
    /// Not 200: the status and the start of the body.
    Refused(StatusCode, String),
}

/// Bearer tokens: kept ones, and the token service requests that get new ones.
pub struct Tokens {
    transport: Arc<Transport>,
    /// `Authorization` values of bearer tokens by [`Access::token_key`], with the time
    /// they are no longer used.
    kept: Mutex<HashMap<String, (String, Instant)>>,
    /// Rotated refresh tokens by a digest of (realm, service, the given identity token).
    refresh: Mutex<HashMap<String, String>>,
    /// One token request at a time per token key; the others wait and use its token.
    fetching: KeyedLocks,
}

fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Tokens {
    /// Token requests go over `transport`'s clients.
    pub fn new(transport: Arc<Transport>) -> Self {
        Tokens {
            transport,
            kept: Mutex::new(HashMap::new()),
            refresh: Mutex::new(HashMap::new()),
            fetching: KeyedLocks::default(),
        }
    }

    /// The HTTP clients tokens are asked for over.
    pub fn transport(&self) -> &Transport {
        &self.transport
    }

    /// The kept `Authorization` of `a`'s scope, if it is still to be used.
    pub fn cached(&self, a: &Access) -> Option<String> {
        locked(&self.kept)
            .get(&a.token_key)
            .filter(|(_, until)| Instant::now() < *until)
            .map(|(t, _)| t.clone())
    }

    /// Forgets the kept token of `a`'s scope if it is `sent` (the registry refused it).
    pub fn forget(&self, a: &Access, sent: &str) {
        let mut kept = locked(&self.kept);
        if kept.get(&a.token_key).is_some_and(|(t, _)| t == sent) {
            kept.remove(&a.token_key);
        }
    }

    /// A bearer token for `a` from the token service of `ch`, as an `Authorization`
    /// value: the kept one if another request got it meanwhile (and it is not `stale`),
    /// else a new one, kept.
    pub async fn get(&self, a: &Access, ch: &Challenge, stale: Option<&str>) -> Result<String> {
        let _one = self.fetching.lock(&a.token_key).await;
        if let Some(t) = self.cached(a)
            && Some(t.as_str()) != stale
        {
            return Ok(t);
        }
        let (token, life) = self.fetch_token(a, ch).await?;
        let value = format!("Bearer {token}");
        let mut kept = locked(&self.kept);
        if kept.len() >= LIMIT {
            let now = Instant::now();
            kept.retain(|_, (_, until)| *until > now);
            if kept.len() >= LIMIT {
                kept.clear();
            }
        }
        kept.insert(a.token_key.clone(), (value.clone(), Instant::now() + life));
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
            match self
                .refresh_grant(a, ch, &realm_url, &scopes, identity)
                .await?
            {
                Grant::Token(t) => return Ok(t),
                Grant::Get(refused) => refused_post = refused,
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

    /// The OAuth2 refresh-token grant with `identity` (or the refresh token that
    /// replaced it): a token, or the GET token request to make instead (with the
    /// refusal of the grant, if it was one).
    async fn refresh_grant(
        &self,
        a: &Access,
        ch: &Challenge,
        realm_url: &reqwest::Url,
        scopes: &[&str],
        identity: &str,
    ) -> Result<Grant> {
        let host = &a.endpoint.host;
        let realm = &ch.realm;
        let refresh_key = crate::digest::sha256(
            format!(
                "{realm}\0{}\0{identity}",
                ch.service.as_deref().unwrap_or("")
            )
            .as_bytes(),
        );
        let rotated = locked(&self.refresh).get(&refresh_key).cloned();
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
                    let mut refreshed = locked(&self.refresh);
                    if refreshed.len() >= LIMIT {
                        refreshed.clear();
                    }
                    refreshed.insert(refresh_key, r.to_string());
                }
                answer_token(t, realm).map(Grant::Token)
            }
            // No OAuth2 here (404, 405), or this grant refused (401, as Artifactory
            // answers): the GET token request of the token spec instead.
            Answer::Refused(status, body) if matches!(status.as_u16(), 401 | 404 | 405) => {
                tracing::debug!(%realm, %status, "refresh-token grant not taken, using GET");
                if rotated.is_some() {
                    // Next time, start again from the identity token we were given.
                    locked(&self.refresh).remove(&refresh_key);
                }
                let refused =
                    (status == StatusCode::UNAUTHORIZED).then(|| format!("{status}: {body}"));
                Ok(Grant::Get(refused))
            }
            Answer::Refused(status, body) => Err(Error::Unauthenticated(format!(
                "{host}: identity token refused by token service {realm}: {status}: {body}"
            ))),
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
        let net = |e: reqwest::Error| {
            Error::Unavailable(format!(
                "token service {realm}: {}",
                chain(&e.without_url())
            ))
        };
        let exchange = async {
            let origin = match &request {
                TokenRequest::Post(u, _) | TokenRequest::Get(u, _) => u.clone(),
            };
            let mut at = origin.clone();
            let mut left = false;
            let mut hops = 0;
            let mut resp = loop {
                left = left || !same_origin(&at, &origin);
                let http = self.transport.http_for(&a.endpoint, &at)?;
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
                let resp = req.send().await.map_err(net)?;
                let redirect = matches!(request, TokenRequest::Get(..))
                    && matches!(resp.status().as_u16(), 301 | 302 | 303 | 307 | 308)
                    && hops < MAX_REDIRECTS;
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
            while let Some(c) = resp.chunk().await.map_err(net)? {
                if (body.len() + c.len()) as u64 > MAX_TOKEN_ANSWER {
                    return Ok((status, None));
                }
                body.extend_from_slice(&c);
            }
            Ok::<_, Error>((status, Some(body)))
        };
        let (status, body) = tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| {
                Error::Unavailable(format!("token service {realm}: no answer in {timeout:?}"))
            })??;
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

/// Longest life of a token taken from its `expires_in`.
const MAX_TOKEN_LIFE_SECS: u64 = 365 * 24 * 3600;

/// The token of a token service's answer and how long to use it: ¾ of its lifetime
/// (`expires_in`, 60 s by default and at least, as the token spec says and
/// containers/image does; a token refused before that gets a 401 and is fetched again).
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::credentials::RegistryAuth;

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

    #[test]
    fn secrets_stay_out_of_keys() {
        let c = Creds {
            auth: RegistryAuth::Basic("u".into(), "hunter2".into()),
            identity_token: Some("refresh-xyz".into()),
        };
        let a = Access::new(
            Endpoint::plain("r.io", false, false),
            "a/b",
            c,
            Duration::from_secs(1),
        )
        .unwrap();
        assert!(!format!("{a:?}").contains("hunter2"));
        assert!(!a.token_key.contains("hunter2") && !a.token_key.contains("refresh-xyz"));
    }
}

/// Property-based fuzzing of token service answers (docs/testing.md, "Fuzzing").
#[cfg(test)]
mod fuzz {
    use super::*;
    use crate::fuzz::config;
    use proptest::prelude::*;

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
    }
}

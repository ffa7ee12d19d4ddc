//! What oci-client does not do for us at a token service: the OAuth2 refresh-token
//! grant for identity tokens (the distribution "oauth" token spec, as Docker and
//! containerd speak it).
//!
//! With an identity token, before a registry is used: `GET /v2/`; on a `Bearer`
//! challenge, `POST` the realm a form `grant_type=refresh_token, refresh_token, service,
//! scope, client_id=crust`; the `access_token` answered is then used as a plain bearer
//! token. A token service that does not take POSTs (404/405) gets the GET token request
//! of the token spec instead, which oci-client makes with basic auth. Access tokens are
//! kept until shortly before they expire, so the next pull neither logs in again nor
//! needs a new registry client.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use oci_client::secrets::RegistryAuth;
use serde::Deserialize;

use crate::error::{Error, Result};
use crate::registry::Endpoint;

/// The `client_id` sent to token services.
pub const CLIENT_ID: &str = "crust";

/// Credentials for one endpoint.
#[derive(Clone, PartialEq, Eq)]
pub struct Creds {
    /// What oci-client gets: used as is, or, with an identity token, for a `Basic`
    /// challenge and for the GET token request when the token service takes no POST.
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

/// A `Bearer` challenge from `WWW-Authenticate`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    /// The token service URL.
    pub realm: String,
    /// The `service` parameter, if given.
    pub service: Option<String>,
    /// The `scope` parameter, if given.
    pub scope: Option<String>,
}

/// Parses the `Bearer` challenge of a `WWW-Authenticate` value (`Bearer realm="…",
/// service="…"`); `None` for another scheme or without a realm.
pub fn parse_bearer_challenge(header: &str) -> Option<Challenge> {
    let header = header.trim_start();
    let (scheme, rest) = header.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let mut params: HashMap<String, String> = HashMap::new();
    let mut s = rest.chars().peekable();
    loop {
        while s.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            s.next();
        }
        let key: String = s.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() {
            break;
        }
        let mut value = String::new();
        if s.peek() == Some(&'"') {
            s.next();
            while let Some(c) = s.next() {
                match c {
                    '\\' => value.extend(s.next()),
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            while let Some(c) = s.peek().copied() {
                if c == ',' {
                    break;
                }
                value.push(c);
                s.next();
            }
            value = value.trim().to_string();
        }
        params.insert(key.trim().to_ascii_lowercase(), value);
    }
    Some(Challenge {
        realm: params.remove("realm").filter(|r| !r.is_empty())?,
        service: params.remove("service"),
        scope: params.remove("scope"),
    })
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
}

/// Logs in with identity tokens and keeps the access tokens it got.
pub struct Authenticator {
    verified: reqwest::Client,
    unverified: reqwest::Client,
    /// Access tokens by a digest of (endpoint, repository, credentials), with the time
    /// they are no longer used.
    tokens: Mutex<HashMap<String, (String, Instant)>>,
}

impl Authenticator {
    /// HTTP clients for token services, connecting within `connect_timeout`.
    pub fn new(connect_timeout: Duration) -> Result<Self> {
        let build = |skip_verify: bool| {
            reqwest::Client::builder()
                .connect_timeout(connect_timeout)
                .tls_danger_accept_invalid_certs(skip_verify)
                .build()
                .map_err(|e| Error::Internal(format!("token service client: {e}")))
        };
        Ok(Authenticator {
            verified: build(false)?,
            unverified: build(true)?,
            tokens: Mutex::new(HashMap::new()),
        })
    }

    /// What to hand oci-client for `repository` at `ep`: `creds.auth` unless there is an
    /// identity token and the registry challenges for a bearer token whose service takes
    /// the refresh-token grant, in which case the access token it answers.
    /// Each request waits at most `timeout`.
    pub async fn login(
        &self,
        ep: &Endpoint,
        repository: &str,
        creds: &Creds,
        timeout: Duration,
    ) -> Result<RegistryAuth> {
        let Some(identity) = creds.identity_token.as_deref() else {
            return Ok(creds.auth.clone());
        };
        let key = crate::digest::sha256(
            format!(
                "{}\0{}\0{}\0{repository}\0{identity}\0{:?}",
                ep.host,
                ep.http,
                ep.skip_verify,
                match &creds.auth {
                    RegistryAuth::Basic(u, p) => format!("{u}\0{p}"),
                    _ => String::new(),
                }
            )
            .as_bytes(),
        );
        {
            let tokens = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((t, until)) = tokens.get(&key)
                && Instant::now() < *until
            {
                return Ok(RegistryAuth::Bearer(t.clone()));
            }
        }
        let http = if ep.skip_verify {
            &self.unverified
        } else {
            &self.verified
        };
        let scheme = if ep.http { "http" } else { "https" };
        let probe = format!("{scheme}://{}/v2/", ep.host);
        let unreachable = |e: reqwest::Error| Error::Unavailable(format!("{probe}: {e}"));
        let resp = tokio::time::timeout(timeout, http.get(&probe).send())
            .await
            .map_err(|_| Error::Unavailable(format!("{probe}: no answer in {timeout:?}")))?
            .map_err(unreachable)?;
        let challenge = (resp.status() == reqwest::StatusCode::UNAUTHORIZED)
            .then(|| {
                resp.headers()
                    .get_all(reqwest::header::WWW_AUTHENTICATE)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .find_map(parse_bearer_challenge)
            })
            .flatten();
        let Some(challenge) = challenge else {
            // No auth, or basic auth: oci-client knows what to do with `creds.auth`.
            return Ok(creds.auth.clone());
        };
        if !(challenge.realm.starts_with("https://") || challenge.realm.starts_with("http://")) {
            return Err(Error::Unauthenticated(format!(
                "{}: token realm {:?} is not an HTTP URL",
                ep.host, challenge.realm
            )));
        }
        let scope = format!("repository:{repository}:pull");
        let mut fields = vec![
            ("grant_type", "refresh_token"),
            ("refresh_token", identity),
            ("client_id", CLIENT_ID),
            ("scope", scope.as_str()),
        ];
        if let Some(s) = challenge.service.as_deref() {
            fields.push(("service", s));
        }
        let realm = &challenge.realm;
        let post = async {
            let resp = http
                .post(realm)
                .header(
                    reqwest::header::CONTENT_TYPE,
                    "application/x-www-form-urlencoded",
                )
                .body(form(&fields))
                .send()
                .await?;
            let status = resp.status();
            let body = resp.bytes().await?;
            Ok::<_, reqwest::Error>((status, body))
        };
        let (status, body) = tokio::time::timeout(timeout, post)
            .await
            .map_err(|_| Error::Unavailable(format!("token service {realm}: no answer")))?
            .map_err(|e| Error::Unavailable(format!("token service {realm}: {e}")))?;
        let text = || String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
        match status.as_u16() {
            200 => {}
            // No OAuth2 at this token service: the GET token request, as oci-client makes it.
            404 | 405 => {
                tracing::debug!(%realm, %status, "token service takes no POST, using GET");
                return Ok(creds.auth.clone());
            }
            429 | 500..=599 => {
                return Err(Error::Unavailable(format!(
                    "token service {realm}: {status}: {}",
                    text()
                )));
            }
            _ => {
                return Err(Error::Unauthenticated(format!(
                    "{}: identity token refused by token service {realm}: {status}: {}",
                    ep.host,
                    text()
                )));
            }
        }
        let answer: TokenAnswer = serde_json::from_slice(&body).map_err(|e| {
            Error::Unauthenticated(format!("token service {realm}: unreadable answer: {e}"))
        })?;
        let token = answer
            .access_token
            .or(answer.token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                Error::Unauthenticated(format!("token service {realm}: no access_token"))
            })?;
        // The spec's default lifetime is 60s; stop using a token a quarter early.
        let life = Duration::from_secs(answer.expires_in.unwrap_or(60).max(1)) * 3 / 4;
        let mut tokens = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        if tokens.len() >= 256 {
            let now = Instant::now();
            tokens.retain(|_, (_, until)| *until > now);
        }
        tokens.insert(key, (token.clone(), Instant::now() + life));
        Ok(RegistryAuth::Bearer(token))
    }
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
    }

    #[test]
    fn form_encoding() {
        assert_eq!(
            form(&[("scope", "repository:a/b:pull x"), ("t", "a+b=c&~")]),
            "scope=repository%3Aa%2Fb%3Apull+x&t=a%2Bb%3Dc%26~"
        );
    }
}

//! Authorizing registry requests, the way containerd's docker authorizer does it.
//!
//! A request goes out at once, with the `Authorization` already known for its endpoint,
//! credentials and repository scope, if any; there is no `GET /v2/` ping. Only a `401`
//! teaches us more, from its `WWW-Authenticate` challenge:
//! - `Bearer realm=…,service=…,scope=…`: a token from the token service ([`super::token`]);
//!   the endpoint is remembered as a bearer one (realm and service), so the next request
//!   of that scope, even after its token expired, gets a token before it goes out. The
//!   challenge's own scopes are asked for in the token request that answers it only.
//! - `Basic`: the basic credentials, and from then on with every request to the endpoint.
//!
//! The request is retried once with what was learnt; a second `401`, or a `401` with no
//! usable credentials, is Unauthenticated. A registry token is the bearer token itself
//! and is sent with the first request.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use reqwest::header::{HeaderMap, WWW_AUTHENTICATE};

use super::challenge::{Challenge, is_basic_challenge, parse_bearer_challenge};
use super::credentials::RegistryAuth;
use super::endpoint::Transport;
use super::token::{Access, LIMIT, Tokens};
use crate::error::{Error, Result};

/// How an endpoint (with some credentials) wants to be authorized, learnt from a 401.
#[derive(Clone)]
enum HostAuth {
    Basic,
    Bearer(Challenge),
}

/// What registries taught us about their authorization (schemes, tokens), shared by
/// all pulls of an image store, with the HTTP clients requests go over.
pub struct Authorizer {
    /// By [`Access`]'s host key (endpoint and credentials, hashed).
    hosts: Mutex<HashMap<String, HostAuth>>,
    tokens: Tokens,
}

impl Authorizer {
    /// Requests, token requests included, go over `transport`'s clients.
    pub fn new(transport: Arc<Transport>) -> Self {
        Authorizer {
            hosts: Mutex::new(HashMap::new()),
            tokens: Tokens::new(transport),
        }
    }

    /// The HTTP clients.
    pub fn transport(&self) -> &Transport {
        self.tokens.transport()
    }

    fn hosts(&self) -> MutexGuard<'_, HashMap<String, HostAuth>> {
        self.hosts.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn learn(&self, host_key: &str, how: HostAuth) {
        let mut hosts = self.hosts();
        if hosts.len() >= LIMIT && !hosts.contains_key(host_key) {
            hosts.clear();
        }
        hosts.insert(host_key.to_string(), how);
    }

    /// The `Authorization` to send with a request of `a`, if one is known: the registry
    /// token; the basic credentials for an endpoint that asked for them; for a bearer
    /// endpoint the kept token, or a new one when it expired.
    pub async fn authorization(&self, a: &Access) -> Result<Option<String>> {
        if let RegistryAuth::Bearer(t) = &a.creds.auth {
            return Ok(Some(format!("Bearer {t}")));
        }
        let known = self.hosts().get(&a.host_key).cloned();
        match known {
            None => Ok(None),
            Some(HostAuth::Basic) => Ok(a.creds.basic_header()),
            Some(HostAuth::Bearer(ch)) => {
                if let Some(t) = self.tokens.cached(a) {
                    return Ok(Some(t));
                }
                self.tokens.get(a, &ch, None).await.map(Some)
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
                self.learn(&a.host_key, HostAuth::Bearer(learnt));
                if let Some(s) = sent {
                    self.tokens.forget(a, s);
                }
            }
            return self.tokens.get(a, &ch, sent).await;
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
                    self.learn(&a.host_key, HostAuth::Basic);
                    Ok(h)
                }
            };
        }
        Err(Error::Unauthenticated(format!(
            "{what}: {host} answered 401 without a usable challenge ({values:?})"
        )))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::registry::endpoint::Endpoint;

    fn access(host: &str, http: bool, skip_verify: bool) -> Access {
        Access::new(
            Endpoint::plain(host, http, skip_verify),
            "a/b",
            RegistryAuth::Basic("u".into(), "p".into()).into(),
            Duration::from_secs(1),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn plain_http_realm_only_for_insecure_endpoints() {
        let auth = Authorizer::new(Arc::new(
            Transport::new(Duration::from_secs(1), []).unwrap(),
        ));
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
}

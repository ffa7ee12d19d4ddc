//! Credentials for a registry endpoint: the pull request's (CRI `AuthConfig`), the
//! config's `[images.registries]`, or a Docker `config.json`-style credentials file,
//! turned into what is sent to the registry and its token service.

use std::collections::BTreeMap;

use base64::Engine as _;
use serde::Deserialize;

use crate::config::{Config, RegistryConfig};
use crate::error::{Error, Result};
use crate::reference::DOCKER_DOMAIN;

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
    pub(crate) fn key(&self) -> String {
        let who = match &self.auth {
            RegistryAuth::Anonymous => "anonymous".to_string(),
            RegistryAuth::Basic(u, p) => format!("basic\0{u}\0{p}"),
            RegistryAuth::Bearer(t) => format!("bearer\0{t}"),
        };
        let id = self.identity_token.as_deref().unwrap_or("");
        crate::digest::sha256(format!("{who}\0{id}").as_bytes())
    }

    pub(crate) fn basic(&self) -> Option<(&str, &str)> {
        match &self.auth {
            RegistryAuth::Basic(u, p) => Some((u, p)),
            _ => None,
        }
    }

    /// The `Authorization` value of the basic credentials, if there are any.
    pub(crate) fn basic_header(&self) -> Option<String> {
        self.basic().map(|(u, p)| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
            )
        })
    }
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

#[cfg(test)]
mod tests {
    use super::*;

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
    fn secrets_stay_out_of_debug_and_keys() {
        let c = Creds {
            auth: RegistryAuth::Basic("u".into(), "hunter2".into()),
            identity_token: Some("refresh-xyz".into()),
        };
        assert!(!format!("{c:?}{:?}", c.auth).contains("hunter2"));
        assert!(!c.key().contains("hunter2") && !c.key().contains("refresh-xyz"));
    }
}

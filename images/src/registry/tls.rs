//! TLS settings of a registry endpoint: extra CA certificates (trusted besides the
//! system's), a client certificate and key (mTLS), and `skip_verify`. The files are read
//! and checked when the registry configuration is loaded (at start and on SIGHUP), so a
//! bad file is refused then, with the old configuration kept, never in the middle of a
//! pull; a client is then built once per distinct setting and shared.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// A client certificate file and its key's file (none when the certificate's file holds
/// the key too).
pub type ClientPair = (PathBuf, Option<PathBuf>);

/// The TLS files of an endpoint, as configured.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct TlsFiles {
    /// PEM files of CA certificates.
    pub ca: Vec<PathBuf>,
    /// Client certificate and key files; no key file when the certificate file holds
    /// the key too. The first pair is used.
    pub client: Vec<ClientPair>,
    /// Do not verify the server's certificate.
    pub skip_verify: bool,
}

impl TlsFiles {
    /// Reads and checks the files.
    pub fn load(&self) -> Result<Tls> {
        let mut ca = Vec::new();
        for path in &self.ca {
            let pem = read(path, "CA certificate")?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                Error::InvalidArgument(format!("CA certificate {}: {e}", path.display()))
            })?;
            if certs.is_empty() {
                return Err(Error::InvalidArgument(format!(
                    "CA certificate {}: no PEM certificate in it",
                    path.display()
                )));
            }
            ca.extend_from_slice(&pem);
            ca.push(b'\n');
        }
        let identity = match self.client.first() {
            None => None,
            Some((cert, key)) => {
                let mut pem = read(cert, "client certificate")?;
                if let Some(key) = key {
                    pem.push(b'\n');
                    pem.extend_from_slice(&read(key, "client key")?);
                }
                let what = || {
                    let key = key.as_ref().map(|k| format!(" and {}", k.display()));
                    format!(
                        "client certificate {}{}",
                        cert.display(),
                        key.unwrap_or_default()
                    )
                };
                // reqwest takes a PEM without a key (and fails later); check both here.
                let has_key = pem.windows(11).any(|w| w == b"PRIVATE KEY");
                if !has_key {
                    return Err(Error::InvalidArgument(format!(
                        "{}: no private key",
                        what()
                    )));
                }
                reqwest::Identity::from_pem(&pem)
                    .map_err(|e| Error::InvalidArgument(format!("{}: {e}", what())))?;
                Some(pem)
            }
        };
        let key = crate::digest::sha256(
            &[
                ca.as_slice(),
                b"\0",
                identity.as_deref().unwrap_or_default(),
            ]
            .concat(),
        );
        Ok(Tls { ca, identity, key })
    }
}

fn read(path: &Path, what: &str) -> Result<Vec<u8>> {
    std::fs::read(path)
        .map_err(|e| Error::InvalidArgument(format!("{what} {}: {e}", path.display())))
}

/// Loaded TLS files: what a client is built with (besides `skip_verify`).
#[derive(Clone, PartialEq, Eq)]
pub struct Tls {
    /// CA certificates (PEM), trusted besides the system's.
    ca: Vec<u8>,
    /// Client certificate and key (PEM).
    identity: Option<Vec<u8>>,
    /// A digest of both: clients are kept under it.
    key: String,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("ca", &!self.ca.is_empty())
            .field("client_certificate", &self.identity.is_some())
            .finish()
    }
}

impl Default for Tls {
    fn default() -> Self {
        TlsFiles::default().load().expect("no files to read")
    }
}

impl Tls {
    /// Whether a CA or a client certificate is configured.
    pub fn is_configured(&self) -> bool {
        !self.ca.is_empty() || self.identity.is_some()
    }

    /// What tells two settings apart.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Applies the settings to a client being built; certificates go unverified with
    /// `skip_verify`.
    pub fn apply(
        &self,
        mut b: reqwest::ClientBuilder,
        skip_verify: bool,
    ) -> Result<reqwest::ClientBuilder> {
        if !self.ca.is_empty() {
            let certs = reqwest::Certificate::from_pem_bundle(&self.ca)
                .map_err(|e| Error::InvalidArgument(format!("CA certificates: {e}")))?;
            b = b.tls_certs_merge(certs);
        }
        if let Some(pem) = &self.identity {
            let id = reqwest::Identity::from_pem(pem)
                .map_err(|e| Error::InvalidArgument(format!("client certificate: {e}")))?;
            b = b.identity(id);
        }
        Ok(b.tls_danger_accept_invalid_certs(skip_verify))
    }
}

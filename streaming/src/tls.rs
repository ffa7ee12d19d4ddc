//! TLS for the streaming server, from a certificate chain and a private key in
//! PEM files (what containerd's `x509_key_pair_streaming` and kubelet's own
//! streaming server take). Only HTTP/1.1 is offered: both SPDY/3.1 and WebSocket
//! upgrade an HTTP/1.1 connection.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::{self, ServerConfig};

/// Where the server's certificate chain and key are.
#[derive(Debug, Clone, PartialEq)]
pub struct TlsFiles {
    /// PEM: the server's certificate first, then its intermediates.
    pub cert: PathBuf,
    /// PEM: the certificate's private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// Why the TLS files could not be used.
#[derive(Debug)]
pub struct TlsError {
    path: PathBuf,
    msg: String,
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "streaming TLS: {}: {}", self.path.display(), self.msg)
    }
}

impl std::error::Error for TlsError {}

fn err(path: &Path, msg: impl fmt::Display) -> TlsError {
    TlsError {
        path: path.to_path_buf(),
        msg: msg.to_string(),
    }
}

/// Reads both files and builds the acceptor; a file that is missing, holds no
/// certificate or key, or a key that does not match the certificate is an error
/// naming the file.
pub fn acceptor(files: &TlsFiles) -> Result<TlsAcceptor, TlsError> {
    let certs = CertificateDer::pem_file_iter(&files.cert)
        .map_err(|e| err(&files.cert, pem_error(e)))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(&files.cert, pem_error(e)))?;
    if certs.is_empty() {
        return Err(err(&files.cert, "no CERTIFICATE block in the file"));
    }
    let key =
        PrivateKeyDer::from_pem_file(&files.key).map_err(|e| err(&files.key, pem_error(e)))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| err(&files.cert, e))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| err(&files.key, format!("does not fit the certificate: {e}")))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

fn pem_error(e: rustls_pki_types::pem::Error) -> String {
    match e {
        rustls_pki_types::pem::Error::Io(e) => e.to_string(),
        rustls_pki_types::pem::Error::NoItemsFound => "no PEM block of the expected kind".into(),
        other => format!("not valid PEM: {other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_and_empty_files_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let files = TlsFiles {
            cert: dir.path().join("absent.crt"),
            key: dir.path().join("absent.key"),
        };
        let e = acceptor(&files).err().expect("refused").to_string();
        assert!(e.contains("absent.crt"), "{e}");

        std::fs::write(&files.cert, "not pem at all\n").unwrap();
        let e = acceptor(&files).err().expect("refused").to_string();
        assert!(
            e.contains("absent.crt") && e.contains("no CERTIFICATE"),
            "{e}"
        );
    }

    fn openssl(args: &[&str], dir: &Path) {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl (hack/install-deps installs it)");
        assert!(out.status.success(), "openssl {args:?}: {out:?}");
    }

    #[test]
    fn a_key_must_fit_its_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for name in ["a", "b"] {
            let out = format!("{name}.key");
            openssl(
                &[
                    "ecparam",
                    "-name",
                    "prime256v1",
                    "-genkey",
                    "-noout",
                    "-out",
                    &out,
                ],
                d,
            );
        }
        let subj = ["-subj", "/CN=127.0.0.1", "-days", "2", "-out", "a.crt"];
        openssl(
            &[&["req", "-new", "-x509", "-key", "a.key"][..], &subj[..]].concat(),
            d,
        );
        let files = |cert: &str, key: &str| TlsFiles {
            cert: d.join(cert),
            key: d.join(key),
        };
        assert!(acceptor(&files("a.crt", "a.key")).is_ok());
        let e = acceptor(&files("a.crt", "b.key"))
            .err()
            .expect("refused")
            .to_string();
        assert!(e.contains("b.key") && e.contains("does not fit"), "{e}");
        let e = acceptor(&files("a.crt", "a.crt"))
            .err()
            .expect("refused")
            .to_string();
        assert!(e.contains("a.crt"), "{e}");
    }
}

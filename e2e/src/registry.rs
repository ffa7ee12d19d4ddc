//! The fixture images of `hack/fixtures`, served by a real docker-registry on
//! 127.0.0.1 that a test starts for itself (read-only over the cached storage)
//! and that is stopped by PID when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use crate::free_port;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// `$CRUST_FIXTURES_DIR`, else `<repo>/.cache/fixtures`.
pub fn fixtures_dir() -> PathBuf {
    std::env::var_os("CRUST_FIXTURES_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".cache/fixtures"))
}

/// The registry storage `hack/fixtures` filled.
pub fn storage() -> PathBuf {
    std::env::var_os("CRUST_FIXTURES_STORAGE")
        .map(PathBuf::from)
        .unwrap_or_else(|| fixtures_dir().join("storage"))
}

/// `images.json`: what `hack/fixtures` pushed, with digests.
pub fn fixtures() -> Value {
    let p = fixtures_dir().join("images.json");
    let text = std::fs::read(&p)
        .unwrap_or_else(|e| panic!("{}: {e} (run hack/fixtures first)", p.display()));
    serde_json::from_slice(&text).expect("images.json")
}

/// A docker-registry serving the fixture storage read-only, stopped by PID on drop.
pub struct Registry {
    child: Child,
    pub addr: String,
    _dir: tempfile::TempDir,
}

impl Registry {
    /// Starts a registry; with `htpasswd`, it asks for that user and password.
    pub fn start(htpasswd: Option<(&str, &str)>) -> Result<Registry> {
        Registry::start_with(htpasswd, None)
    }

    /// Starts a registry serving HTTPS with `tls`'s server certificate and requiring a
    /// client certificate signed by its CA.
    pub fn start_tls(tls: &Pki) -> Result<Registry> {
        Registry::start_with(None, Some(tls))
    }

    fn start_with(htpasswd: Option<(&str, &str)>, tls: Option<&Pki>) -> Result<Registry> {
        let dir = tempfile::tempdir()?;
        let auth = match htpasswd {
            None => String::new(),
            Some((user, pass)) => {
                let out = Command::new("htpasswd")
                    .args(["-Bbn", user, pass])
                    .output()
                    .context("htpasswd")?;
                let file = dir.path().join("htpasswd");
                std::fs::write(&file, &out.stdout)?;
                format!(
                    "auth:\n  htpasswd:\n    realm: crust\n    path: {}\n",
                    file.display()
                )
            }
        };
        for _ in 0..5 {
            let addr = format!("127.0.0.1:{}", free_port());
            let config = dir.path().join("registry.yml");
            std::fs::write(
                &config,
                format!(
                    "version: 0.1\nlog:\n  level: info\n  formatter: text\n  accesslog:\n    disabled: true\n\
                     storage:\n  filesystem:\n    rootdirectory: {}\n  maintenance:\n    uploadpurging:\n      enabled: false\n    readonly:\n      enabled: true\n\
                     http:\n  addr: {addr}\n  secret: crust-e2e\n{tls}{auth}",
                    storage().display(),
                    tls = tls.map(Pki::registry_yaml).unwrap_or_default(),
                ),
            )?;
            let log = std::fs::File::create(dir.path().join("registry.log"))?;
            let mut child = Command::new("/usr/bin/docker-registry")
                .arg("serve")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .context("docker-registry")?;
            let deadline = Instant::now() + Duration::from_secs(15);
            loop {
                if std::net::TcpStream::connect(&addr).is_ok() {
                    return Ok(Registry {
                        child,
                        addr,
                        _dir: dir,
                    });
                }
                if child.try_wait()?.is_some() || Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    break; // the port was taken, most likely: try another
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        bail!("docker-registry did not start")
    }

    /// `127.0.0.1:PORT/<name>`.
    pub fn image(&self, name: &str) -> String {
        format!("{}/{name}", self.addr)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A private CA made for a test with the openssl CLI, a server certificate for
/// 127.0.0.1 and a client certificate, all signed by it (PEM files in a temp dir).
pub struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    /// Makes the CA and both certificates.
    pub fn new() -> Result<Pki> {
        let dir = tempfile::tempdir()?;
        let d = dir.path();
        let openssl = |args: &[&str]| -> Result<()> {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(d)
                .output()
                .context("openssl")?;
            if !out.status.success() {
                bail!("openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
            }
            Ok(())
        };
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=crust e2e CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ])?;
        std::fs::write(
            d.join("server.ext"),
            "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
        )?;
        std::fs::write(d.join("client.ext"), "extendedKeyUsage=clientAuth\n")?;
        for (name, cn) in [("server", "127.0.0.1"), ("client", "crust e2e client")] {
            let subj = format!("/CN={cn}");
            let (key, csr, pem, ext) = (
                format!("{name}.key"),
                format!("{name}.csr"),
                format!("{name}.pem"),
                format!("{name}.ext"),
            );
            openssl(&[
                "req", "-newkey", "rsa:2048", "-nodes", "-subj", &subj, "-keyout", &key, "-out",
                &csr,
            ])?;
            openssl(&[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                &ext,
                "-out",
                &pem,
            ])?;
        }
        Ok(Pki { dir })
    }

    /// A file of this PKI: `ca.pem`, `client.pem`, `client.key`, `server.pem`, ...
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// docker-registry's `http.tls`: this server certificate, client certificates
    /// required and verified against the CA.
    fn registry_yaml(&self) -> String {
        format!(
            "  tls:\n    certificate: {}\n    key: {}\n    clientcas:\n      - {}\n",
            self.path("server.pem").display(),
            self.path("server.key").display(),
            self.path("ca.pem").display()
        )
    }
}

/// A TCP proxy on 127.0.0.1 in front of `upstream` that passes the registry's answers at
/// most `rate` bytes per second per connection (0: as fast as they come), so that a pull
/// of an image takes long enough to be killed (or to pass its deadline) half-way
/// through a layer. Its tasks end with the test's runtime.
pub async fn throttling_proxy(upstream: String, rate: Arc<AtomicU64>) -> Result<String> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?.to_string();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let upstream = upstream.clone();
            let rate = rate.clone();
            tokio::spawn(async move {
                let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else {
                    return;
                };
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                let up = async {
                    let _ = tokio::io::copy(&mut cr, &mut sw).await;
                    let _ = sw.shutdown().await;
                };
                let down = async {
                    let mut buf = vec![0u8; 16 * 1024];
                    loop {
                        let n = match sr.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        if cw.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                        let r = rate.load(Ordering::Relaxed);
                        if r > 0 {
                            tokio::time::sleep(Duration::from_secs_f64(n as f64 / r as f64)).await;
                        }
                    }
                    let _ = cw.shutdown().await;
                };
                tokio::join!(up, down);
            });
        }
    });
    Ok(addr)
}

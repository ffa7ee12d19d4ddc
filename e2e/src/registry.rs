//! The fixture images of `hack/fixtures`, served by a real docker-registry on
//! 127.0.0.1 that a test starts for itself (read-only over the cached storage)
//! and that is stopped by PID when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
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
                     http:\n  addr: {addr}\n  secret: crust-e2e\n{auth}",
                    storage().display()
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

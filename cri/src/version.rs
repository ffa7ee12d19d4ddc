//! What `crustd --version` reports: crust's version, the git commit and cargo
//! profile it was built from (recorded by `build.rs`), and what this node would
//! run containers with — each configured runtime handler's binary as crustd
//! resolves it, with that binary's own version, and the shim.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crust_sandbox::{RuntimeKind, resolve_binary};

use crate::config::Config;

/// The commit the source was at when built (`CRUST_GIT_COMMIT` overrides it).
pub const GIT_COMMIT: &str = env!("CRUST_GIT_COMMIT");
/// The cargo profile the binary was built with: `daemon` as shipped, `debug` in tests.
pub const BUILD_PROFILE: &str = env!("CRUST_BUILD_PROFILE");

/// How long a runtime's `--version` may take before it is reported as not answering.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// The full report, one `key: value` per line. `config_file` is where `config`
/// came from (None: built-in defaults).
pub fn report(config: &Config, config_file: Option<&Path>) -> String {
    let mut out = format!(
        "crustd {}\ncommit: {GIT_COMMIT}\nprofile: {BUILD_PROFILE}\nconfig: {}\n",
        crate::RUNTIME_VERSION,
        config_file
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "built-in defaults".to_string()),
    );
    let sandbox = &config.sandbox;
    for (name, handler) in &sandbox.runtime_handlers {
        let default = if *name == sandbox.default_runtime_handler {
            ", default"
        } else {
            ""
        };
        let kind = match handler.kind {
            RuntimeKind::Oci => "oci",
            RuntimeKind::ShimV2 => "shim-v2",
        };
        let found = match resolve_binary(&handler.path) {
            None => format!("{} not found", handler.path.display()),
            // A shim v2 binary has no --version of its own that all of them share.
            Some(p) if handler.kind == RuntimeKind::ShimV2 => p.display().to_string(),
            Some(p) => format!("{} ({})", p.display(), binary_version(&p)),
        };
        out.push_str(&format!("runtime {name} ({kind}{default}): {found}\n"));
    }
    let shim = match sandbox.resolve_shim_binary() {
        Some(p) => p.display().to_string(),
        None => format!("{} not found", sandbox.shim_binary.display()),
    };
    out.push_str(&format!("shim: {shim}\n"));
    out
}

/// The first line `<binary> --version` prints, or why there is none.
fn binary_version(binary: &Path) -> String {
    let child = Command::new(binary)
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => return format!("cannot run: {e}"),
    };
    let deadline = Instant::now() + PROBE_TIMEOUT;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return format!("--version did not answer within {PROBE_TIMEOUT:?}");
            }
        }
    }
    let out = match child.wait_with_output() {
        Ok(o) => o,
        Err(e) => return format!("cannot run: {e}"),
    };
    let text = String::from_utf8_lossy(&out.stdout);
    match text.lines().map(str::trim).find(|l| !l.is_empty()) {
        Some(line) if out.status.success() => line.to_string(),
        _ => format!("--version failed: {}", out.status),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::path::PathBuf;

    use crust_sandbox::RuntimeHandler;

    fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    #[test]
    fn reports_each_handler_as_resolved_with_its_version() {
        let d = tempfile::tempdir().unwrap();
        let fake = script(
            d.path(),
            "fake-runc",
            "[ \"$1\" = --version ] && printf 'fake-runc version 9.9\\nspec: 1.2\\n'",
        );
        let failing = script(d.path(), "failing-runc", "exit 3");
        let mut config = Config::default();
        let handlers = &mut config.sandbox.runtime_handlers;
        for (name, path) in [
            ("runc", fake.clone()),
            ("broken", failing.clone()),
            ("gone", d.path().join("nothing-here")),
        ] {
            handlers.insert(
                name.to_string(),
                RuntimeHandler {
                    kind: RuntimeKind::Oci,
                    path,
                },
            );
        }
        config.sandbox.shim_binary = d.path().join("no-shim");
        let text = report(&config, Some(Path::new("/etc/crust/config.toml")));
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], format!("crustd {}", crate::RUNTIME_VERSION));
        assert_eq!(lines[1], format!("commit: {GIT_COMMIT}"));
        assert_eq!(lines[2], format!("profile: {BUILD_PROFILE}"));
        assert_eq!(lines[3], "config: /etc/crust/config.toml");
        assert!(
            text.contains(&format!(
                "runtime runc (oci, default): {} (fake-runc version 9.9)\n",
                fake.display()
            )),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "runtime broken (oci): {} (--version failed: exit status: 3)\n",
                failing.display()
            )),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "runtime gone (oci): {} not found\n",
                d.path().join("nothing-here").display()
            )),
            "{text}"
        );
        assert!(
            text.ends_with(&format!(
                "shim: {} not found\n",
                d.path().join("no-shim").display()
            )),
            "{text}"
        );
    }

    #[test]
    fn built_from_a_known_profile() {
        // Tests build with the dev profile, whose directory is `debug`.
        assert_eq!(BUILD_PROFILE, "debug");
        assert!(!GIT_COMMIT.is_empty());
    }

    #[test]
    fn defaults_are_named_as_such() {
        let text = report(&Config::default(), None);
        assert!(text.contains("\nconfig: built-in defaults\n"), "{text}");
    }
}

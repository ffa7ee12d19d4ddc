//! The physical floor: what the kernel and runc alone cost for what a pod and
//! a container need, so a reader sees how close each runtime gets to it.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::cri::BenchError;
use crate::scenario::Recorder;

fn run_timed(cmd: &mut Command, what: &str) -> Result<Duration, BenchError> {
    let begin = Instant::now();
    let out = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|source| BenchError::Io {
            what: format!("running {what}"),
            source,
        })?;
    let took = begin.elapsed();
    if !out.status.success() {
        return Err(BenchError::Invalid(format!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(took)
}

/// `unshare` of a pod's namespaces plus a PID namespace and a mount
/// namespace, running `true`: `count` times after one untimed run.
pub fn unshare(count: usize, rec: &Recorder) -> Result<(), BenchError> {
    for i in 0..=count {
        let d = run_timed(
            Command::new("unshare").args([
                "--net", "--ipc", "--uts", "--pid", "--fork", "--mount", "true",
            ]),
            "unshare",
        )?;
        if i > 0 {
            rec.record("unshare", d);
        }
    }
    Ok(())
}

/// `runc run` of `bundle` (whose process exits at once), `count` times after
/// one untimed run, with runc's state under `work_dir`. `runc run` creates,
/// starts, waits for and deletes the container.
pub fn runc(
    count: usize,
    bundle: &Path,
    work_dir: &Path,
    rec: &Recorder,
) -> Result<(), BenchError> {
    let root = work_dir.join("runc");
    std::fs::create_dir_all(&root).map_err(|source| BenchError::Io {
        what: format!("creating {}", root.display()),
        source,
    })?;
    let res = (|| {
        for i in 0..=count {
            let id = format!("crust-bench-floor-{}-{i}", std::process::id());
            let d = run_timed(
                Command::new("runc")
                    .arg("--root")
                    .arg(&root)
                    .args(["run", "--bundle"])
                    .arg(bundle)
                    .arg(&id),
                "runc run",
            )?;
            if i > 0 {
                rec.record("runc run", d);
            }
        }
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&root);
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failing_command_is_an_error_with_its_stderr() {
        let err = run_timed(
            Command::new("sh").args(["-c", "echo nope >&2; exit 3"]),
            "sh",
        )
        .expect_err("fails");
        assert!(err.to_string().contains("nope"), "{err}");
        assert!(run_timed(&mut Command::new("true"), "true").is_ok());
        assert!(run_timed(&mut Command::new("/nonexistent/x"), "x").is_err());
    }
}

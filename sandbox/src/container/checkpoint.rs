//! What CheckpointContainer needs from the node: CRIU, which runc drives to
//! dump a running container. Asked each time (checkpoints are rare): whether
//! `criu` is installed and whether `criu check` passes on this kernel.

use std::process::Command;

/// Whether CRIU can checkpoint here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Criu {
    /// No `criu` binary in PATH.
    Missing,
    /// `criu check` failed; its own error lines.
    Unusable(String),
    /// `criu check` passed.
    Usable,
}

/// Runs `criu check`.
pub fn criu() -> Criu {
    let Some(bin) = crate::resolve_binary(std::path::Path::new("criu")) else {
        return Criu::Missing;
    };
    match Command::new(&bin).arg("check").output() {
        Err(e) => Criu::Unusable(format!("running {}: {e}", bin.display())),
        Ok(o) if o.status.success() => Criu::Usable,
        Ok(o) => Criu::Unusable(check_errors(
            &String::from_utf8_lossy(&o.stderr),
            &String::from_utf8_lossy(&o.stdout),
        )),
    }
}

/// CRIU's `Error (...)` lines, else the last lines it printed.
fn check_errors(stderr: &str, stdout: &str) -> String {
    let all: Vec<&str> = stderr
        .lines()
        .chain(stdout.lines())
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let errors: Vec<&str> = all
        .iter()
        .copied()
        .filter(|l| l.starts_with("Error"))
        .collect();
    let chosen = if errors.is_empty() {
        &all[all.len().saturating_sub(3)..]
    } else {
        &errors[..]
    };
    if chosen.is_empty() {
        "criu check failed without a message".into()
    } else {
        chosen.join("; ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn criu_errors_are_its_error_lines() {
        let stderr = "Warn (x): something\nError (criu/vdso.c:613): vdso: Failed to fill self vdso symtable\nError (criu/crtools.c:260): Could not initialize kernel features detection.\n";
        assert_eq!(
            check_errors(stderr, ""),
            "Error (criu/vdso.c:613): vdso: Failed to fill self vdso symtable; Error (criu/crtools.c:260): Could not initialize kernel features detection."
        );
        assert_eq!(check_errors("a\nb\nc\nd\n", ""), "b; c; d");
        assert_eq!(check_errors("", ""), "criu check failed without a message");
    }
}

//! Records what `crustd --version` reports about the build: the git commit the
//! source was at and the cargo profile it was built with.
//!
//! `CRUST_GIT_COMMIT` overrides the commit (a build from a source tarball has no
//! `.git`); without either the commit is "unknown". The profile is the name of
//! the directory cargo builds into (`debug`, `release`, `daemon`), which is the
//! profile's name; cargo's own `PROFILE` only says debug or release.

use std::path::Path;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=CRUST_GIT_COMMIT");
    let commit = match std::env::var("CRUST_GIT_COMMIT") {
        Ok(c) if !c.trim().is_empty() => c.trim().to_string(),
        _ => git_commit().unwrap_or_else(|| "unknown".to_string()),
    };
    println!("cargo:rustc-env=CRUST_GIT_COMMIT={commit}");
    println!("cargo:rustc-env=CRUST_BUILD_PROFILE={}", profile());
}

/// `git rev-parse HEAD`, and rerun-if-changed on the files that move with it.
fn git_commit() -> Option<String> {
    let git = |args: &[&str]| -> Option<String> {
        let out = Command::new("git")
            .args(args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
            .filter(|s| !s.is_empty())
    };
    let commit = git(&["rev-parse", "--short=12", "HEAD"])?;
    // HEAD names a branch whose ref file (or packed-refs) moves on each commit.
    let mut watched = vec![git(&["rev-parse", "--git-path", "HEAD"])?];
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
        watched.extend(git(&["rev-parse", "--git-path", &branch]));
    }
    watched.extend(git(&["rev-parse", "--git-path", "packed-refs"]));
    for p in watched {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join(p);
        if p.exists() {
            println!("cargo:rerun-if-changed={}", p.display());
        }
    }
    Some(commit)
}

/// OUT_DIR is `<target>[/<triple>]/<profile>/build/<crate>-<hash>/out`.
fn profile() -> String {
    std::env::var("OUT_DIR")
        .ok()
        .and_then(|d| {
            Path::new(&d)
                .ancestors()
                .nth(3)
                .and_then(|p| p.file_name())
                .map(|n| n.to_string_lossy().into_owned())
        })
        .unwrap_or_else(|| "unknown".to_string())
}

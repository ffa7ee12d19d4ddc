//! crust's default AppArmor profile: what RuntimeDefault (and no choice at all) means
//! for an unprivileged container on a host that runs AppArmor, as containerd's
//! `cri-containerd.apparmor.d` and CRI-O's `crio-default` do.
//!
//! The profile allows what a container normally does (files, network, capabilities
//! its spec grants) and denies what would reach past it: mounting, writes to most of
//! /proc and /sys, the kernel's memory and sysrq, security and firmware files, and
//! signals or ptrace from outside confined containers. It is loaded (replaced) with
//! `apparmor_parser` once per crustd start.

use std::io::Write;
use std::process::{Command, Stdio};

/// The name crust loads its default profile under.
pub const DEFAULT_PROFILE: &str = "crust-default";

/// The text of the default profile named `name`.
pub fn default_profile(name: &str) -> String {
    format!(
        r#"#include <tunables/global>

profile {name} flags=(attach_disconnected,mediate_deleted) {{
  #include <abstractions/base>

  network,
  capability,
  file,
  umount,

  # Signals: from unconfined host processes (the runtime's kill), and among
  # the processes of containers under this profile.
  signal (receive) peer=unconfined,
  signal (send,receive) peer={name},
  ptrace (trace,read,tracedby,readby) peer={name},

  deny mount,

  # /proc: no writes to its top-level files, to anything but a process's own
  # entries and /proc/sys/kernel/shm*; nothing at all to kcore and sysrq-trigger.
  deny @{{PROC}}/* w,
  deny @{{PROC}}/{{[^1-9],[^1-9][^0-9],[^1-9s][^0-9y][^0-9s],[^1-9][^0-9][^0-9][^0-9/]*}}/** w,
  deny @{{PROC}}/sys/[^k]** w,
  deny @{{PROC}}/sys/kernel/{{?,??,[^s][^h][^m]**}} w,
  deny @{{PROC}}/sysrq-trigger rwklx,
  deny @{{PROC}}/kcore rwklx,

  # /sys: read-only but for cgroupfs; firmware and security not even readable.
  deny /sys/[^f]*/** wklx,
  deny /sys/f[^s]*/** wklx,
  deny /sys/fs/[^c]*/** wklx,
  deny /sys/fs/c[^g]*/** wklx,
  deny /sys/fs/cg[^r]*/** wklx,
  deny /sys/firmware/** rwklx,
  deny /sys/kernel/security/** rwklx,
}}
"#
    )
}

/// Loads (or replaces) the default profile: `apparmor_parser -Kr` (replace, no cache)
/// reads it from its stdin.
pub fn load_default() -> Result<(), String> {
    let mut parser = Command::new("apparmor_parser");
    parser.arg("-Kr");
    feed(&mut parser, &default_profile(DEFAULT_PROFILE))
}

/// Runs `cmd` with `profile` on its stdin; its stderr is the error when it fails.
fn feed(cmd: &mut Command, profile: &str) -> Result<(), String> {
    let name = cmd.get_program().to_string_lossy().into_owned();
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("running {name}: {e}"))?;
    let written = child
        .stdin
        .take()
        .map(|mut s| s.write_all(profile.as_bytes()))
        .unwrap_or(Ok(()));
    let out = child
        .wait_with_output()
        .map_err(|e| format!("waiting for {name}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{name} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    written.map_err(|e| format!("writing the profile to {name}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_profile_names_itself_and_denies_what_reaches_past_the_container() {
        let p = default_profile("crust-test");
        assert!(p.contains("profile crust-test flags=(attach_disconnected,mediate_deleted) {"));
        assert!(p.contains("signal (send,receive) peer=crust-test,"));
        assert!(p.contains("ptrace (trace,read,tracedby,readby) peer=crust-test,"));
        for rule in [
            "deny mount,",
            "deny @{PROC}/kcore rwklx,",
            "deny @{PROC}/sysrq-trigger rwklx,",
            "deny /sys/kernel/security/** rwklx,",
        ] {
            assert!(p.contains(rule), "{rule} missing");
        }
        // Balanced braces: the format escapes produced a parseable block.
        assert_eq!(p.matches('{').count(), p.matches('}').count());
        assert!(p.trim_end().ends_with('}'));
    }

    #[test]
    fn the_parser_gets_the_profile_on_stdin_and_its_failure_is_reported() {
        let dir = tempfile::tempdir().expect("tempdir");
        let got = dir.path().join("got");
        let mut keep = Command::new("sh");
        keep.args(["-c", "cat > \"$1\"", "sh"]).arg(&got);
        feed(&mut keep, "profile x {}\n").expect("fed");
        assert_eq!(
            std::fs::read_to_string(&got).expect("got"),
            "profile x {}\n"
        );

        let mut failing = Command::new("sh");
        failing.args(["-c", "cat >/dev/null; echo 'bad profile' >&2; exit 1"]);
        let e = feed(&mut failing, "x").expect_err("fails");
        assert!(e.contains("bad profile") && e.contains("sh failed"), "{e}");

        let e = feed(&mut Command::new("/nonexistent/apparmor_parser"), "x").expect_err("missing");
        assert!(e.contains("running /nonexistent/apparmor_parser"), "{e}");
    }
}

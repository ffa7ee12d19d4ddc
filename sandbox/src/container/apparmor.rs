//! crust's default AppArmor profile: what RuntimeDefault (and no choice at all) means
//! for an unprivileged container on a host that runs AppArmor, as containerd's
//! `cri-containerd.apparmor.d` and CRI-O's `crio-default` do.
//!
//! The profile allows what a container normally does (files, network, capabilities
//! its spec grants) and denies what would reach past it: mounting, writes to most of
//! /proc and /sys, the kernel's memory and sysrq, security and firmware files, and
//! signals or ptrace from outside confined containers. It is loaded (replaced) with
//! `apparmor_parser` when crustd starts, and again by a create that finds it gone.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Mutex;

/// The name crust loads its default profile under.
pub const DEFAULT_PROFILE: &str = "crust-default";

/// Where the kernel lists the loaded profiles, one `name (mode)` a line.
const LOADED_PROFILES: &str = "/sys/kernel/security/apparmor/profiles";
/// The policy ABI the profile is written for; pinned when the host's parser knows it,
/// so that a newer parser does not read `network,` by a newer ABI's meaning (which
/// leaves out unix sockets).
const ABI_3: &str = "/etc/apparmor.d/abi/3.0";

/// The text of the default profile named `name`.
pub fn default_profile(name: &str, abi_3: bool) -> String {
    let abi = if abi_3 { "abi <abi/3.0>,\n\n" } else { "" };
    format!(
        r#"{abi}#include <tunables/global>

profile {name} flags=(attach_disconnected,mediate_deleted) {{
  #include <abstractions/base>

  network,
  capability,
  file,
  umount,

  # Signals: from the runtime (unconfined, or under AppArmor 4's own runc and
  # crun profiles: StopContainer's signals come through runc kill), and among
  # the processes of containers under this profile.
  signal (receive) peer=unconfined,
  signal (receive) peer=runc,
  signal (receive) peer=crun,
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

  # /sys: read-only but for cgroupfs; firmware and security not even readable,
  # nor the power meters (a side channel on what other tenants compute).
  deny /sys/[^f]*/** wklx,
  deny /sys/f[^s]*/** wklx,
  deny /sys/fs/[^c]*/** wklx,
  deny /sys/fs/c[^g]*/** wklx,
  deny /sys/fs/cg[^r]*/** wklx,
  deny /sys/firmware/** rwklx,
  deny /sys/devices/virtual/powercap/** rwklx,
  deny /sys/kernel/security/** rwklx,
}}
"#
    )
}

/// Makes sure the default profile is loaded: a no-op when the kernel lists it, else
/// `apparmor_parser -Kr` (replace, no cache) reads it from its stdin. Serialized, so
/// that concurrent creates load it once.
pub fn ensure_default() -> Result<(), String> {
    static LOADING: Mutex<()> = Mutex::new(());
    let _one = LOADING.lock().unwrap_or_else(|p| p.into_inner());
    let listed = std::fs::read_to_string(LOADED_PROFILES)
        .map(|t| is_listed(&t, DEFAULT_PROFILE))
        .unwrap_or(false);
    if listed {
        return Ok(());
    }
    let mut parser = Command::new("apparmor_parser");
    parser.arg("-Kr");
    feed(
        &mut parser,
        &default_profile(DEFAULT_PROFILE, Path::new(ABI_3).exists()),
    )
}

/// Whether the kernel's profile list names `name`.
fn is_listed(profiles: &str, name: &str) -> bool {
    profiles
        .lines()
        .any(|l| l.strip_prefix(name).is_some_and(|r| r.starts_with(" (")))
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
        let p = default_profile("crust-test", false);
        assert!(p.starts_with("#include <tunables/global>"));
        assert!(default_profile("crust-test", true).starts_with("abi <abi/3.0>,\n\n#include"));
        assert!(p.contains("profile crust-test flags=(attach_disconnected,mediate_deleted) {"));
        for runtime in ["unconfined", "runc", "crun"] {
            assert!(
                p.contains(&format!("signal (receive) peer={runtime},")),
                "{runtime}"
            );
        }
        assert!(p.contains("signal (send,receive) peer=crust-test,"));
        assert!(p.contains("ptrace (trace,read,tracedby,readby) peer=crust-test,"));
        for rule in [
            "deny mount,",
            "deny @{PROC}/kcore rwklx,",
            "deny @{PROC}/sysrq-trigger rwklx,",
            "deny /sys/kernel/security/** rwklx,",
            "deny /sys/devices/virtual/powercap/** rwklx,",
        ] {
            assert!(p.contains(rule), "{rule} missing");
        }
        // Balanced braces: the format escapes produced a parseable block.
        assert_eq!(p.matches('{').count(), p.matches('}').count());
        assert!(p.trim_end().ends_with('}'));
    }

    #[test]
    fn a_loaded_profile_is_found_by_its_exact_name() {
        let list = "docker-default (enforce)\ncrust-default (enforce)\n/usr/sbin/runc (enforce)\n";
        assert!(is_listed(list, "crust-default"));
        assert!(!is_listed("crust-default-old (enforce)\n", "crust-default"));
        assert!(!is_listed("", "crust-default"));
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

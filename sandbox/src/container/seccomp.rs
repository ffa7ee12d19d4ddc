//! Seccomp profiles for containers: RuntimeDefault (built in), Unconfined, and
//! Localhost (a profile file on the node).
//!
//! The built-in default follows what containerd's and Docker's default profiles
//! achieve: every syscall is allowed except those that reach past the
//! container's namespaces (kernel modules, clocks, keyrings, reboot, mounts,
//! new namespaces, ptrace of others, BPF, perf ...), which fail with EPERM.
//! As in those profiles, a syscall that only a capability makes safe is allowed
//! again when the container has that capability (mount with CAP_SYS_ADMIN, ...).
//! Written as a deny list, it also keeps working for syscalls newer than the
//! profile, which an allow list would break.

use std::collections::HashSet;

use oci_spec::runtime::{
    Arch, Capability, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArgBuilder,
    LinuxSeccompBuilder, LinuxSeccompOperator, LinuxSyscallBuilder,
};

/// Syscalls refused unless the container holds the capability next to them
/// (`None`: refused always).
const DENIED: &[(&str, Option<Capability>)] = &[
    ("acct", Some(Capability::SysPacct)),
    ("add_key", None),
    ("bpf", Some(Capability::SysAdmin)),
    ("clock_adjtime", Some(Capability::SysTime)),
    ("clock_settime", Some(Capability::SysTime)),
    ("settimeofday", Some(Capability::SysTime)),
    ("stime", Some(Capability::SysTime)),
    ("adjtimex", Some(Capability::SysTime)),
    ("create_module", Some(Capability::SysModule)),
    ("delete_module", Some(Capability::SysModule)),
    ("finit_module", Some(Capability::SysModule)),
    ("init_module", Some(Capability::SysModule)),
    ("get_kernel_syms", None),
    ("query_module", None),
    ("get_mempolicy", Some(Capability::SysNice)),
    ("set_mempolicy", Some(Capability::SysNice)),
    ("mbind", Some(Capability::SysNice)),
    ("move_pages", Some(Capability::SysNice)),
    ("ioperm", Some(Capability::SysRawio)),
    ("iopl", Some(Capability::SysRawio)),
    ("kcmp", Some(Capability::SysPtrace)),
    ("process_vm_readv", Some(Capability::SysPtrace)),
    ("process_vm_writev", Some(Capability::SysPtrace)),
    ("ptrace", Some(Capability::SysPtrace)),
    ("kexec_file_load", Some(Capability::SysBoot)),
    ("kexec_load", Some(Capability::SysBoot)),
    ("reboot", Some(Capability::SysBoot)),
    ("keyctl", None),
    ("request_key", None),
    ("lookup_dcookie", Some(Capability::SysAdmin)),
    ("mount", Some(Capability::SysAdmin)),
    ("mount_setattr", Some(Capability::SysAdmin)),
    ("umount", Some(Capability::SysAdmin)),
    ("umount2", Some(Capability::SysAdmin)),
    ("move_mount", Some(Capability::SysAdmin)),
    ("open_tree", Some(Capability::SysAdmin)),
    ("fsopen", Some(Capability::SysAdmin)),
    ("fsconfig", Some(Capability::SysAdmin)),
    ("fsmount", Some(Capability::SysAdmin)),
    ("fspick", Some(Capability::SysAdmin)),
    ("pivot_root", Some(Capability::SysAdmin)),
    ("name_to_handle_at", Some(Capability::SysAdmin)),
    ("open_by_handle_at", Some(Capability::DacReadSearch)),
    ("nfsservctl", None),
    ("perf_event_open", Some(Capability::SysAdmin)),
    ("quotactl", Some(Capability::SysAdmin)),
    ("quotactl_fd", Some(Capability::SysAdmin)),
    ("setns", Some(Capability::SysAdmin)),
    ("unshare", Some(Capability::SysAdmin)),
    ("swapon", Some(Capability::SysAdmin)),
    ("swapoff", Some(Capability::SysAdmin)),
    ("sethostname", Some(Capability::SysAdmin)),
    ("setdomainname", Some(Capability::SysAdmin)),
    ("syslog", Some(Capability::SysAdmin)),
    ("sysfs", None),
    ("_sysctl", None),
    ("uselib", None),
    ("userfaultfd", None),
    ("ustat", None),
    ("vm86", None),
    ("vm86old", None),
    ("fanotify_init", Some(Capability::SysAdmin)),
    ("vhangup", Some(Capability::SysTtyConfig)),
];

/// clone(2) flags that create namespaces; refused without CAP_SYS_ADMIN.
const CLONE_NEW_FLAGS: [u64; 7] = [
    libc::CLONE_NEWNS as u64,
    libc::CLONE_NEWUTS as u64,
    libc::CLONE_NEWIPC as u64,
    libc::CLONE_NEWUSER as u64,
    libc::CLONE_NEWPID as u64,
    libc::CLONE_NEWNET as u64,
    libc::CLONE_NEWCGROUP as u64,
];

/// The built-in RuntimeDefault profile for a container with `caps` (bounding set).
pub fn runtime_default(caps: &HashSet<Capability>) -> LinuxSeccomp {
    let denied: Vec<String> = DENIED
        .iter()
        .filter(|(_, cap)| cap.is_none_or(|c| !caps.contains(&c)))
        .map(|(name, _)| name.to_string())
        .collect();
    let mut syscalls = vec![
        LinuxSyscallBuilder::default()
            .names(denied)
            .action(LinuxSeccompAction::ScmpActErrno)
            .errno_ret(libc::EPERM as u32)
            .build()
            .expect("static syscall rule"),
    ];
    if !caps.contains(&Capability::SysAdmin) {
        // clone(2) with any CLONE_NEW* flag fails with EPERM: one rule per flag,
        // each "flags & FLAG == FLAG". clone3 passes its flags in a struct that
        // seccomp cannot read, so it answers ENOSYS and libc falls back to clone.
        for flag in CLONE_NEW_FLAGS {
            syscalls.push(
                LinuxSyscallBuilder::default()
                    .names(vec!["clone".to_string()])
                    .action(LinuxSeccompAction::ScmpActErrno)
                    .errno_ret(libc::EPERM as u32)
                    .args(vec![
                        LinuxSeccompArgBuilder::default()
                            .index(0usize)
                            .value(flag)
                            .value_two(flag)
                            .op(LinuxSeccompOperator::ScmpCmpMaskedEq)
                            .build()
                            .expect("static arg rule"),
                    ])
                    .build()
                    .expect("static syscall rule"),
            );
        }
        syscalls.push(
            LinuxSyscallBuilder::default()
                .names(vec!["clone3".to_string()])
                .action(LinuxSeccompAction::ScmpActErrno)
                .errno_ret(libc::ENOSYS as u32)
                .build()
                .expect("static syscall rule"),
        );
    }
    LinuxSeccompBuilder::default()
        .default_action(LinuxSeccompAction::ScmpActAllow)
        .architectures(vec![
            Arch::ScmpArchX86_64,
            Arch::ScmpArchX86,
            Arch::ScmpArchX32,
        ])
        .syscalls(syscalls)
        .build()
        .expect("static seccomp profile")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn denied_names(p: &LinuxSeccomp) -> Vec<String> {
        p.syscalls()
            .as_ref()
            .expect("rules")
            .iter()
            .filter(|r| r.args().is_none() && r.action() == LinuxSeccompAction::ScmpActErrno)
            .flat_map(|r| r.names().clone())
            .collect()
    }

    #[test]
    fn default_caps_refuse_namespace_and_mount_syscalls() {
        let p = runtime_default(&HashSet::new());
        assert_eq!(p.default_action(), LinuxSeccompAction::ScmpActAllow);
        let denied = denied_names(&p);
        for s in [
            "unshare", "mount", "setns", "bpf", "reboot", "keyctl", "clone3",
        ] {
            assert!(denied.iter().any(|d| d == s), "{s} not refused");
        }
        let clone_rules = p
            .syscalls()
            .as_ref()
            .expect("rules")
            .iter()
            .filter(|r| r.names().iter().any(|n| n == "clone"))
            .count();
        assert_eq!(clone_rules, CLONE_NEW_FLAGS.len());
    }

    #[test]
    fn capabilities_unlock_their_syscalls() {
        let caps: HashSet<Capability> = [Capability::SysAdmin, Capability::SysPtrace].into();
        let p = runtime_default(&caps);
        let denied = denied_names(&p);
        for s in ["mount", "unshare", "ptrace", "setns"] {
            assert!(
                !denied.iter().any(|d| d == s),
                "{s} refused despite its capability"
            );
        }
        assert!(denied.iter().any(|d| d == "reboot"));
        assert!(
            denied.iter().any(|d| d == "keyctl"),
            "keyctl is refused always"
        );
    }
}

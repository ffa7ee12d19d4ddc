//! What an exec process gets, decided from the exec's process spec and the container's
//! `config.json` exactly as runc 1.1 `exec` decides it — or why the shim must leave the
//! exec to runc (`Fallback`). Pure: no syscalls, so every rule is unit tested.
//!
//! runc's rules followed here (libcontainer `newInitConfig`, `bootstrapData`,
//! `setns_init_linux.go`): capabilities, rlimits and `noNewPrivileges` come from the exec
//! process (capabilities and rlimits fall back to the container's when the process has
//! none); `umask` and `oomScoreAdj` come from the container's config; the container's
//! seccomp filter, AppArmor profile and SELinux label apply to the exec too.

use std::ffi::CString;

use serde_json::Value;

/// Why an exec goes to runc rather than the native path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fallback(pub String);

impl std::fmt::Display for Fallback {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn fallback<T>(why: impl Into<String>) -> Result<T, Fallback> {
    Err(Fallback(why.into()))
}

/// The five capability sets as bit masks (bit N = capability N).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CapSets {
    pub bounding: u64,
    pub effective: u64,
    pub permitted: u64,
    pub inheritable: u64,
    pub ambient: u64,
}

/// One `setrlimit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rlimit {
    pub resource: u32,
    pub soft: u64,
    pub hard: u64,
}

/// Everything the child applies, prepared before fork (no allocation after it).
#[derive(Debug)]
pub struct Plan {
    pub argv: Vec<CString>,
    /// Paths to try `execve` with, in order (the `$PATH` search runc's `LookPath` does).
    pub candidates: Vec<CString>,
    /// `args[0]` as given, for the error message.
    pub program: String,
    pub env: Vec<CString>,
    pub cwd: CString,
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    pub caps: CapSets,
    pub rlimits: Vec<Rlimit>,
    pub oom_score_adj: Option<i32>,
    pub no_new_privs: bool,
    pub umask: Option<u32>,
    pub terminal: bool,
    /// (rows, columns) of the pty.
    pub console_size: Option<(u16, u16)>,
    /// The session keyring runc joins (`_ses.<container id>`), unless `no_new_keyring`.
    pub keyring: Option<CString>,
}

/// Process keys the native path applies; any other key present means runc.
const PROCESS_KEYS: &[&str] = &[
    "terminal",
    "consoleSize",
    "user",
    "args",
    "env",
    "cwd",
    "capabilities",
    "rlimits",
    "noNewPrivileges",
    "oomScoreAdj",
    "apparmorProfile",
    "selinuxLabel",
];

/// Container (`linux.*`) keys under which runc exec would do something the native path
/// does not; `Some(_)` of any of them means runc.
const LINUX_UNSUPPORTED: &[&str] = &[
    "seccomp",
    "personality",
    "intelRdt",
    "memoryPolicy",
    "uidMappings",
    "gidMappings",
];

fn cstring(what: &str, s: &str) -> Result<CString, Fallback> {
    CString::new(s).or_else(|_| fallback(format!("{what} contains a NUL byte")))
}

fn nonempty_str(v: Option<&Value>) -> bool {
    v.and_then(Value::as_str).is_some_and(|s| !s.is_empty())
}

/// Checks that nothing in the container or process asks for what only runc applies.
pub fn check_supported(process: &Value, container: &Value) -> Result<(), Fallback> {
    let Some(p) = process.as_object() else {
        return fallback("process spec is not an object");
    };
    for (k, v) in p {
        if !v.is_null() && !PROCESS_KEYS.contains(&k.as_str()) {
            return fallback(format!("process.{k} is set"));
        }
    }
    if let Some(user) = p.get("user").and_then(Value::as_object) {
        for (k, v) in user {
            if !v.is_null() && !["uid", "gid", "umask", "additionalGids"].contains(&k.as_str()) {
                return fallback(format!("process.user.{k} is set"));
            }
        }
    }
    for (key, what) in [
        ("apparmorProfile", "an AppArmor profile"),
        ("selinuxLabel", "an SELinux label"),
    ] {
        if nonempty_str(p.get(key)) || nonempty_str(container.pointer(&format!("/process/{key}"))) {
            return fallback(format!("{what} is set"));
        }
    }
    let linux = container.get("linux");
    for key in LINUX_UNSUPPORTED {
        if linux
            .and_then(|l| l.get(*key))
            .is_some_and(|v| !v.is_null())
        {
            return fallback(format!("linux.{key} is set"));
        }
    }
    let namespaces = linux
        .and_then(|l| l.get("namespaces"))
        .and_then(Value::as_array);
    if namespaces
        .into_iter()
        .flatten()
        .any(|ns| ns.get("type").and_then(Value::as_str) == Some("user"))
    {
        return fallback("the container has a user namespace");
    }
    Ok(())
}

/// Capability names as the OCI spec writes them, by number (linux/capability.h).
const CAP_NAMES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// One capability set. A name runc 1.1 would skip with a warning (unknown, or beyond
/// the kernel's `cap_last_cap`) sends the exec to runc rather than be guessed at.
fn cap_mask(set: Option<&Value>, last_cap: u32) -> Result<u64, Fallback> {
    let mut mask = 0u64;
    for name in set.and_then(Value::as_array).into_iter().flatten() {
        let name = name.as_str().unwrap_or_default();
        match CAP_NAMES.iter().position(|n| *n == name) {
            Some(n) if n as u32 <= last_cap => mask |= 1 << n,
            _ => return fallback(format!("capability {name:?} unknown to this kernel")),
        }
    }
    Ok(mask)
}

fn caps(c: Option<&Value>, last_cap: u32) -> Result<CapSets, Fallback> {
    let get = |k: &str| cap_mask(c.and_then(|c| c.get(k)), last_cap);
    Ok(CapSets {
        bounding: get("bounding")?,
        effective: get("effective")?,
        permitted: get("permitted")?,
        inheritable: get("inheritable")?,
        ambient: get("ambient")?,
    })
}

const RLIMITS: &[(&str, u32)] = &[
    ("RLIMIT_CPU", 0),
    ("RLIMIT_FSIZE", 1),
    ("RLIMIT_DATA", 2),
    ("RLIMIT_STACK", 3),
    ("RLIMIT_CORE", 4),
    ("RLIMIT_RSS", 5),
    ("RLIMIT_NPROC", 6),
    ("RLIMIT_NOFILE", 7),
    ("RLIMIT_MEMLOCK", 8),
    ("RLIMIT_AS", 9),
    ("RLIMIT_LOCKS", 10),
    ("RLIMIT_SIGPENDING", 11),
    ("RLIMIT_MSGQUEUE", 12),
    ("RLIMIT_NICE", 13),
    ("RLIMIT_RTPRIO", 14),
    ("RLIMIT_RTTIME", 15),
];

fn rlimits(list: &[Value]) -> Result<Vec<Rlimit>, Fallback> {
    list.iter()
        .map(|r| {
            let ty = r.get("type").and_then(Value::as_str).unwrap_or_default();
            let Some(&(_, resource)) = RLIMITS.iter().find(|(n, _)| *n == ty) else {
                return fallback(format!("rlimit {ty:?} unknown"));
            };
            let num = |k: &str| r.get(k).and_then(Value::as_u64).unwrap_or(0);
            Ok(Rlimit {
                resource,
                soft: num("soft"),
                hard: num("hard"),
            })
        })
        .collect()
}

/// The `execve` paths Go's `exec.LookPath` (runc) would consider for `prog` under `path`:
/// a name with a slash as it is, else each `$PATH` entry (an empty one is `.`).
pub fn candidates(prog: &str, path: Option<&str>) -> Vec<String> {
    if prog.contains('/') {
        return vec![prog.to_string()];
    }
    path.unwrap_or_default()
        .split(':')
        .filter(|_| path.is_some_and(|p| !p.is_empty()))
        .map(|dir| {
            let dir = if dir.is_empty() { "." } else { dir };
            format!("{}/{prog}", dir.trim_end_matches('/'))
        })
        .collect()
}

/// The home directory of `uid` in an `/etc/passwd` text, `/` when it has none (runc's
/// default), for a process environment without `HOME`.
pub fn home_of(passwd: Option<&str>, uid: u32) -> String {
    passwd
        .into_iter()
        .flat_map(str::lines)
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() >= 6 && f[2].parse::<u32>().ok() == Some(uid)).then(|| f[5].to_string())
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "/".to_string())
}

/// Facts from outside the specs the plan needs.
pub struct Context<'a> {
    pub container_id: &'a str,
    pub no_new_keyring: bool,
    /// `/proc/sys/kernel/cap_last_cap`.
    pub last_cap: u32,
    /// The container's `/etc/passwd`, if it has one (read only when `HOME` is unset).
    pub passwd: &'a dyn Fn() -> Option<String>,
}

fn u32_of(v: Option<&Value>) -> u32 {
    v.and_then(Value::as_u64).unwrap_or(0) as u32
}

/// Builds the plan for `process` in the container whose config is `container`.
pub fn build(process: &Value, container: &Value, ctx: &Context) -> Result<Plan, Fallback> {
    check_supported(process, container)?;
    let args: Vec<&str> = process
        .get("args")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let Some(&program) = args.first() else {
        return fallback("process.args is empty");
    };
    let mut env: Vec<String> = process
        .get("env")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|e| e.as_str().map(str::to_string))
        .collect();
    let user = process.get("user");
    let uid = u32_of(user.and_then(|u| u.get("uid")));
    let gid = u32_of(user.and_then(|u| u.get("gid")));
    // runc sets HOME when it is unset or empty; Go's getenv reads a name's first entry.
    if env
        .iter()
        .find_map(|e| e.strip_prefix("HOME="))
        .is_none_or(str::is_empty)
    {
        env.retain(|e| !e.starts_with("HOME="));
        env.push(format!("HOME={}", home_of((ctx.passwd)().as_deref(), uid)));
    }
    let path = env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .map(str::to_string);
    let cwd = process.get("cwd").and_then(Value::as_str).unwrap_or("/");
    if !cwd.starts_with('/') {
        return fallback(format!("cwd {cwd:?} is not absolute"));
    }
    let groups = user
        .and_then(|u| u.get("additionalGids"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|g| u32_of(Some(g)))
        .collect();
    let caps = caps(
        process
            .get("capabilities")
            .filter(|c| !c.is_null())
            .or_else(|| container.pointer("/process/capabilities")),
        ctx.last_cap,
    )?;
    let own = process.get("rlimits").and_then(Value::as_array);
    let rl = match own.filter(|l| !l.is_empty()) {
        Some(l) => rlimits(l)?,
        None => rlimits(
            container
                .pointer("/process/rlimits")
                .and_then(Value::as_array)
                .map(Vec::as_slice)
                .unwrap_or_default(),
        )?,
    };
    let console_size = process.get("consoleSize").and_then(|s| {
        let (h, w) = (u32_of(s.get("height")), u32_of(s.get("width")));
        (h != 0 && w != 0).then_some((h.min(u16::MAX as u32) as u16, w.min(u16::MAX as u32) as u16))
    });
    Ok(Plan {
        argv: args
            .iter()
            .map(|a| cstring("process.args", a))
            .collect::<Result<_, _>>()?,
        candidates: candidates(program, path.as_deref())
            .iter()
            .map(|c| cstring("process.args", c))
            .collect::<Result<_, _>>()?,
        program: program.to_string(),
        env: env
            .iter()
            .map(|e| cstring("process.env", e))
            .collect::<Result<_, _>>()?,
        cwd: cstring("process.cwd", cwd)?,
        uid,
        gid,
        groups,
        caps,
        rlimits: rl,
        oom_score_adj: container
            .pointer("/process/oomScoreAdj")
            .and_then(Value::as_i64)
            .map(|v| v as i32),
        no_new_privs: process
            .get("noNewPrivileges")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        umask: container
            .pointer("/process/user/umask")
            .and_then(Value::as_u64)
            .map(|u| u as u32),
        terminal: process
            .get("terminal")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        console_size,
        keyring: if ctx.no_new_keyring {
            None
        } else {
            Some(cstring(
                "container id",
                &format!("_ses.{}", ctx.container_id),
            )?)
        },
    })
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;

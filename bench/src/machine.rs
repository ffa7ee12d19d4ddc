//! Facts about the machine a run happened on, printed with every result so
//! figures are never read without their context.

use std::ffi::CString;
use std::path::Path;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Machine {
    pub hostname: String,
    pub cores: usize,
    pub cpu_model: String,
    pub memory_mib: u64,
    pub kernel: String,
    /// `v1`, `hybrid` or `v2`.
    pub cgroup_mode: String,
    /// First line of `runc --version`.
    pub runc: String,
    /// 1-minute load average when the run started: other users of the machine
    /// show up here.
    pub load_1m: f64,
}

const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
const TMPFS_MAGIC: i64 = 0x0102_1994;

/// The cgroup mode from the filesystem types of `/sys/fs/cgroup` and
/// `/sys/fs/cgroup/unified`.
pub fn cgroup_mode(root_fs: Option<i64>, unified_fs: Option<i64>) -> &'static str {
    match (root_fs, unified_fs) {
        (Some(CGROUP2_SUPER_MAGIC), _) => "v2",
        (Some(TMPFS_MAGIC), Some(CGROUP2_SUPER_MAGIC)) => "hybrid",
        (Some(TMPFS_MAGIC), _) => "v1",
        _ => "unknown",
    }
}

fn fs_type(path: &Path) -> Option<i64> {
    let c = CString::new(path.as_os_str().as_encoded_bytes()).ok()?;
    let mut buf = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: `c` is a valid NUL-terminated path and `buf` is large enough for
    // a statfs; it is only read after the call reports success.
    let rc = unsafe { libc::statfs(c.as_ptr(), buf.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: statfs returned 0, so it filled `buf`.
    let st = unsafe { buf.assume_init() };
    #[allow(clippy::unnecessary_cast)] // f_type's integer type differs per libc target
    Some(st.f_type as i64)
}

fn first_line(text: &str) -> String {
    text.lines().next().unwrap_or("").trim().to_string()
}

fn field(text: &str, key: &str) -> Option<String> {
    text.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
}

impl Machine {
    pub fn detect() -> Machine {
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        let cpuinfo = read("/proc/cpuinfo");
        let meminfo = read("/proc/meminfo");
        let memory_mib = field(&meminfo, "MemTotal")
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .map(|kib| kib / 1024)
            .unwrap_or(0);
        let runc = std::process::Command::new("runc")
            .arg("--version")
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| first_line(&String::from_utf8_lossy(&o.stdout)))
            .unwrap_or_else(|| "not found".to_string());
        Machine {
            hostname: first_line(&read("/proc/sys/kernel/hostname")),
            cores: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(0),
            cpu_model: field(&cpuinfo, "model name").unwrap_or_default(),
            memory_mib,
            kernel: first_line(&read("/proc/sys/kernel/osrelease")),
            cgroup_mode: cgroup_mode(
                fs_type(Path::new("/sys/fs/cgroup")),
                fs_type(Path::new("/sys/fs/cgroup/unified")),
            )
            .to_string(),
            runc,
            load_1m: read("/proc/loadavg")
                .split_whitespace()
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_modes() {
        assert_eq!(cgroup_mode(Some(CGROUP2_SUPER_MAGIC), None), "v2");
        assert_eq!(
            cgroup_mode(Some(TMPFS_MAGIC), Some(CGROUP2_SUPER_MAGIC)),
            "hybrid"
        );
        assert_eq!(cgroup_mode(Some(TMPFS_MAGIC), None), "v1");
        assert_eq!(cgroup_mode(None, None), "unknown");
    }

    #[test]
    fn detect_reads_this_machine() {
        let m = Machine::detect();
        assert!(m.cores >= 1);
        assert!(!m.kernel.is_empty());
    }

    #[test]
    fn cpuinfo_fields() {
        let text = "processor\t: 0\nmodel name\t: Some CPU @ 2.0GHz\n";
        assert_eq!(
            field(text, "model name").as_deref(),
            Some("Some CPU @ 2.0GHz")
        );
        assert_eq!(field(text, "nope"), None);
    }
}

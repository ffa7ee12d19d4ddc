//! Resource usage read straight from the cgroup files: what ContainerStats,
//! ListContainerStats and the pod stats answer (crustd). No shim round trip, so listing
//! the stats of every container of a node costs a few file reads each.

use std::path::{Path, PathBuf};

/// Usage of one cgroup at one moment; a field is None when its file is absent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CgroupUsage {
    pub timestamp_ns: i64,
    /// CPU time used since the cgroup was made.
    pub cpu_usage_ns: Option<u64>,
    /// Average CPU use since the previous sample, in billionths of a core.
    pub cpu_nano_cores: Option<u64>,
    pub memory_usage_bytes: Option<u64>,
    /// Usage less inactive file cache: what the kubelet evicts on.
    pub memory_working_set_bytes: Option<u64>,
    /// Limit less working set, when there is a limit.
    pub memory_available_bytes: Option<u64>,
    pub memory_rss_bytes: Option<u64>,
    pub page_faults: Option<u64>,
    pub major_page_faults: Option<u64>,
    pub processes: Option<u64>,
    /// CPU time in user and in kernel mode (v1 counts these in USER_HZ ticks).
    pub cpu_user_ns: Option<u64>,
    pub cpu_system_ns: Option<u64>,
    /// Page cache (v1 `total_cache`, v2 `file`).
    pub memory_cache_bytes: Option<u64>,
    /// Times the usage hit the limit (v1 only).
    pub memory_failcnt: Option<u64>,
    /// Highest usage recorded (v1 `max_usage_in_bytes`, v2 `memory.peak`).
    pub memory_max_usage_bytes: Option<u64>,
    /// Processes the kernel OOM-killed in the cgroup.
    pub oom_kills: Option<u64>,
}

/// The kernel's USER_HZ: v1 `cpuacct.stat` counts in these ticks.
const NS_PER_TICK: u64 = 1_000_000_000 / 100;

fn read_u64(p: PathBuf) -> Option<u64> {
    crate::files::read_u64(&p)
}

use crate::files::field as stat_field;

/// Reads a cgroup's usage under `root` (`/sys/fs/cgroup` on a real node):
/// the v1 controllers when mounted, else the v2 unified files.
pub fn read_cgroup(root: &Path, cgroups_path: &str, now_ns: i64) -> CgroupUsage {
    let rel = cgroups_path.trim_start_matches('/');
    let mut u = CgroupUsage {
        timestamp_ns: now_ns,
        ..Default::default()
    };
    let v1_memory = root.join("memory").join(rel);
    if v1_memory.exists() || root.join("cpuacct").join(rel).exists() {
        u.cpu_usage_ns = read_u64(root.join("cpuacct").join(rel).join("cpuacct.usage"));
        u.memory_usage_bytes = read_u64(v1_memory.join("memory.usage_in_bytes"));
        let stat = std::fs::read_to_string(v1_memory.join("memory.stat")).unwrap_or_default();
        let inactive = stat_field(&stat, "total_inactive_file").unwrap_or(0);
        u.memory_working_set_bytes = u.memory_usage_bytes.map(|m| m.saturating_sub(inactive));
        u.memory_rss_bytes = stat_field(&stat, "total_rss");
        u.page_faults = stat_field(&stat, "total_pgfault");
        u.major_page_faults = stat_field(&stat, "total_pgmajfault");
        // v1 reports "no limit" as a huge number (page-rounded i64::MAX).
        let limit = read_u64(v1_memory.join("memory.limit_in_bytes")).filter(|l| *l < 1 << 62);
        u.memory_available_bytes = limit
            .zip(u.memory_working_set_bytes)
            .map(|(l, w)| l.saturating_sub(w));
        u.processes = read_u64(root.join("pids").join(rel).join("pids.current"));
        let cpu = std::fs::read_to_string(root.join("cpuacct").join(rel).join("cpuacct.stat"))
            .unwrap_or_default();
        u.cpu_user_ns = stat_field(&cpu, "user").map(|t| t * NS_PER_TICK);
        u.cpu_system_ns = stat_field(&cpu, "system").map(|t| t * NS_PER_TICK);
        u.memory_cache_bytes = stat_field(&stat, "total_cache");
        u.memory_failcnt = read_u64(v1_memory.join("memory.failcnt"));
        u.memory_max_usage_bytes = read_u64(v1_memory.join("memory.max_usage_in_bytes"));
        u.oom_kills = crate::oom::kills_v1(&v1_memory);
    } else {
        let dir = root.join(rel);
        let cpu = std::fs::read_to_string(dir.join("cpu.stat")).unwrap_or_default();
        u.cpu_usage_ns = stat_field(&cpu, "usage_usec").map(|us| us * 1000);
        u.memory_usage_bytes = read_u64(dir.join("memory.current"));
        let stat = std::fs::read_to_string(dir.join("memory.stat")).unwrap_or_default();
        let inactive = stat_field(&stat, "inactive_file").unwrap_or(0);
        u.memory_working_set_bytes = u.memory_usage_bytes.map(|m| m.saturating_sub(inactive));
        u.memory_rss_bytes = stat_field(&stat, "anon");
        u.page_faults = stat_field(&stat, "pgfault");
        u.major_page_faults = stat_field(&stat, "pgmajfault");
        let limit = std::fs::read_to_string(dir.join("memory.max"))
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok());
        u.memory_available_bytes = limit
            .zip(u.memory_working_set_bytes)
            .map(|(l, w)| l.saturating_sub(w));
        u.processes = read_u64(dir.join("pids.current"));
        u.cpu_user_ns = stat_field(&cpu, "user_usec").map(|us| us * 1000);
        u.cpu_system_ns = stat_field(&cpu, "system_usec").map(|us| us * 1000);
        u.memory_cache_bytes = stat_field(&stat, "file");
        u.memory_max_usage_bytes = read_u64(dir.join("memory.peak"));
        u.oom_kills = crate::oom::kills_v2(&dir);
    }
    u
}

/// CPU use between two samples of the same cgroup, in billionths of a core.
pub fn nano_cores(prev: (i64, u64), now: (i64, u64)) -> Option<u64> {
    let dt = now.0.checked_sub(prev.0).filter(|d| *d > 0)? as u128;
    let du = now.1.checked_sub(prev.1)? as u128;
    Some((du * 1_000_000_000 / dt) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(root: &Path, rel: &str, text: &str) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(p, text).expect("write");
    }

    #[test]
    fn reads_cgroup_v1_files() {
        let d = tempfile::tempdir().expect("tempdir");
        let r = d.path();
        write(r, "cpuacct/pod/c/cpuacct.usage", "5000000\n");
        write(r, "memory/pod/c/memory.usage_in_bytes", "1000000\n");
        write(
            r,
            "memory/pod/c/memory.stat",
            "cache 1\ntotal_cache 1\ntotal_rss 600000\ntotal_inactive_file 200000\ntotal_pgfault 42\ntotal_pgmajfault 3\n",
        );
        write(r, "memory/pod/c/memory.limit_in_bytes", "2000000\n");
        write(r, "pids/pod/c/pids.current", "2\n");
        write(r, "cpuacct/pod/c/cpuacct.stat", "user 3\nsystem 2\n");
        write(r, "memory/pod/c/memory.failcnt", "4\n");
        write(r, "memory/pod/c/memory.max_usage_in_bytes", "1500000\n");
        write(
            r,
            "memory/pod/c/memory.oom_control",
            "oom_kill_disable 0\nunder_oom 0\noom_kill 1\n",
        );
        let u = read_cgroup(r, "/pod/c", 7);
        assert_eq!(u.cpu_user_ns, Some(30_000_000));
        assert_eq!(u.cpu_system_ns, Some(20_000_000));
        assert_eq!(u.memory_cache_bytes, Some(1));
        assert_eq!(u.memory_failcnt, Some(4));
        assert_eq!(u.memory_max_usage_bytes, Some(1_500_000));
        assert_eq!(u.oom_kills, Some(1));
        assert_eq!(u.timestamp_ns, 7);
        assert_eq!(u.cpu_usage_ns, Some(5_000_000));
        assert_eq!(u.memory_working_set_bytes, Some(800_000));
        assert_eq!(u.memory_available_bytes, Some(1_200_000));
        assert_eq!(u.memory_rss_bytes, Some(600_000));
        assert_eq!((u.page_faults, u.major_page_faults), (Some(42), Some(3)));
        assert_eq!(u.processes, Some(2));
    }

    #[test]
    fn reads_cgroup_v2_files() {
        let d = tempfile::tempdir().expect("tempdir");
        let r = d.path();
        write(
            r,
            "pod/c/cpu.stat",
            "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\n",
        );
        write(r, "pod/c/memory.events", "low 0\noom 2\noom_kill 2\n");
        write(r, "pod/c/memory.current", "4096\n");
        write(
            r,
            "pod/c/memory.stat",
            "anon 1024\ninactive_file 1000\npgfault 9\npgmajfault 1\n",
        );
        write(r, "pod/c/memory.max", "max\n");
        let u = read_cgroup(r, "pod/c", 1);
        assert_eq!(u.cpu_usage_ns, Some(1_500_000));
        assert_eq!(u.memory_working_set_bytes, Some(3096));
        assert_eq!(u.memory_available_bytes, None);
        assert_eq!(u.memory_rss_bytes, Some(1024));
        assert_eq!(
            (u.cpu_user_ns, u.cpu_system_ns),
            (Some(1_000_000), Some(500_000))
        );
        assert_eq!(u.oom_kills, Some(2));
        assert_eq!(u.memory_failcnt, None);
    }

    #[test]
    fn nano_cores_is_the_rate_between_samples() {
        assert_eq!(
            nano_cores((0, 0), (1_000_000_000, 500_000_000)),
            Some(500_000_000)
        );
        assert_eq!(nano_cores((5, 10), (5, 20)), None);
        assert_eq!(nano_cores((1, 20), (2, 10)), None);
    }
}

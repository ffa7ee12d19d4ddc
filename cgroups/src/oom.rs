//! The kernel's count of OOM kills in a memory cgroup (kernel ≥ 4.13 on v1).

use std::path::Path;

use crate::files::field;

/// The `oom_kill` count of a v1 memory cgroup directory (`memory.oom_control`).
pub fn kills_v1(memory_dir: &Path) -> Option<u64> {
    field(
        &std::fs::read_to_string(memory_dir.join("memory.oom_control")).ok()?,
        "oom_kill",
    )
}

/// The `oom_kill` count of a v2 cgroup directory (`memory.events`).
pub fn kills_v2(dir: &Path) -> Option<u64> {
    field(
        &std::fs::read_to_string(dir.join("memory.events")).ok()?,
        "oom_kill",
    )
}

/// The OOM kills of the cgroup at `rel` (cgroupfs form) under `root`: the v1 memory
/// hierarchy's count when there is one, else the v2 one's.
pub fn kills(root: &Path, rel: &str) -> Option<u64> {
    let rel = rel.trim_start_matches('/');
    kills_v1(&root.join("memory").join(rel)).or_else(|| kills_v2(&root.join(rel)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_counts_win_over_v2() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        assert_eq!(kills(r, "/pod/c"), None);
        std::fs::create_dir_all(r.join("pod/c")).unwrap();
        std::fs::write(r.join("pod/c/memory.events"), "low 0\noom 1\noom_kill 1\n").unwrap();
        assert_eq!(kills(r, "/pod/c"), Some(1));
        std::fs::create_dir_all(r.join("memory/pod/c")).unwrap();
        std::fs::write(
            r.join("memory/pod/c/memory.oom_control"),
            "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n",
        )
        .unwrap();
        assert_eq!(kills(r, "pod/c"), Some(3));
    }
}

//! cgroup file formats.

use std::collections::HashMap;
use std::path::Path;

/// A file holding one number (`memory.current`, `pids.current`, ...); None when absent or
/// not a number (`max`).
pub fn read_u64(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// The value of `key` in a flat keyed file (`memory.stat`, `cpu.stat`, `memory.events`,
/// `memory.oom_control`: `key value` lines).
pub fn field(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let mut it = l.split_whitespace();
        (it.next()? == key).then(|| it.next()?.parse().ok())?
    })
}

/// Every numeric entry of a flat keyed file.
pub fn flat_keyed(text: &str) -> HashMap<String, u64> {
    text.lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            Some((it.next()?.to_string(), it.next()?.parse().ok()?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_keyed_files_parse() {
        let text = "cache 1\ntotal_rss 600\nunderoom 0\noom_kill 2\nbad x\n";
        assert_eq!(field(text, "oom_kill"), Some(2));
        assert_eq!(field(text, "total_rss"), Some(600));
        assert_eq!(field(text, "rss"), None);
        assert_eq!(field(text, "bad"), None);
        let all = flat_keyed(text);
        assert_eq!(all.len(), 4);
        assert_eq!(all["cache"], 1);
    }

    #[test]
    fn numbers_are_read_and_max_is_none() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("n"), "42\n").unwrap();
        std::fs::write(d.path().join("m"), "max\n").unwrap();
        assert_eq!(read_u64(&d.path().join("n")), Some(42));
        assert_eq!(read_u64(&d.path().join("m")), None);
        assert_eq!(read_u64(&d.path().join("absent")), None);
    }
}

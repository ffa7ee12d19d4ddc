//! Giving the heap crustd no longer uses back to the system.
//!
//! glibc keeps memory freed after a burst (a pull unpacking layers on several
//! threads, a hundred pods started at once) in its arenas, so the resident set
//! of a long-lived daemon would follow its peak, not its load. crustd returns
//! it after every pull and, for everything else, every [`TRIM_EVERY`].

use std::time::Duration;

/// How often the free heap goes back when nothing else returned it.
pub const TRIM_EVERY: Duration = Duration::from_secs(30);

/// Returns free heap pages of every malloc arena to the system.
pub fn release_free_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks and trims malloc's own arenas; it takes
    // their locks like any allocation does.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// [`release_free_heap`] on a blocking thread (it walks every arena), not
/// waited for.
pub fn release_free_heap_soon() {
    tokio::task::spawn_blocking(release_free_heap);
}

/// Releases the free heap every [`TRIM_EVERY`] until `stop` resolves.
pub async fn trim_periodically(stop: impl std::future::Future<Output = ()>) {
    let mut tick = tokio::time::interval(TRIM_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => return,
            _ = tick.tick() => {
                let _ = tokio::task::spawn_blocking(release_free_heap).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn trimming_gives_freed_heap_back() {
        fn rss_kib() -> u64 {
            std::fs::read_to_string("/proc/self/status")
                .unwrap_or_default()
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .unwrap_or(0)
        }
        // Many small blocks (below the mmap threshold), touched, then freed
        // except for the last one, which pins the top of the heap.
        let mut blocks: Vec<Vec<u8>> = (0..4096).map(|_| vec![1u8; 16 * 1024]).collect();
        let pin = vec![1u8; 1024];
        let before = rss_kib();
        blocks.truncate(0);
        blocks.shrink_to_fit();
        release_free_heap();
        let after = rss_kib();
        drop(pin);
        assert!(
            after + 32 * 1024 < before,
            "RSS {before} KiB before the trim, {after} KiB after"
        );
    }
}

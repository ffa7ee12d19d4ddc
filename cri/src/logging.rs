//! Where crustd's log goes. Started by systemd with stderr connected to the
//! journal (`JOURNAL_STREAM` names stderr's device and inode), crustd sends its
//! records to journald natively: the message, a priority from the level, the
//! target and every field (`F_<NAME>`), so `journalctl -u crustd -p warning` or
//! `F_METHOD=RunPodSandbox` select on them. Otherwise it writes to stderr, as
//! text or one JSON object per line (`log_format`).
//!
//! The filter is `RUST_LOG` when set, else `log_level`, for either sink.

use std::os::fd::AsFd;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::LogFormat;

/// Where the log went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sink {
    Journald,
    Stderr(LogFormat),
}

/// Installs the global subscriber for the daemon and returns where it logs.
/// A journal that cannot be reached (journald gone) falls back to stderr,
/// which systemd still collects, and says so in the log.
pub fn init(level: &str, format: LogFormat) -> Sink {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
    let mut journal_error = None;
    if stderr_is_journal() {
        match journald_layer() {
            Ok(layer) => {
                registry.with(layer).init();
                return Sink::Journald;
            }
            Err(e) => journal_error = Some(e),
        }
    }
    let stderr = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    match format {
        LogFormat::Text => registry
            .with(stderr.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())))
            .init(),
        LogFormat::Json => registry
            .with(stderr.json().with_current_span(true).with_span_list(false))
            .init(),
    }
    if let Some(e) = journal_error {
        tracing::warn!(
            "stderr is the journal but journald cannot be reached ({e}); logging to stderr"
        );
    }
    Sink::Stderr(format)
}

fn journald_layer() -> std::io::Result<tracing_journald::Layer> {
    use tracing_journald::{Priority, PriorityMappings};
    Ok(tracing_journald::layer()?
        .with_syslog_identifier("crustd".to_string())
        // journald's own reading of the levels (sd-daemon(3)): info is 6, not notice.
        .with_priority_mappings(PriorityMappings {
            error: Priority::Error,
            warn: Priority::Warning,
            info: Priority::Informational,
            debug: Priority::Debug,
            trace: Priority::Debug,
        }))
}

/// Whether stderr is the stream systemd connected to the journal: `JOURNAL_STREAM`
/// is `<device>:<inode>` of that stream (systemd.exec(5)). A child that inherited
/// the variable but whose stderr was redirected does not match.
pub fn stderr_is_journal() -> bool {
    let Some(value) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Ok(st) = nix::sys::stat::fstat(std::io::stderr().as_fd()) else {
        return false;
    };
    journal_stream_names(&value.to_string_lossy(), st.st_dev, st.st_ino)
}

fn journal_stream_names(value: &str, dev: u64, ino: u64) -> bool {
    value
        .split_once(':')
        .and_then(|(d, i)| Some((d.parse::<u64>().ok()?, i.parse::<u64>().ok()?)))
        .is_some_and(|(d, i)| d == dev && i == ino)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_stream_must_name_this_device_and_inode() {
        assert!(journal_stream_names("2049:123456", 2049, 123456));
        assert!(!journal_stream_names("2049:123457", 2049, 123456));
        assert!(!journal_stream_names("2048:123456", 2049, 123456));
        for bad in ["", ":", "2049", "2049:", ":123456", "a:b", "2049:123456:1"] {
            assert!(!journal_stream_names(bad, 2049, 123456), "{bad:?}");
        }
    }
}

//! crustd's configuration: one TOML file, every key optional.
//!
//! `Config::default()` is what crustd runs with when no file is given, and
//! `commented_default()` prints exactly that as TOML with a comment per key, so
//! `crustd config default > /etc/crust/config.toml` is a complete starting point.
//! Unknown keys, bad values and bad TOML are refused with the file, line and key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The cgroup driver kubelet must be configured with to match crust (one definition, in
/// `crust-cgroups`).
pub use crust_sandbox::CgroupDriver;

/// How crustd writes its log to stderr. Under systemd, when stderr is the journal,
/// crustd sends its records to journald natively instead (see `logging.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One human-readable line per event.
    #[default]
    Text,
    /// One JSON object per line (timestamp, level, target, fields, spans).
    Json,
}

impl LogFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The CRI gRPC socket.
    pub socket: PathBuf,
    /// Persistent data: state store, content store, snapshots.
    pub root_dir: PathBuf,
    /// Runtime state that does not survive a reboot: pod namespaces, shim sockets.
    pub state_dir: PathBuf,
    /// The cgroup driver reported to kubelet and used for pod cgroups.
    pub cgroup_driver: CgroupDriver,
    /// How long a SIGTERM waits for in-flight calls before crustd exits anyway.
    pub shutdown_timeout_secs: u64,
    /// Log filter (tracing EnvFilter syntax); RUST_LOG overrides it.
    pub log_level: String,
    /// "text" or "json" on stderr; ignored when logging to journald.
    pub log_format: LogFormat,
    pub metrics: MetricsConfig,
    pub streaming: StreamingConfig,
    pub sandbox: crust_sandbox::Config,
    pub images: crust_images::Config,
    /// The file this was loaded from (not a key of it): SIGHUP reloads it.
    #[serde(skip)]
    pub source: Option<PathBuf>,
}

/// The streaming server that Exec, Attach and PortForward URLs point at.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StreamingConfig {
    /// Address to listen on; port 0 chooses one at start. Anything but loopback
    /// exposes exec into every container to whoever reaches it with a token.
    pub address: SocketAddr,
    /// Sessions served at once.
    pub max_sessions: usize,
    /// Seconds a returned URL stays usable.
    pub token_ttl_secs: u64,
    /// PEM certificate chain for HTTPS; empty: plain HTTP. Set with `tls_key_file`.
    pub tls_cert_file: PathBuf,
    /// PEM private key of `tls_cert_file`.
    pub tls_key_file: PathBuf,
}

impl StreamingConfig {
    /// The TLS files, when both are set; one without the other is a config error.
    pub fn tls(&self) -> Result<Option<crust_streaming::TlsFiles>, String> {
        let (cert, key) = (&self.tls_cert_file, &self.tls_key_file);
        match (cert.as_os_str().is_empty(), key.as_os_str().is_empty()) {
            (true, true) => Ok(None),
            (false, false) => Ok(Some(crust_streaming::TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
            })),
            (false, true) => Err("tls_cert_file is set but tls_key_file is not".into()),
            (true, false) => Err("tls_key_file is set but tls_cert_file is not".into()),
        }
    }
}

impl Default for StreamingConfig {
    fn default() -> Self {
        StreamingConfig {
            address: SocketAddr::from(([127, 0, 0, 1], 0)),
            max_sessions: 256,
            token_ttl_secs: 60,
            tls_cert_file: PathBuf::new(),
            tls_key_file: PathBuf::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Serve Prometheus metrics at all.
    pub enabled: bool,
    /// Address of the metrics HTTP endpoint (`GET /metrics`).
    pub address: SocketAddr,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            socket: PathBuf::from("/run/crust/crust.sock"),
            root_dir: PathBuf::from("/var/lib/crust"),
            state_dir: PathBuf::from("/run/crust"),
            cgroup_driver: CgroupDriver::Cgroupfs,
            shutdown_timeout_secs: 10,
            log_level: "info".to_string(),
            log_format: LogFormat::Text,
            metrics: MetricsConfig::default(),
            streaming: StreamingConfig::default(),
            sandbox: crust_sandbox::Config::default(),
            images: crust_images::Config::default(),
            source: None,
        }
    }
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            enabled: true,
            address: SocketAddr::from(([127, 0, 0, 1], 9801)),
        }
    }
}

/// A config file that crustd refuses to start with.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config {path}:{line}: {key}{message}")]
    Invalid {
        path: PathBuf,
        line: usize,
        /// "key `x`: " when the error can be pinned to a key, else empty.
        key: String,
        message: String,
    },
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut config = Config::parse(&text, path)?;
        config.source = Some(path.to_owned());
        Ok(config)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let config: Config = Config::parse_toml(text, path)?;
        if let Err(message) = config.streaming.tls() {
            let key = if config.streaming.tls_cert_file.as_os_str().is_empty() {
                "tls_key_file"
            } else {
                "tls_cert_file"
            };
            return Err(ConfigError::Invalid {
                path: path.to_owned(),
                line: line_of_key(text, key),
                key: format!("key `{key}`: "),
                message,
            });
        }
        Ok(config)
    }

    fn parse_toml(text: &str, path: &Path) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|e| {
            let (line, key) = match e.span() {
                Some(span) => locate(text, span.start),
                None => (1, None),
            };
            ConfigError::Invalid {
                path: path.to_owned(),
                line,
                key: key.map(|k| format!("key `{k}`: ")).unwrap_or_default(),
                message: e.message().trim().to_string(),
            }
        })
    }
}

/// The 1-based line where `key` is assigned (1 when it is not found).
fn line_of_key(text: &str, key: &str) -> usize {
    text.lines()
        .position(|l| {
            l.split_once('=')
                .is_some_and(|(k, _)| k.trim().trim_matches('"') == key)
        })
        .map_or(1, |i| i + 1)
}

/// The 1-based line of byte offset `at`, and the key assigned on that line, if any.
fn locate(text: &str, at: usize) -> (usize, Option<String>) {
    let at = at.min(text.len());
    let line = text[..at].matches('\n').count() + 1;
    let source_line = text.lines().nth(line - 1).unwrap_or("");
    let key = source_line
        .split_once('=')
        .map(|(k, _)| k.trim().trim_matches('"').to_string())
        .filter(|k| !k.is_empty() && !k.starts_with('#') && !k.starts_with('['));
    // Inside a table header the "key" is the table itself.
    let key = key.or_else(|| {
        let t = source_line.trim();
        t.strip_prefix('[')
            .and_then(|t| t.strip_suffix(']'))
            .map(|t| t.trim_matches(|c| c == '[' || c == ']').to_string())
    });
    (line, key)
}

/// The full default configuration as TOML, a comment above every key.
pub fn commented_default() -> String {
    let d = Config::default();
    let q = |p: &Path| toml_str(&p.display().to_string());
    format!(
        r#"# crustd configuration. Every key is optional; shown here with its default.

# The CRI gRPC socket kubelet and crictl connect to (mode 0660, owner root).
socket = {socket}
# Persistent data: the state store, content store and snapshots.
root_dir = {root}
# Runtime state that does not survive a reboot: pod namespaces, shim sockets.
state_dir = {state}
# cgroup driver reported to kubelet ("cgroupfs" or "systemd"); kubelet must match it.
cgroup_driver = "{driver}"
# Seconds a SIGTERM waits for in-flight calls before crustd exits anyway.
shutdown_timeout_secs = {shutdown}
# Log filter in tracing EnvFilter syntax ("info", "crust_cri=debug,info"); RUST_LOG overrides it.
log_level = {log}
# Log format on stderr: "text" or "json" (one object per line). Under systemd, when stderr
# is the journal, crustd logs to journald natively (fields and priorities) instead.
log_format = "{logfmt}"

[metrics]
# Serve Prometheus metrics.
enabled = {menabled}
# Address of the metrics endpoint (GET /metrics).
address = "{maddr}"

[streaming]
# Address of the streaming server Exec, Attach and PortForward URLs point at; port 0
# chooses a free one at start. Keep it on loopback unless the kubelet is elsewhere.
address = "{saddr}"
# Streaming sessions served at once.
max_sessions = {smax}
# Seconds a URL returned by Exec, Attach or PortForward stays usable (once).
token_ttl_secs = {sttl}
# Serve HTTPS with this PEM certificate chain and the key below (both or neither);
# empty: plain HTTP. Use it whenever the address is not loopback.
tls_cert_file = {scert}
# The PEM private key of tls_cert_file.
tls_key_file = {skey}

[sandbox]
{sandbox}
[images]
{images}"#,
        socket = q(&d.socket),
        root = q(&d.root_dir),
        state = q(&d.state_dir),
        driver = d.cgroup_driver.as_str(),
        shutdown = d.shutdown_timeout_secs,
        log = toml_str(&d.log_level),
        logfmt = d.log_format.as_str(),
        menabled = d.metrics.enabled,
        maddr = d.metrics.address,
        saddr = d.streaming.address,
        smax = d.streaming.max_sessions,
        sttl = d.streaming.token_ttl_secs,
        scert = q(&d.streaming.tls_cert_file),
        skey = q(&d.streaming.tls_key_file),
        sandbox = crust_sandbox::commented_default(),
        images = crust_images::commented_default(),
    )
}

fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("/etc/crust/crust.toml"))
    }

    #[test]
    fn commented_default_parses_to_default() {
        let text = commented_default();
        let parsed = parse(&text).expect("default config parses");
        assert_eq!(parsed, Config::default());
    }

    #[test]
    fn commented_default_has_a_comment_above_every_key() {
        let text = commented_default();
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let t = line.trim();
            if t.is_empty() || t.starts_with('#') || t.starts_with('[') {
                continue;
            }
            assert!(t.contains('='), "unexpected line {t:?}");
            assert!(
                i > 0 && lines[i - 1].trim().starts_with('#'),
                "key line {t:?} has no comment above it"
            );
        }
    }

    #[test]
    fn commented_default_names_every_key() {
        // Every top-level key and every key of a top-level section appears as
        // a key line in the text (deeper tables are written inline).
        let value = toml::Value::try_from(Config::default()).expect("serializes");
        let mut keys = Vec::new();
        for (k, v) in value.as_table().expect("table") {
            match v {
                toml::Value::Table(t) => keys.extend(t.keys().cloned()),
                _ => keys.push(k.clone()),
            }
        }
        let text = commented_default();
        for k in keys {
            assert!(
                text.lines()
                    .any(|l| l.trim_start().starts_with(&format!("{k} ="))),
                "key {k} missing from the commented default"
            );
        }
    }

    #[test]
    fn streaming_tls_needs_both_files() {
        let c = parse("[streaming]\ntls_cert_file = \"/a.crt\"\ntls_key_file = \"/a.key\"\n")
            .expect("both files parse");
        let tls = c.streaming.tls().unwrap().expect("tls on");
        assert_eq!(tls.cert, Path::new("/a.crt"));
        assert_eq!(tls.key, Path::new("/a.key"));
        assert_eq!(Config::default().streaming.tls().unwrap(), None);

        let err = parse("[streaming]\nmax_sessions = 4\ntls_cert_file = \"/a.crt\"\n").unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains(":3: key `tls_cert_file`") && msg.contains("tls_key_file is not"),
            "{msg}"
        );
        let err = parse("[streaming]\ntls_key_file = \"/a.key\"\n").unwrap_err();
        assert!(err.to_string().contains(":2: key `tls_key_file`"), "{err}");
    }

    #[test]
    fn empty_file_is_the_default() {
        assert_eq!(parse("").expect("empty parses"), Config::default());
    }

    #[test]
    fn partial_file_overrides_only_its_keys() {
        let c = parse("socket = \"/tmp/x.sock\"\n[metrics]\naddress = \"127.0.0.1:9999\"\n")
            .expect("parses");
        assert_eq!(c.socket, PathBuf::from("/tmp/x.sock"));
        assert_eq!(c.metrics.address.port(), 9999);
        assert!(c.metrics.enabled);
        assert_eq!(c.root_dir, Config::default().root_dir);
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let err = parse("socket = \"/tmp/x.sock\"\n\nbogus_key = 1\n").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("/etc/crust/crust.toml:3"), "{msg}");
        assert!(msg.contains("bogus_key"), "{msg}");
    }

    #[test]
    fn bad_value_names_line_and_key() {
        let err = parse("[metrics]\naddress = \"not an address\"\n").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("crust.toml:2"), "{msg}");
        assert!(msg.contains("key `address`"), "{msg}");

        let err = parse("cgroup_driver = \"cgroupv3\"\n").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains(":1: key `cgroup_driver`"), "{msg}");
    }

    #[test]
    fn log_format_is_text_or_json() {
        assert_eq!(parse("").unwrap().log_format, LogFormat::Text);
        assert_eq!(
            parse("log_format = \"json\"\n").unwrap().log_format,
            LogFormat::Json
        );
        let err = parse("log_format = \"xml\"\n").unwrap_err().to_string();
        assert!(err.contains(":1: key `log_format`"), "{err}");
    }

    #[test]
    fn bad_toml_names_line() {
        let err = parse("socket = \"/tmp/x.sock\"\nroot_dir = = 3\n").unwrap_err();
        assert!(err.to_string().contains("crust.toml:2"), "{err}");
    }
}

/// Property-based fuzzing of config parsing (docs/testing.md, "Fuzzing").
/// `PROPTEST_CASES` overrides the bounded CI number of cases, e.g.
/// `PROPTEST_CASES=100000 cargo test -p crust-cri --lib fuzz`. Failures are not
/// persisted: each becomes a plain regression test.
#[cfg(test)]
mod fuzz {
    use super::*;
    use proptest::prelude::*;
    use proptest::test_runner::Config as ProptestConfig;

    fn config(cases: u32) -> ProptestConfig {
        ProptestConfig {
            cases: std::env::var("PROPTEST_CASES")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(cases),
            failure_persistence: None,
            ..ProptestConfig::default()
        }
    }

    /// Parses `text`; an error must name a line of it (1-based; a text ending in a
    /// newline has an empty last line).
    fn check(text: &str) -> Result<Config, (usize, String)> {
        match Config::parse(text, Path::new("/etc/crust/crust.toml")) {
            Ok(c) => Ok(c),
            Err(ConfigError::Invalid {
                line, key, message, ..
            }) => {
                let lines = text.matches('\n').count() + 1;
                assert!(
                    (1..=lines).contains(&line),
                    "line {line} of {lines}: {message}"
                );
                Err((line, key))
            }
            Err(e) => panic!("unexpected error {e}"),
        }
    }

    /// Values complete on their line (no open arrays or multi-line strings).
    fn one_line_value() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("\"str\"".to_string()),
            Just("-1".to_string()),
            Just("true".to_string()),
            Just("[1, 2]".to_string()),
            Just("{ a = 1 }".to_string()),
            Just("1.5".to_string()),
            Just("x".to_string()),
            Just("\"é\u{1F600}\"".to_string()),
            Just("\"".to_string()),
            Just("18446744073709551616".to_string()),
            "[a-z0-9.:/ -]{0,8}",
        ]
    }

    fn value() -> impl Strategy<Value = String> {
        prop_oneof![one_line_value(), ".{0,8}"]
    }

    /// Lines of the default config, some dropped, changed or replaced.
    fn toml_ish() -> impl Strategy<Value = String> {
        let lines: Vec<String> = commented_default().lines().map(String::from).collect();
        let n = lines.len();
        prop::collection::vec((0..n, 0..5u8, value(), ".{0,12}"), 0..5).prop_map(move |edits| {
            let mut l = lines.clone();
            for (at, op, v, junk) in edits {
                let at = at % l.len().max(1);
                if l.is_empty() {
                    break;
                }
                match op {
                    0 => {
                        l.remove(at);
                    }
                    1 => {
                        if let Some((k, _)) = l[at].split_once('=') {
                            l[at] = format!("{k}= {v}");
                        }
                    }
                    2 => l.insert(at, junk),
                    3 => l[at] = format!("{}{junk}", l[at]),
                    _ => l.insert(at, format!("[{junk}]")),
                }
            }
            l.join("\n")
        })
    }

    proptest! {
        #![proptest_config(config(3000))]

        #[test]
        fn arbitrary_text(text in ".{0,200}") {
            let _ = check(&text);
        }

        #[test]
        fn arbitrary_toml_alphabet(text in "[a-z_ =\"'\\[\\]{}.,#0-9\n\\\\é]{0,200}") {
            let _ = check(&text);
        }

        #[test]
        fn edited_defaults(text in toml_ish()) {
            let _ = check(&text);
        }

        /// A wrong value on one line of the default config is reported at that line.
        #[test]
        fn wrong_value_is_reported_at_its_line(at in any::<prop::sample::Index>(), v in one_line_value()) {
            let mut lines: Vec<String> = commented_default().lines().map(String::from).collect();
            let keys: Vec<usize> = (0..lines.len())
                .filter(|&i| !lines[i].starts_with('#') && lines[i].contains('='))
                .collect();
            let i = keys[at.index(keys.len())];
            let (k, _) = lines[i].split_once('=').unwrap();
            lines[i] = format!("{k}= {v}");
            if let Err((line, _)) = check(&lines.join("\n")) {
                prop_assert_eq!(line, i + 1, "{}", lines[i]);
            }
        }
    }
}

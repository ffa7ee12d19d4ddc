//! crustd as an operator runs it: `--version`, systemd's notify protocol
//! (READY=1 once the socket answers, STOPPING=1 at shutdown, nothing of it
//! leaking into shims), native journald logging when stderr is the journal,
//! JSON logs, and the Grafana dashboard's queries against what crustd exports.
//!
//! systemd itself is not PID 1 here: its notify socket and journald's socket are
//! played by datagram sockets of the test, speaking the same protocols.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crust_e2e::workload::{
    create_sleeper, pod_config, remove_pod, run_pod, scene, start, try_pull,
};
use crust_e2e::{Crustd, Options, binary, cri, http_get, metric_value, net::TestNet, require_root};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Datagrams received on `sock` within `within`, until `until` holds for one.
fn receive_until(
    sock: &UnixDatagram,
    within: Duration,
    until: impl Fn(&[u8]) -> bool,
) -> Vec<Vec<u8>> {
    let deadline = Instant::now() + within;
    let mut got = Vec::new();
    let mut buf = vec![0u8; 256 * 1024];
    while Instant::now() < deadline {
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        if let Ok(n) = sock.recv(&mut buf) {
            got.push(buf[..n].to_vec());
            if until(&buf[..n]) {
                break;
            }
        }
    }
    got
}

#[test]
fn version_reports_commit_profile_and_the_runc_it_finds() {
    let out = Command::new(binary("crustd"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let field = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{k}: ")))
            .unwrap_or_else(|| panic!("no {k} in {text}"))
            .to_string()
    };
    assert_eq!(
        text.lines().next(),
        Some(format!("crustd {}", env!("CARGO_PKG_VERSION")).as_str())
    );
    let commit = field("commit");
    assert!(
        commit.len() == 12 && commit.chars().all(|c| c.is_ascii_hexdigit()),
        "{text}"
    );
    let known = Command::new("git")
        .args(["cat-file", "-e", &format!("{commit}^{{commit}}")])
        .current_dir(repo())
        .status()
        .unwrap();
    assert!(known.success(), "commit {commit} is not in this repository");
    assert_eq!(field("profile"), "debug");
    assert_eq!(field("config"), "built-in defaults");
    let which = Command::new("sh")
        .args(["-c", "command -v runc"])
        .output()
        .unwrap();
    let runc = String::from_utf8(which.stdout).unwrap().trim().to_string();
    let runc_version = Command::new(&runc).arg("--version").output().unwrap();
    let first = String::from_utf8(runc_version.stdout)
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .to_string();
    assert_eq!(
        field("runtime runc (oci, default)"),
        format!("{runc} ({first})")
    );
    let shim = binary("crust-shim");
    assert_eq!(field("shim"), shim.display().to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_ready_once_the_socket_answers_stopping_at_shutdown_and_shims_never_see_it() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let notify_path = dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    let (registry, crustd_env) = (
        crust_e2e::registry::Registry::start(None).expect("registry"),
        vec![(
            "NOTIFY_SOCKET".to_string(),
            notify_path.display().to_string(),
        )],
    );
    let mut crustd = Crustd::start_with(Options {
        images_config: format!("insecure_registries = [\"{}\"]", registry.addr),
        env: crustd_env,
        ..Default::default()
    })
    .await
    .expect("crustd starts");
    let ready = receive_until(&notify, Duration::from_secs(20), |m| {
        m.starts_with(b"READY=1")
    });
    let ready = String::from_utf8_lossy(ready.last().expect("a notification"));
    assert!(ready.starts_with("READY=1\n"), "{ready}");
    assert!(
        ready.contains(&format!(
            "STATUS=serving CRI on {}",
            crustd.socket.display()
        )),
        "{ready}"
    );
    // READY came from the probe's Version call: it is in the counts.
    let m = crustd.metrics().await.unwrap();
    assert!(
        m.contains("crust_cri_requests_total{code=\"OK\",method=\"Version\"}"),
        "{m}"
    );

    // A pod's shim and the runc it runs are started without NOTIFY_SOCKET: runc
    // would take it for the container's and wait on it, and the container would
    // never start.
    let net = TestNet::new(&crustd, 170);
    let image = registry.image("crust/busybox:latest");
    crust_e2e::workload::pull(&crustd, &image).await;
    let mut rt = crustd.runtime().await.unwrap();
    let pc = pod_config("notify", &net, &crustd.dir().join("logs"));
    let pod = run_pod(&mut rt, &pc).await;
    let ctr = create_sleeper(&mut rt, &pod, &pc, &image).await;
    start(&mut rt, &ctr).await;
    let shims: Vec<u32> = processes_naming(&pod)
        .into_iter()
        .filter(|(_, argv0)| argv0.ends_with("crust-shim"))
        .map(|(pid, _)| pid)
        .collect();
    assert_eq!(shims.len(), 1, "one shim for the pod");
    assert!(
        !environ(shims[0]).contains_key("NOTIFY_SOCKET"),
        "the shim inherited NOTIFY_SOCKET"
    );
    assert!(environ(crustd.pid().unwrap()).contains_key("NOTIFY_SOCKET"));
    remove_pod(&mut rt, &pod).await;
    drop(rt);

    crustd.signal(nix::sys::signal::Signal::SIGTERM).unwrap();
    let stopping = receive_until(&notify, Duration::from_secs(15), |m| {
        m.starts_with(b"STOPPING=1")
    });
    let stopping = String::from_utf8_lossy(stopping.last().expect("a notification"));
    assert!(stopping.starts_with("STOPPING=1\n"), "{stopping}");
    assert!(
        crustd
            .wait_exit(Duration::from_secs(15))
            .await
            .unwrap()
            .success()
    );
}

/// (pid, argv[0]) of every process whose command line names `needle`.
fn processes_naming(needle: &str) -> Vec<(u32, String)> {
    let mut found = Vec::new();
    for p in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let cmdline = std::fs::read(p.path().join("cmdline")).unwrap_or_default();
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if args.iter().any(|a| a == needle) {
            found.push((pid, args[0].clone()));
        }
    }
    found
}

fn environ(pid: u32) -> BTreeMap<String, String> {
    std::fs::read(format!("/proc/{pid}/environ"))
        .unwrap()
        .split(|b| *b == 0)
        .filter_map(|kv| {
            let kv = String::from_utf8_lossy(kv);
            kv.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect()
}

/// The fields of one journald native-protocol datagram: `KEY=value\n`, or
/// `KEY\n<u64 LE length><value>\n` for values with newlines.
fn journal_fields(mut d: &[u8]) -> BTreeMap<String, String> {
    let mut fields = BTreeMap::new();
    while !d.is_empty() {
        let nl = d
            .iter()
            .position(|b| *b == b'\n')
            .expect("field ends with a newline");
        let line = &d[..nl];
        if let Some(eq) = line.iter().position(|b| *b == b'=') {
            fields.insert(
                String::from_utf8_lossy(&line[..eq]).into_owned(),
                String::from_utf8_lossy(&line[eq + 1..]).into_owned(),
            );
            d = &d[nl + 1..];
        } else {
            let len = u64::from_le_bytes(d[nl + 1..nl + 9].try_into().unwrap()) as usize;
            let value = &d[nl + 9..nl + 9 + len];
            fields.insert(
                String::from_utf8_lossy(line).into_owned(),
                String::from_utf8_lossy(value).into_owned(),
            );
            d = &d[nl + 10 + len..];
        }
    }
    fields
}

#[test]
fn logs_go_to_journald_natively_when_stderr_is_the_journal() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let journal_path = dir.path().join("journal.sock");
    let journal = UnixDatagram::bind(&journal_path).unwrap();
    let socket = dir.path().join("crust.sock");
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "socket = {socket:?}\nroot_dir = {:?}\nstate_dir = {:?}\n[metrics]\nenabled = false\n",
            dir.path().join("root"),
            dir.path().join("state"),
        ),
    )
    .unwrap();
    let stderr_path = dir.path().join("stderr");
    let stderr = std::fs::File::create(&stderr_path).unwrap();
    let meta = stderr.metadata().unwrap();
    // journald's socket is always /run/systemd/journal/socket: in a mount namespace
    // of its own, crustd finds the test's socket there (and nothing else of /run).
    let script = "mount -t tmpfs tmpfs /run && mkdir -p /run/systemd/journal && \
                  touch /run/systemd/journal/socket && \
                  mount --bind \"$1\" /run/systemd/journal/socket && exec \"$2\" --config \"$3\"";
    let mut child = Command::new("unshare")
        .args([
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            script,
            "sh",
        ])
        .arg(&journal_path)
        .arg(binary("crustd"))
        .arg(&config)
        .env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()))
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .unwrap();
    let got = receive_until(&journal, Duration::from_secs(30), |d| {
        journal_fields(d)
            .get("MESSAGE")
            .is_some_and(|m| m.contains("crustd is serving CRI"))
    });
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let stopped = receive_until(&journal, Duration::from_secs(15), |d| {
        journal_fields(d)
            .get("MESSAGE")
            .is_some_and(|m| m == "crustd stopped")
    });
    let status = child.wait().unwrap();
    let stderr_text = std::fs::read_to_string(&stderr_path).unwrap();
    let serving = got
        .iter()
        .map(|d| journal_fields(d))
        .find(|f| {
            f.get("MESSAGE")
                .is_some_and(|m| m.contains("crustd is serving CRI"))
        })
        .unwrap_or_else(|| panic!("no record reached the journal; stderr:\n{stderr_text}"));
    assert_eq!(
        serving.get("PRIORITY").map(String::as_str),
        Some("6"),
        "{serving:?}"
    );
    assert_eq!(
        serving.get("SYSLOG_IDENTIFIER").map(String::as_str),
        Some("crustd")
    );
    assert_eq!(
        serving.get("TARGET").map(String::as_str),
        Some("crust_cri::daemon")
    );
    assert_eq!(
        serving.get("F_SOCKET").map(String::as_str),
        Some(socket.display().to_string().as_str()),
        "{serving:?}"
    );
    assert!(!stopped.is_empty(), "no 'crustd stopped' record");
    assert!(
        status.success(),
        "crustd exited with {status}; stderr:\n{stderr_text}"
    );
    assert!(
        !stderr_text.contains("serving CRI"),
        "logged to stderr too:\n{stderr_text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_on_stderr_when_journal_stream_names_another_file() {
    // JOURNAL_STREAM inherited from a service whose stderr crustd does not share
    // (a shell in a unit, redirected): not the journal.
    let crustd = Crustd::start_with(Options {
        extra_config: "log_format = \"json\"".into(),
        env: vec![("JOURNAL_STREAM".into(), "1:1".into())],
        ..Default::default()
    })
    .await
    .expect("crustd starts");
    // The server may answer the harness's Version call before the line is written.
    crust_e2e::workload::wait_for("the serving line", Duration::from_secs(10), || {
        crustd.log().contains("crustd is serving CRI")
    })
    .await;
    let log = crustd.log();
    let records: Vec<serde_json::Value> = log
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
        .collect();
    let serving = records
        .iter()
        .find(|r| r["fields"]["message"] == "crustd is serving CRI")
        .unwrap_or_else(|| panic!("{log}"));
    assert_eq!(serving["level"], "INFO");
    assert_eq!(serving["target"], "crust_cri::daemon");
    assert_eq!(
        serving["fields"]["socket"],
        crustd.socket.display().to_string()
    );
    assert!(serving["timestamp"].is_string());
}

// ---- the Grafana dashboard ---------------------------------------------------

/// PromQL words that are not metric names.
const PROMQL_WORDS: &[&str] = &[
    "sum",
    "rate",
    "increase",
    "histogram_quantile",
    "by",
    "without",
    "avg",
    "max",
    "min",
    "count",
    "irate",
    "delta",
    "label_values",
    "and",
    "or",
    "unless",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "offset",
    "bool",
    "topk",
    "bottomk",
    "abs",
    "clamp_min",
];

/// Metric selectors in a PromQL expression: (metric name, label names matched).
fn selectors(expr: &str) -> Vec<(String, BTreeSet<String>)> {
    let b = expr.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i] as char;
        if c == '"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            i += 1;
        } else if c == '[' {
            while i < b.len() && b[i] != b']' {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == '$' {
            let start = i;
            while i < b.len()
                && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b':' || b[i] == b'$')
            {
                i += 1;
            }
            let word = &expr[start..i];
            let rest = expr[i..].trim_start();
            if word.starts_with('$')
                || PROMQL_WORDS.contains(&word)
                || rest.starts_with('(')
                || in_grouping(&expr[..start])
            {
                continue;
            }
            let mut labels = BTreeSet::new();
            if let Some(inner) = rest.strip_prefix('{') {
                let (names, len) = matchers(inner);
                labels = names;
                i = expr.len() - inner.len() + len;
            }
            out.push((word.to_string(), labels));
        } else {
            i += 1;
        }
    }
    out
}

/// The label names of the matchers `a="x", b!~"y,z"` up to the closing `}`, and
/// the length read (the `}` included).
fn matchers(inner: &str) -> (BTreeSet<String>, usize) {
    let b = inner.as_bytes();
    let mut names = BTreeSet::new();
    let mut i = 0;
    loop {
        while i < b.len() && (b[i] == b' ' || b[i] == b',') {
            i += 1;
        }
        assert!(i < b.len(), "unclosed selector {inner:?}");
        if b[i] == b'}' {
            return (names, i + 1);
        }
        let start = i;
        while b[i].is_ascii_alphanumeric() || b[i] == b'_' {
            i += 1;
        }
        names.insert(inner[start..i].to_string());
        while b[i] != b'"' {
            i += 1;
        }
        i += 1;
        while b[i] != b'"' {
            i += if b[i] == b'\\' { 2 } else { 1 };
        }
        i += 1;
    }
}

/// Whether the text before a word ends inside the label list of `by (...)`,
/// `without (...)`, `on (...)` or `ignoring (...)` (or a group modifier).
fn in_grouping(before: &str) -> bool {
    let open = before.rfind('(');
    let close = before.rfind(')');
    open.is_some_and(|o| {
        close.is_none_or(|c| c < o) && {
            let head = before[..o].trim_end();
            [
                "by",
                "without",
                "on",
                "ignoring",
                "group_left",
                "group_right",
            ]
            .iter()
            .any(|k| head.ends_with(k))
        }
    })
}

/// Every expression of a dashboard: panel targets and query variables.
fn expressions(dashboard: &serde_json::Value) -> Vec<String> {
    let mut out = Vec::new();
    for p in dashboard["panels"].as_array().expect("panels") {
        for t in p["targets"].as_array().into_iter().flatten() {
            out.push(
                t["expr"]
                    .as_str()
                    .expect("a target has an expr")
                    .to_string(),
            );
        }
    }
    for v in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        // label_values(<selector>, <label>): that selector, matching on the label.
        if let Some(q) = v["query"]["query"].as_str() {
            let args = q
                .strip_prefix("label_values(")
                .expect("a label_values query");
            let (selector, label) = args.trim_end_matches(')').rsplit_once(',').unwrap();
            let label = label.trim();
            out.push(match selector.strip_suffix('}') {
                Some(open) => format!("{open},{label}=~\".+\"}}"),
                None => format!("{selector}{{{label}=~\".+\"}}"),
            });
        }
    }
    out
}

/// Sample names in a scrape, with the label names each carries.
fn exported(scrape: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in scrape
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        let labels = out.entry(line[..name_end].to_string()).or_default();
        if let Some(inner) = line[name_end..].strip_prefix('{') {
            for kv in inner[..inner.find('}').unwrap()].split("\",") {
                if let Some((k, _)) = kv.split_once('=') {
                    labels.insert(k.trim().to_string());
                }
            }
        }
    }
    out
}

/// What a dashboard's queries name that the scrape lacks: unknown metrics, or
/// labels a metric does not carry (`instance` and `job` come from Prometheus).
fn unknown_names(dashboard: &serde_json::Value, scrape: &str) -> Vec<String> {
    let have = exported(scrape);
    let mut wrong = Vec::new();
    for expr in expressions(dashboard) {
        let sels = selectors(&expr);
        if sels.is_empty() {
            wrong.push(format!("no metric in {expr:?}"));
        }
        for (name, labels) in sels {
            match have.get(&name) {
                None => wrong.push(format!("{name} (in {expr:?})")),
                Some(known) => {
                    for l in labels
                        .iter()
                        .filter(|l| !["instance", "job"].contains(&l.as_str()))
                    {
                        if !known.contains(l) {
                            wrong.push(format!("{name}{{{l}}} (in {expr:?})"));
                        }
                    }
                }
            }
        }
    }
    wrong
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_queries_name_only_what_crustd_exports() {
    let text = std::fs::read_to_string(repo().join("docs/grafana-dashboard.json")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("dashboard is JSON");
    assert_eq!(dashboard["uid"], "crust-cri");

    // A little of everything the dashboard shows.
    let (registry, crustd, _net, image, mut rt, pc, pod) = scene(171, "dashboard").await;
    try_pull(&crustd, &registry.image("crust/no-such-image:latest"))
        .await
        .expect_err("a pull of a missing image fails");
    let ctr = create_sleeper(&mut rt, &pod, &pc, &image).await;
    start(&mut rt, &ctr).await;
    let crictl = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/bin/crictl");
    let endpoint = format!("unix://{}", crustd.socket.display());
    let out = Command::new(&crictl)
        .args([
            "--runtime-endpoint",
            &endpoint,
            "--image-endpoint",
            &endpoint,
            "--timeout",
            "20s",
        ])
        .args(["exec", &ctr, "echo", "streamed"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "streamed\n",
        "{out:?}"
    );
    let url = rt
        .exec(cri::ExecRequest {
            container_id: ctr.clone(),
            cmd: vec!["true".into()],
            stdout: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .url;
    let addr = url
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    http_get(addr, "/exec/not-a-token")
        .await
        .expect_err("an unknown token is refused");
    rt.stop_container(cri::StopContainerRequest {
        container_id: ctr.clone(),
        timeout: 0,
    })
    .await
    .unwrap();
    crust_e2e::workload::wait_exited(&mut rt, &ctr, Duration::from_secs(20)).await;
    let scrape = crustd.metrics().await.unwrap();
    assert_eq!(metric_value(&scrape, "crust_shims "), Some(1.0), "{scrape}");
    remove_pod(&mut rt, &pod).await;
    let after = crustd.metrics().await.unwrap();
    assert_eq!(metric_value(&after, "crust_shims "), Some(0.0), "{after}");

    let wrong = unknown_names(&dashboard, &scrape);
    assert!(
        wrong.is_empty(),
        "the dashboard names what crustd does not export: {wrong:#?}"
    );
    // Everything the issue asks the dashboard to show is in it.
    let named: BTreeSet<String> = expressions(&dashboard)
        .iter()
        .flat_map(|e| selectors(e))
        .map(|(n, _)| n)
        .collect();
    for m in [
        "crust_cri_requests_total",
        "crust_cri_request_duration_seconds_bucket",
        "crust_image_pulls_total",
        "crust_image_pulls_failed_total",
        "crust_pods",
        "crust_containers",
        "crust_shims",
        "crust_container_exits_total",
        "crust_streaming_sessions_active",
        "crust_streaming_sessions_total",
    ] {
        assert!(named.contains(m), "the dashboard does not show {m}");
    }
    // The check itself fails on a wrong name or label.
    let broken: serde_json::Value = serde_json::from_str(
        &text
            .replace("crust_shims", "crust_shim_count")
            .replace("code!=", "status!="),
    )
    .unwrap();
    let wrong = unknown_names(&broken, &scrape);
    assert!(
        wrong.iter().any(|w| w.starts_with("crust_shim_count ")),
        "{wrong:?}"
    );
    assert!(
        wrong
            .iter()
            .any(|w| w.starts_with("crust_cri_requests_total{status}")),
        "{wrong:?}"
    );
}

#[test]
fn selectors_are_read_from_promql() {
    let s = selectors(
        "histogram_quantile(0.9, sum by (method, le) (rate(a_b_bucket{x=\"y\",z!~\"w,v\"}[5m]))) / on(k) c",
    );
    let names: Vec<&str> = s.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["a_b_bucket", "c"]);
    assert_eq!(s[0].1, BTreeSet::from(["x".to_string(), "z".to_string()]));
    assert!(s[1].1.is_empty());
}

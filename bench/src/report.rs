//! What a run produces (one [`RunResult`] per scenario and runtime, printed as
//! text or JSON) and the side-by-side report `hack/bench` prints and writes
//! into docs/benchmarks.md: per scenario both runtimes' figures and the ratio
//! crust/containerd, then the goals of issue 6 held against those ratios.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::machine::Machine;
use crate::stats::Summary;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    /// The runtime answered Unimplemented for an RPC the scenario needs.
    Unsupported,
    Error,
}

/// One operation's latencies.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Operation {
    pub name: String,
    #[serde(flatten)]
    pub summary: Summary,
    /// Every sample, in ms, in the order taken: lets runs of the same
    /// scenario be merged (hack/bench runs the cheap ones A-B-B-A).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub samples_ms: Vec<f64>,
}

/// A single measured value (wall time, memory).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Figure {
    pub name: String,
    pub unit: String,
    pub value: f64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Runtime {
    pub name: String,
    pub version: String,
}

/// The outcome of one scenario against one endpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunResult {
    /// The scenario's name plus `-pN` when it ran N at a time; tables are keyed on it.
    pub label: String,
    pub scenario: String,
    /// Who was measured: `--target`, else the runtime's own name.
    pub target: String,
    pub endpoint: String,
    pub runtime: Runtime,
    pub count: usize,
    pub parallel: usize,
    /// UTC, RFC 3339.
    pub started_at: String,
    pub status: Status,
    /// Why the scenario is unsupported or failed.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    pub operations: Vec<Operation>,
    pub figures: Vec<Figure>,
    pub machine: Machine,
}

impl RunResult {
    pub fn operation(&self, name: &str) -> Option<&Summary> {
        self.operations
            .iter()
            .find(|o| o.name == name)
            .map(|o| &o.summary)
    }

    pub fn figure(&self, name: &str) -> Option<&Figure> {
        self.figures.iter().find(|f| f.name == name)
    }

    /// Human-readable text for one run.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        let against = if self.endpoint.is_empty() {
            "the machine alone".to_string()
        } else {
            format!(
                "{} {} ({})",
                self.target, self.runtime.version, self.endpoint
            )
        };
        let _ = writeln!(
            s,
            "{} against {against}, count {}, parallel {}: {}",
            self.label,
            self.count,
            self.parallel,
            match self.status {
                Status::Ok => "ok".to_string(),
                Status::Unsupported => format!("unsupported ({})", self.message),
                Status::Error => format!("error: {}", self.message),
            }
        );
        if !self.operations.is_empty() {
            let _ = writeln!(
                s,
                "  {:<36} {:>5} {:>10} {:>10} {:>10}",
                "operation (ms)", "n", "median", "p90", "max"
            );
            for o in &self.operations {
                let _ = writeln!(
                    s,
                    "  {:<36} {:>5} {:>10.2} {:>10.2} {:>10.2}",
                    o.name,
                    o.summary.samples,
                    o.summary.median_ms,
                    o.summary.p90_ms,
                    o.summary.max_ms
                );
            }
        }
        for f in &self.figures {
            let _ = writeln!(s, "  {:<36} {:>10.2} {}", f.name, f.value, f.unit);
        }
        let m = &self.machine;
        let _ = writeln!(
            s,
            "  machine: {} cores ({}), {} MiB, kernel {}, cgroup {}, {}, load {:.2}",
            m.cores, m.cpu_model, m.memory_mib, m.kernel, m.cgroup_mode, m.runc, m.load_1m
        );
        s
    }
}

fn severity(s: Status) -> u8 {
    match s {
        Status::Ok => 0,
        Status::Unsupported => 1,
        Status::Error => 2,
    }
}

/// Joins runs of the same scenario against the same target (same label and
/// target) into one, keeping the order of first appearance: samples are
/// pooled and summarised again, figures averaged, counts added; a part that
/// was unsupported or failed makes the whole so, with its message.
pub fn merge(results: Vec<RunResult>) -> Vec<RunResult> {
    let mut out: Vec<RunResult> = Vec::new();
    let mut parts: Vec<usize> = Vec::new();
    for r in results {
        let Some(i) = out
            .iter()
            .position(|o| o.label == r.label && o.target == r.target)
        else {
            out.push(r);
            parts.push(1);
            continue;
        };
        let m = &mut out[i];
        let n = parts[i] as f64;
        parts[i] += 1;
        m.count += r.count;
        if severity(r.status) > severity(m.status) {
            m.status = r.status;
            m.message = r.message.clone();
        }
        for o in r.operations {
            match m.operations.iter_mut().find(|x| x.name == o.name) {
                Some(x) if !x.samples_ms.is_empty() && !o.samples_ms.is_empty() => {
                    x.samples_ms.extend(&o.samples_ms);
                    if let Some(sum) = Summary::of_ms(&x.samples_ms) {
                        x.summary = sum;
                    }
                }
                Some(_) => {}
                None => m.operations.push(o),
            }
        }
        for f in r.figures {
            match m.figures.iter_mut().find(|x| x.name == f.name) {
                // Running mean over the parts seen so far.
                Some(x) => x.value = (x.value * n + f.value) / (n + 1.0),
                None => m.figures.push(f),
            }
        }
    }
    out
}

/// A goal of issue 6: crust's figure at most `max_ratio` times containerd's.
#[derive(Debug, Clone, Copy)]
pub struct Goal {
    pub what: &'static str,
    pub label: &'static str,
    pub metric: Metric,
    pub max_ratio: f64,
    pub ratio_text: &'static str,
}

#[derive(Debug, Clone, Copy)]
pub enum Metric {
    /// The median of an operation.
    Median(&'static str),
    /// A figure.
    Figure(&'static str),
    /// The median of one operation for crust against another for containerd
    /// (an RPC containerd lacks against the one it answers the same need with).
    MedianVs(&'static str, &'static str),
}

pub const GOALS: &[Goal] = &[
    Goal {
        what: "RunPodSandbox (median, sequential)",
        label: "pod",
        metric: Metric::Median("RunPodSandbox"),
        max_ratio: 1.0 / 3.0,
        ratio_text: "1/3",
    },
    Goal {
        what: "CreateContainer+StartContainer (median)",
        label: "container",
        metric: Metric::Median("CreateContainer+StartContainer"),
        max_ratio: 0.5,
        ratio_text: "1/2",
    },
    Goal {
        what: "pod + container from scratch (median)",
        label: "pod-container",
        metric: Metric::Median("total"),
        max_ratio: 1.0 / 3.0,
        ratio_text: "1/3",
    },
    Goal {
        what: "daemon RSS with the density pods",
        label: "density",
        metric: Metric::Figure("daemon_rss"),
        max_ratio: 1.0 / 3.0,
        ratio_text: "1/3",
    },
    Goal {
        what: "shim RSS per pod",
        label: "density",
        metric: Metric::Figure("shim_rss_per_pod"),
        max_ratio: 0.25,
        ratio_text: "1/4",
    },
    Goal {
        what: "large image pull (median)",
        label: "pull-large",
        metric: Metric::Median("PullImage"),
        max_ratio: 0.5,
        ratio_text: "1/2",
    },
    Goal {
        what: "daemon peak RSS during the large pull (issue 3: lower)",
        label: "pull-large",
        metric: Metric::Figure("daemon_peak_rss"),
        max_ratio: 1.0,
        ratio_text: "1",
    },
    Goal {
        what: "small image pull (median, issue 3)",
        label: "pull-small",
        metric: Metric::Median("PullImage"),
        max_ratio: 1.0 / 3.0,
        ratio_text: "1/3",
    },
    Goal {
        what: "ListContainerStats (median)",
        label: "stats",
        metric: Metric::Median("ListContainerStats"),
        max_ratio: 0.2,
        ratio_text: "1/5",
    },
    Goal {
        what: "ListPodSandboxMetrics (crust) vs ListPodSandboxStats (containerd), median",
        label: "pod-metrics",
        metric: Metric::MedianVs("ListPodSandboxMetrics", "ListPodSandboxStats"),
        max_ratio: 0.2,
        ratio_text: "1/5",
    },
    Goal {
        what: "density wall time",
        label: "density",
        metric: Metric::Figure("start_wall"),
        max_ratio: 0.5,
        ratio_text: "1/2",
    },
];

/// What a scenario measures, one line for the report.
pub fn describe(scenario: &str) -> &'static str {
    match scenario {
        "version" => "Version round trip: the floor of any CRI call",
        "status" => "Status round trip",
        "pull-small" => {
            "PullImage of a small image, removed before each pull so every pull is cold"
        }
        "pull-large" => "PullImage of the ~200 MB, 6-layer image, cold each time",
        "pod" => "RunPodSandbox of every pod, then StopPodSandbox+RemovePodSandbox of every pod",
        "container" => {
            "CreateContainer+StartContainer, then StopContainer+RemoveContainer, in one pod"
        }
        "pod-container" => {
            "what kubelet does for a new pod: ImageStatus (pull if needed), RunPodSandbox, CreateContainer, StartContainer"
        }
        "density" => {
            "N pods with one sleep container each, started P at a time: wall time and memory"
        }
        "list" => "ListPodSandbox, ListContainers and the status calls with the pods present",
        "status-verbose" => "PodSandboxStatus with verbose (crictl inspectp) of running pods",
        "stats" => "ListContainerStats and ContainerStats with the containers running",
        "pod-metrics" => {
            "ListPodSandboxStats and ListPodSandboxMetrics with the pods running, then the daemon's RSS over two rounds of 1,000 ListPodSandboxMetrics"
        }
        "exec" => "ExecSync of `true` in a running container",
        "port-forward" => {
            "PortForward, then an echo of N MiB through the streaming server (WebSocket) to a pod"
        }
        "floor-unshare" => "unshare --net --ipc --uts --pid --fork --mount true: namespaces alone",
        "floor-runc" => "runc run of a minimal busybox bundle running `true`",
        _ => "",
    }
}

fn fmt_num(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

fn status_cell(r: Option<&RunResult>) -> String {
    match r {
        None => "not run".to_string(),
        Some(r) => match r.status {
            Status::Ok => String::new(),
            Status::Unsupported => "unsupported".to_string(),
            Status::Error => "error".to_string(),
        },
    }
}

/// The value of a metric in a run, when it ran fine.
fn metric_value(r: Option<&RunResult>, m: Metric) -> Option<f64> {
    let r = r.filter(|r| r.status == Status::Ok)?;
    match m {
        Metric::Median(op) => r.operation(op).map(|s| s.median_ms),
        Metric::Figure(f) => r.figure(f).map(|f| f.value),
        Metric::MedianVs(..) => None,
    }
}

/// The value of goal `m` for side `a` (crust) or the other side.
fn goal_value(r: Option<&RunResult>, m: Metric, a: bool) -> Option<f64> {
    match m {
        Metric::MedianVs(ours, theirs) => {
            metric_value(r, Metric::Median(if a { ours } else { theirs }))
        }
        m => metric_value(r, m),
    }
}

/// Results indexed by label then target; a later result replaces an earlier one.
pub struct Table<'a> {
    by_label: BTreeMap<&'a str, BTreeMap<&'a str, &'a RunResult>>,
    order: Vec<&'a str>,
}

impl<'a> Table<'a> {
    pub fn new(results: &'a [RunResult]) -> Table<'a> {
        let mut by_label: BTreeMap<&str, BTreeMap<&str, &RunResult>> = BTreeMap::new();
        let mut order = Vec::new();
        for r in results {
            if !by_label.contains_key(r.label.as_str()) {
                order.push(r.label.as_str());
            }
            by_label.entry(&r.label).or_default().insert(&r.target, r);
        }
        Table { by_label, order }
    }

    fn get(&self, label: &str, target: &str) -> Option<&'a RunResult> {
        self.by_label.get(label)?.get(target).copied()
    }
}

/// The markdown report: `a` and `b` are the targets compared (crust,
/// containerd); ratios are a/b, so below 1 means `a` is faster or smaller.
pub fn markdown(results: &[RunResult], a: &str, b: &str) -> String {
    let t = Table::new(results);
    let mut s = String::new();
    if let Some(r) = results.iter().find(|r| r.target == b || r.target == a) {
        let m = &r.machine;
        let _ = writeln!(
            s,
            "Run of {} on `{}`: {} cores ({}), {} MiB, kernel {}, cgroup {}, {}, load {:.2} at start.\n",
            r.started_at,
            m.hostname,
            m.cores,
            m.cpu_model,
            m.memory_mib,
            m.kernel,
            m.cgroup_mode,
            m.runc,
            m.load_1m
        );
    }
    let versions: Vec<String> = [a, b]
        .iter()
        .filter_map(|who| {
            results
                .iter()
                .find(|r| r.target == *who && !r.runtime.version.is_empty())
        })
        .map(|r| format!("{} {}", r.target, r.runtime.version))
        .collect();
    if !versions.is_empty() {
        let _ = writeln!(s, "Runtimes: {}.\n", versions.join(", "));
    }

    // The goals first: they are what a reader looks for.
    let _ = writeln!(s, "### Goals (issue 6), ratio {a}/{b}\n");
    let _ = writeln!(s, "| goal | target | {a} | {b} | ratio | met |");
    let _ = writeln!(s, "|---|---|---|---|---|---|");
    for g in GOALS {
        let ra = t.get(g.label, a);
        let rb = t.get(g.label, b);
        let va = goal_value(ra, g.metric, true);
        let vb = goal_value(rb, g.metric, false);
        let unit = match g.metric {
            Metric::Median(_) | Metric::MedianVs(..) => "ms".to_string(),
            Metric::Figure(f) => [ra, rb]
                .into_iter()
                .flatten()
                .find_map(|r| r.figure(f))
                .map(|f| f.unit.clone())
                .unwrap_or_default(),
        };
        let cell = |v: Option<f64>, r: Option<&RunResult>| match v {
            Some(v) => format!("{} {unit}", fmt_num(v)),
            None => status_cell(r),
        };
        let q = ratio(va, vb);
        let _ = writeln!(
            s,
            "| {} | ≤ {} | {} | {} | {} | {} |",
            g.what,
            g.ratio_text,
            cell(va, ra),
            cell(vb, rb),
            q.map(|q| format!("{q:.2}"))
                .unwrap_or_else(|| "—".to_string()),
            match q {
                Some(q) if q <= g.max_ratio => "yes",
                Some(_) => "no",
                None => "—",
            }
        );
    }

    // The physical floor beside the goals: what no runtime can beat.
    let floor = |label: &str, op: &str| {
        t.get(label, "floor")
            .filter(|r| r.status == Status::Ok)
            .and_then(|r| r.operation(op))
            .map(|o| o.median_ms)
    };
    let u = floor("floor-unshare", "unshare");
    let r = floor("floor-runc", "runc run");
    if u.is_some() || r.is_some() {
        let show = |v: Option<f64>| {
            v.map(|v| format!("{} ms", fmt_num(v)))
                .unwrap_or_else(|| "—".to_string())
        };
        let _ = writeln!(
            s,
            "\nPhysical floor (medians): the namespaces of a pod and its container alone \
             (`unshare`) {}; one container by runc alone (`runc run` of `true`) {}.",
            show(u),
            show(r)
        );
    }

    for label in &t.order {
        let ra = t.get(label, a);
        let rb = t.get(label, b);
        let floor = t.by_label.get(label).and_then(|m| m.get("floor")).copied();
        if ra.is_none() && rb.is_none() && floor.is_none() {
            continue;
        }
        let any = ra.or(rb).or(floor);
        let Some(first) = any else { continue };
        let _ = writeln!(
            s,
            "\n### {label} — {} (count {}, {} at a time)\n",
            describe(&first.scenario),
            first.count,
            first.parallel
        );
        if let Some(f) = floor {
            s.push_str(&single_table(f));
            continue;
        }
        let _ = writeln!(
            s,
            "| operation | {a} median | {a} p90 | {b} median | {b} p90 | ratio (median) |"
        );
        let _ = writeln!(s, "|---|---|---|---|---|---|");
        // Rows come from the runs that completed: an unsupported run's
        // partial samples (the calls before the unsupported one) are noise.
        let ok: Vec<&RunResult> = [ra, rb]
            .into_iter()
            .flatten()
            .filter(|r| r.status == Status::Ok)
            .collect();
        let mut names: Vec<&str> = Vec::new();
        for r in &ok {
            for o in &r.operations {
                if !names.contains(&o.name.as_str()) {
                    names.push(&o.name);
                }
            }
        }
        let op = |r: Option<&RunResult>, n: &str| {
            r.filter(|r| r.status == Status::Ok)
                .and_then(|r| r.operation(n))
                .cloned()
        };
        if names.is_empty() {
            let _ = writeln!(
                s,
                "| (no figures) | {} | | {} | | — |",
                explain(ra),
                explain(rb)
            );
        }
        for n in names {
            let (oa, ob) = (op(ra, n), op(rb, n));
            let cell = |o: &Option<Summary>, r, f: fn(&Summary) -> f64| match o {
                Some(o) => fmt_num(f(o)),
                None => explain(r),
            };
            let _ = writeln!(
                s,
                "| {n} (ms) | {} | {} | {} | {} | {} |",
                cell(&oa, ra, |o| o.median_ms),
                cell(&oa, ra, |o| o.p90_ms),
                cell(&ob, rb, |o| o.median_ms),
                cell(&ob, rb, |o| o.p90_ms),
                ratio(oa.map(|o| o.median_ms), ob.map(|o| o.median_ms))
                    .map(|q| format!("{q:.2}"))
                    .unwrap_or_else(|| "—".to_string())
            );
        }
        let mut fnames: Vec<(&str, &str)> = Vec::new();
        for r in &ok {
            for f in &r.figures {
                if !fnames.iter().any(|(n, _)| *n == f.name) {
                    fnames.push((&f.name, &f.unit));
                }
            }
        }
        for (n, unit) in fnames {
            let fa = ra
                .filter(|r| r.status == Status::Ok)
                .and_then(|r| r.figure(n));
            let fb = rb
                .filter(|r| r.status == Status::Ok)
                .and_then(|r| r.figure(n));
            let cell = |f: Option<&Figure>, r| match f {
                Some(f) => fmt_num(f.value),
                None => explain(r),
            };
            let _ = writeln!(
                s,
                "| {n} ({unit}) | {} | | {} | | {} |",
                cell(fa, ra),
                cell(fb, rb),
                ratio(fa.map(|f| f.value), fb.map(|f| f.value))
                    .map(|q| format!("{q:.2}"))
                    .unwrap_or_else(|| "—".to_string())
            );
        }
        for r in [ra, rb].into_iter().flatten() {
            if r.status != Status::Ok {
                let _ = writeln!(s, "\n{}: {}", r.target, r.message);
            }
        }
    }
    s
}

/// Why a cell has no number.
fn explain(r: Option<&RunResult>) -> String {
    match r {
        Some(r) if r.status == Status::Ok => "—".to_string(),
        other => status_cell(other),
    }
}

/// A table for a run with no counterpart (the physical floor).
fn single_table(r: &RunResult) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "| operation | median | p90 | max |");
    let _ = writeln!(s, "|---|---|---|---|");
    if r.status != Status::Ok {
        let _ = writeln!(s, "| {} | {} | | |", r.scenario, status_cell(Some(r)));
    }
    for o in &r.operations {
        let _ = writeln!(
            s,
            "| {} (ms) | {} | {} | {} |",
            o.name,
            fmt_num(o.summary.median_ms),
            fmt_num(o.summary.p90_ms),
            fmt_num(o.summary.max_ms)
        );
    }
    s
}

pub const DOCS_START: &str = "<!-- bench:results:start -->";
pub const DOCS_END: &str = "<!-- bench:results:end -->";

/// Replaces the text between the results markers of a document.
pub fn replace_results(doc: &str, results: &str) -> Option<String> {
    let start = doc.find(DOCS_START)? + DOCS_START.len();
    let end = start + doc[start..].find(DOCS_END)?;
    Some(format!(
        "{}\n{}\n{}",
        &doc[..start],
        results.trim_end(),
        &doc[end..]
    ))
}

/// Seconds since the epoch as RFC 3339 UTC (no leap seconds, as Unix time).
pub fn rfc3339(unix_secs: u64) -> String {
    let days = (unix_secs / 86_400) as i64;
    let rem = unix_secs % 86_400;
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(label: &str, target: &str, status: Status, ops: &[(&str, f64)]) -> RunResult {
        RunResult {
            label: label.to_string(),
            scenario: label.trim_end_matches("-p10").to_string(),
            target: target.to_string(),
            endpoint: "unix:///x.sock".to_string(),
            runtime: Runtime {
                name: target.to_string(),
                version: "1.0".to_string(),
            },
            count: 3,
            parallel: 1,
            started_at: rfc3339(0),
            status,
            message: if status == Status::Ok {
                String::new()
            } else {
                "RunPodSandbox is not implemented by this runtime".to_string()
            },
            operations: ops
                .iter()
                .map(|(n, v)| Operation {
                    name: n.to_string(),
                    summary: Summary::of_ms(&[*v, *v * 2.0, *v * 3.0]).expect("summary"),
                    samples_ms: vec![*v, *v * 2.0, *v * 3.0],
                })
                .collect(),
            figures: vec![],
            machine: Machine::default(),
        }
    }

    #[test]
    fn json_round_trips_with_flat_operations() {
        let mut r = run("pod", "containerd", Status::Ok, &[("RunPodSandbox", 100.0)]);
        r.figures.push(Figure {
            name: "daemon_rss".to_string(),
            unit: "MiB".to_string(),
            value: 62.5,
        });
        let text = serde_json::to_string(&r).expect("json");
        let v: serde_json::Value = serde_json::from_str(&text).expect("parse");
        assert_eq!(v["status"], "ok");
        assert_eq!(v["operations"][0]["name"], "RunPodSandbox");
        assert_eq!(v["operations"][0]["median_ms"], 200.0);
        assert_eq!(v["operations"][0]["samples"], 3);
        assert_eq!(v["figures"][0]["value"], 62.5);
        assert!(v.get("message").is_none(), "empty message is omitted");
        let back: RunResult = serde_json::from_str(&text).expect("back");
        assert_eq!(back, r);
        let u = run("pod", "crust", Status::Unsupported, &[]);
        let v = serde_json::to_value(&u).expect("json");
        assert_eq!(v["status"], "unsupported");
    }

    #[test]
    fn markdown_shows_ratios_unsupported_and_goals() {
        let results = vec![
            run("pod", "crust", Status::Ok, &[("RunPodSandbox", 30.0)]),
            run("pod", "containerd", Status::Ok, &[("RunPodSandbox", 100.0)]),
            run("container", "crust", Status::Unsupported, &[]),
            run(
                "container",
                "containerd",
                Status::Ok,
                &[("CreateContainer+StartContainer", 80.0)],
            ),
        ];
        let md = markdown(&results, "crust", "containerd");
        // pod: medians 60 vs 200 → 0.30, within 1/3.
        assert!(
            md.contains(
                "| RunPodSandbox (median, sequential) | ≤ 1/3 | 60.0 ms | 200 ms | 0.30 | yes |"
            ),
            "{md}"
        );
        assert!(
            md.contains("| RunPodSandbox (ms) | 60.0 | 84.0 | 200 | 280 | 0.30 |"),
            "{md}"
        );
        assert!(
            md.contains(
                "| CreateContainer+StartContainer (median) | ≤ 1/2 | unsupported | 160 ms | — | — |"
            ),
            "{md}"
        );
        assert!(
            md.contains("crust: RunPodSandbox is not implemented"),
            "{md}"
        );
        assert!(md.contains("| large image pull (median) | ≤ 1/2 | not run | not run | — | — |"));
        // Rows of a table come only from completed runs.
        assert!(!md.contains("| RunPodSandbox (ms) | unsupported"), "{md}");
    }

    #[test]
    fn figure_goals_carry_the_unit_of_whichever_side_has_it() {
        let mut b = run("density", "containerd", Status::Ok, &[]);
        b.figures.push(Figure {
            name: "daemon_rss".to_string(),
            unit: "MiB".to_string(),
            value: 50.0,
        });
        let mut a = run(
            "density",
            "crust",
            Status::Unsupported,
            &[("RunPodSandbox", 1.0)],
        );
        a.figures.clear();
        let md = markdown(&[a, b], "crust", "containerd");
        assert!(
            md.contains(
                "| daemon RSS with the density pods | ≤ 1/3 | unsupported | 50.0 MiB | — | — |"
            ),
            "{md}"
        );
    }

    #[test]
    fn merging_pools_samples_and_averages_figures() {
        let mut a1 = run("pod", "crust", Status::Ok, &[("RunPodSandbox", 10.0)]);
        a1.figures.push(Figure {
            name: "run_wall".to_string(),
            unit: "s".to_string(),
            value: 1.0,
        });
        let mut a2 = run("pod", "crust", Status::Ok, &[("RunPodSandbox", 100.0)]);
        a2.figures = a1.figures.clone();
        a2.figures[0].value = 3.0;
        let b = run("pod", "containerd", Status::Ok, &[("RunPodSandbox", 50.0)]);
        let u = run("pod", "containerd", Status::Unsupported, &[]);
        let merged = merge(vec![a1, b, a2, u]);
        assert_eq!(merged.len(), 2);
        let a = &merged[0];
        assert_eq!(a.target, "crust");
        assert_eq!(a.count, 6);
        let op = a.operation("RunPodSandbox").expect("op");
        // 10, 20, 30, 100, 200, 300 → median 65, max 300.
        assert_eq!(op.samples, 6);
        assert_eq!(op.median_ms, 65.0);
        assert_eq!(op.max_ms, 300.0);
        assert_eq!(a.figure("run_wall").expect("fig").value, 2.0);
        assert_eq!(merged[1].status, Status::Unsupported);
    }

    #[test]
    fn floor_runs_get_their_own_table() {
        let results = vec![run(
            "floor-unshare",
            "floor",
            Status::Ok,
            &[("unshare", 2.0)],
        )];
        let md = markdown(&results, "crust", "containerd");
        assert!(md.contains("| unshare (ms) | 4.00 | 5.60 | 6.00 |"), "{md}");
    }

    #[test]
    fn docs_section_is_replaced_between_markers() {
        let doc = format!("# B\n\nintro\n\n{DOCS_START}\nold table\n{DOCS_END}\n\nafter\n");
        let new = replace_results(&doc, "new table\n").expect("markers");
        assert_eq!(
            new,
            format!("# B\n\nintro\n\n{DOCS_START}\nnew table\n{DOCS_END}\n\nafter\n")
        );
        assert_eq!(replace_results("no markers", "x"), None);
    }

    #[test]
    fn dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_795_599_065), "2026-11-25T09:31:05Z");
    }
}

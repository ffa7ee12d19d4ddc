//! crust-bench: a CRI load generator. It drives any CRI runtime over its unix
//! socket through one scenario and prints median, p90 and max per operation
//! (JSON with `--json`), with the machine's facts; `crust-bench report`
//! puts the results of two runtimes side by side. See docs/benchmarks.md.

mod cri;
mod floor;
mod machine;
mod portforward;
mod procs;
mod report;
mod scenario;
mod stats;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use clap::{Args, Parser, Subcommand};

use crate::cri::{BenchError, Cri};
use crate::machine::Machine;
use crate::report::{RunResult, Runtime, Status};
use crate::scenario::{CRI_SCENARIOS, Ctx, FLOOR_SCENARIOS, Recorder, Settings};

#[derive(Parser)]
#[command(
    name = "crust-bench",
    about = "Drive a CRI runtime through a scenario and report latency, wall time and memory",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Print results of two runtimes side by side (markdown), with the goals.
    Report(ReportArgs),
}

#[derive(Args)]
struct RunArgs {
    /// The runtime's CRI socket: unix:///path/to.sock. Not needed for floor-* scenarios.
    #[arg(long)]
    endpoint: Option<String>,
    /// version, status, pull-small, pull-large, pod, container, pod-container,
    /// density, list, stats, exec, port-forward, cleanup (removes EVERY pod of
    /// the endpoint),
    /// floor-unshare, floor-runc.
    #[arg(long)]
    scenario: Option<String>,
    /// Measured iterations (pods for `density`).
    #[arg(long, default_value_t = 10)]
    count: usize,
    /// Operations in flight at once (pod, pod-container, density, and the
    /// set-up of list and stats).
    #[arg(long, default_value_t = 1)]
    parallel: usize,
    /// The image pulled, or run in containers (a busybox).
    #[arg(long)]
    image: Option<String>,
    /// Pods (one container each) present during `list` and `stats`.
    #[arg(long, default_value_t = 10)]
    pods: usize,
    /// The runtime daemon's PID, for its RSS in `density`.
    #[arg(long)]
    daemon_pid: Option<u32>,
    /// Base name of the runtime's shim binary, for shim RSS in `density`.
    #[arg(long)]
    shim_name: Option<String>,
    /// Count only shims whose command line, environment or working directory
    /// contains this text (e.g. the runtime's private directory).
    #[arg(long)]
    shim_match: Option<String>,
    /// Name the results under (default: the runtime's own name from Version).
    #[arg(long)]
    target: Option<String>,
    /// Seconds one call may take (PullImage gets ten times this).
    #[arg(long, default_value_t = 60)]
    timeout: u64,
    /// Where pod log directories go (default: a new dir under $TMPDIR).
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// MiB echoed through each port-forward (port-forward).
    #[arg(long, default_value_t = 8)]
    mib: usize,
    /// OCI bundle for floor-runc.
    #[arg(long)]
    bundle: Option<PathBuf>,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct ReportArgs {
    /// The runtime compared (numerator of the ratios).
    #[arg(long, default_value = "crust")]
    a: String,
    /// The runtime compared against (denominator).
    #[arg(long, default_value = "containerd")]
    b: String,
    /// A line printed under the report's header (e.g. which build was measured).
    #[arg(long)]
    note: Vec<String>,
    /// Rewrite the results section of this markdown file instead of printing.
    #[arg(long)]
    docs: Option<PathBuf>,
    /// Result files (JSON, one result each, as `--json` prints). Several runs
    /// of one scenario against one target are merged (samples pooled).
    #[arg(required = true)]
    files: Vec<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let res = match cli.command {
        Some(Command::Report(args)) => report(args).map(|()| ExitCode::SUCCESS),
        None => run(cli.run),
    };
    match res {
        Ok(code) => code,
        Err(e) => {
            eprintln!("crust-bench: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn report(args: ReportArgs) -> anyhow::Result<()> {
    let mut results = Vec::new();
    for f in &args.files {
        let text =
            std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
        let r: RunResult =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", f.display()))?;
        results.push(r);
    }
    let results = report::merge(results);
    let mut md = String::new();
    for n in &args.note {
        md.push_str(n);
        md.push_str("\n\n");
    }
    md.push_str(&report::markdown(&results, &args.a, &args.b));
    match args.docs {
        None => print!("{md}"),
        Some(path) => {
            let doc = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            let Some(new) = report::replace_results(&doc, &md) else {
                bail!(
                    "{} has no {} … {} section",
                    path.display(),
                    report::DOCS_START,
                    report::DOCS_END
                );
            };
            std::fs::write(&path, new).with_context(|| format!("writing {}", path.display()))?;
        }
    }
    Ok(())
}

fn run_id() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{:x}{:05x}", std::process::id(), nanos & 0xfffff)
}

fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let Some(scenario) = args.scenario.clone() else {
        bail!("--scenario is required (see --help)");
    };
    if !CRI_SCENARIOS.contains(&scenario.as_str()) && !FLOOR_SCENARIOS.contains(&scenario.as_str())
    {
        bail!("unknown scenario {scenario:?} (see --help)");
    }
    if args.count == 0 {
        bail!("--count must be at least 1");
    }
    let started = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let run_id = run_id();
    let (work_dir, own_work_dir) = match &args.work_dir {
        Some(d) => (d.clone(), false),
        None => (
            std::env::temp_dir().join(format!("crust-bench-{run_id}")),
            true,
        ),
    };
    std::fs::create_dir_all(&work_dir)
        .with_context(|| format!("creating {}", work_dir.display()))?;

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("tokio runtime")?;
    let (runtime, res, rec) = rt.block_on(execute(&args, &scenario, &run_id, &work_dir));
    if own_work_dir {
        let _ = std::fs::remove_dir_all(&work_dir);
    }

    let (status, message) = match &res {
        Ok(()) => (Status::Ok, String::new()),
        Err(e @ BenchError::Unsupported { .. }) => (Status::Unsupported, e.to_string()),
        Err(e) => (Status::Error, e.to_string()),
    };
    let parallel = args.parallel.max(1);
    let result = RunResult {
        // Only where the parallelism changes what is measured; for density,
        // list and stats it is how the set-up runs.
        label: if parallel > 1 && matches!(scenario.as_str(), "pod" | "pod-container") {
            format!("{scenario}-p{parallel}")
        } else {
            scenario.clone()
        },
        scenario: scenario.clone(),
        target: args
            .target
            .clone()
            .or_else(|| {
                FLOOR_SCENARIOS
                    .contains(&scenario.as_str())
                    .then(|| "floor".to_string())
            })
            .unwrap_or_else(|| runtime.name.clone()),
        endpoint: args.endpoint.clone().unwrap_or_default(),
        runtime,
        count: args.count,
        parallel,
        started_at: report::rfc3339(started),
        status,
        message,
        operations: rec.operations(),
        figures: rec.figures(),
        machine: Machine::detect(),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&result)?);
    } else {
        print!("{}", result.to_text());
    }
    Ok(if status == Status::Error {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

async fn execute(
    args: &RunArgs,
    scenario: &str,
    run_id: &str,
    work_dir: &std::path::Path,
) -> (Runtime, Result<(), BenchError>, Recorder) {
    if FLOOR_SCENARIOS.contains(&scenario) {
        let rec = Recorder::default();
        let res = match scenario {
            "floor-unshare" => floor::unshare(args.count, &rec),
            _ => match &args.bundle {
                Some(b) => floor::runc(args.count, b, work_dir, &rec),
                None => Err(BenchError::Invalid("floor-runc needs --bundle".to_string())),
            },
        };
        return (Runtime::default(), res, rec);
    }
    let Some(endpoint) = &args.endpoint else {
        return (
            Runtime::default(),
            Err(BenchError::Invalid(format!("{scenario} needs --endpoint"))),
            Recorder::default(),
        );
    };
    let timeout = Duration::from_secs(args.timeout.max(1));
    let cri = match Cri::connect(endpoint, timeout).await {
        Ok(c) => c,
        Err(e) => return (Runtime::default(), Err(e), Recorder::default()),
    };
    let runtime = match cri.version().await {
        Ok((v, _)) => Runtime {
            name: v.runtime_name,
            version: v.runtime_version,
        },
        Err(e) => return (Runtime::default(), Err(e), Recorder::default()),
    };
    let ctx = Ctx::new(
        cri,
        Settings {
            scenario: scenario.to_string(),
            count: args.count,
            parallel: args.parallel.max(1),
            image: args.image.clone(),
            pods: args.pods.max(1),
            daemon_pid: args.daemon_pid,
            shim_name: args.shim_name.clone(),
            shim_match: args.shim_match.clone(),
            work_dir: work_dir.to_path_buf(),
            run_id: run_id.to_string(),
            bytes: args.mib.max(1) * 1024 * 1024,
        },
    );
    let res = ctx.run().await;
    (runtime, res, ctx.rec)
}

//! Reading the process table: who the runtime's shims are and how much memory
//! the daemon and each shim hold. Everything goes through [`ProcFs`], rooted
//! at `/proc` in real runs and at a directory of fake files in unit tests.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// One process as `/proc` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcInfo {
    pub pid: u32,
    pub ppid: u32,
    /// The state letter of `stat` (`R`, `S`, `Z` for a zombie, ...).
    pub state: char,
    /// Base name of `argv[0]` (or `comm` when the cmdline is empty).
    pub name: String,
    pub cmdline: Vec<String>,
}

/// Memory of one process, in KiB.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Memory {
    /// Resident set size (`VmRSS`): counts shared library pages in full.
    pub rss_kib: u64,
    /// Proportional set size (`Pss` in smaps_rollup): shared pages split among
    /// their users, so it adds up across identical shims. 0 when unreadable.
    pub pss_kib: u64,
}

/// A `/proc`-shaped directory.
#[derive(Debug, Clone)]
pub struct ProcFs {
    root: PathBuf,
}

impl Default for ProcFs {
    fn default() -> Self {
        ProcFs::new("/proc")
    }
}

impl ProcFs {
    pub fn new(root: impl Into<PathBuf>) -> ProcFs {
        ProcFs { root: root.into() }
    }

    fn read(&self, pid: u32, file: &str) -> Option<String> {
        std::fs::read_to_string(self.root.join(pid.to_string()).join(file)).ok()
    }

    /// One process, or `None` if it is gone (or was never there).
    pub fn process(&self, pid: u32) -> Option<ProcInfo> {
        let stat = self.read(pid, "stat")?;
        // "pid (comm) state ppid ..." — comm may hold spaces and parentheses,
        // so the fields after it start after the *last* ')'.
        let open = stat.find('(')?;
        let close = stat.rfind(')')?;
        let comm = stat.get(open + 1..close)?.to_string();
        let mut rest = stat.get(close + 1..)?.split_whitespace();
        let state = rest.next()?.chars().next()?;
        let ppid = rest.next()?.parse().ok()?;
        let cmdline: Vec<String> = self
            .read(pid, "cmdline")
            .unwrap_or_default()
            .split('\0')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect();
        let name = cmdline
            .first()
            .map(|a| a.rsplit('/').next().unwrap_or(a).to_string())
            .unwrap_or(comm);
        Some(ProcInfo {
            pid,
            ppid,
            state,
            name,
            cmdline,
        })
    }

    /// Every process now (processes that exit while we read are skipped).
    pub fn processes(&self) -> Vec<ProcInfo> {
        let Ok(dir) = std::fs::read_dir(&self.root) else {
            return Vec::new();
        };
        let mut out: Vec<ProcInfo> = dir
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .filter_map(|pid| self.process(pid))
            .collect();
        out.sort_by_key(|p| p.pid);
        out
    }

    pub fn memory(&self, pid: u32) -> Option<Memory> {
        let rss_kib = kib_field(&self.read(pid, "status")?, "VmRSS:")?;
        let pss_kib = self
            .read(pid, "smaps_rollup")
            .and_then(|s| kib_field(&s, "Pss:"))
            .unwrap_or(0);
        Some(Memory { rss_kib, pss_kib })
    }
}

/// The value of a `Key:   1234 kB` line.
fn kib_field(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// `roots` and every process below them, each once.
pub fn with_descendants(procs: &[ProcInfo], roots: &[u32]) -> Vec<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for p in procs {
        children.entry(p.ppid).or_default().push(p.pid);
    }
    let mut seen: HashSet<u32> = HashSet::new();
    let mut stack: Vec<u32> = roots.to_vec();
    let mut out = Vec::new();
    while let Some(pid) = stack.pop() {
        if !seen.insert(pid) {
            continue;
        }
        out.push(pid);
        if let Some(c) = children.get(&pid) {
            stack.extend(c);
        }
    }
    out.sort_unstable();
    out
}

/// How to recognise a runtime's shims in the process table.
#[derive(Debug, Clone)]
pub struct ShimQuery<'a> {
    /// Base name of the shim binary (`containerd-shim-runc-v2`, `crust-shim`).
    pub name: &'a str,
    /// The runtime daemon; a shim is its child, its descendant, or an orphan
    /// re-parented to PID 1 (shims daemonise so that they outlive the daemon).
    pub daemon_pid: Option<u32>,
    /// When set, the shim must mention this text in its command line, its
    /// environment or its working directory (e.g. the runtime's private
    /// directory, which containerd passes as `-address` and `hack/bench` puts
    /// in the daemons' environment), so shims of other runtimes on the machine
    /// are not counted.
    pub marker: Option<&'a str>,
    /// Processes that existed before the measurement started.
    pub exclude: &'a HashSet<u32>,
}

impl ProcFs {
    /// Whether `pid`'s command line, environment or working directory holds `text`.
    pub fn mentions(&self, pid: u32, text: &str) -> bool {
        let base = self.root.join(pid.to_string());
        let holds = |file: &str| {
            std::fs::read(base.join(file))
                .map(|b| String::from_utf8_lossy(&b).contains(text))
                .unwrap_or(false)
        };
        holds("cmdline")
            || holds("environ")
            || std::fs::read_link(base.join("cwd"))
                .map(|p| p.to_string_lossy().contains(text))
                .unwrap_or(false)
    }

    /// The shims among the processes now, by PID.
    pub fn find_shims(&self, q: &ShimQuery<'_>) -> Vec<ProcInfo> {
        let procs = self.processes();
        let parent: HashMap<u32, u32> = procs.iter().map(|p| (p.pid, p.ppid)).collect();
        let descends_from_daemon = |mut pid: u32| {
            let Some(daemon) = q.daemon_pid else {
                return false;
            };
            // Bounded walk: a corrupt or racing table must not loop forever.
            for _ in 0..64 {
                match parent.get(&pid) {
                    Some(&pp) if pp == daemon => return true,
                    Some(&pp) if pp > 1 => pid = pp,
                    _ => return false,
                }
            }
            false
        };
        procs
            .iter()
            .filter(|p| p.name == q.name && p.state != 'Z')
            .filter(|p| !q.exclude.contains(&p.pid))
            .filter(|p| q.marker.is_none_or(|m| self.mentions(p.pid, m)))
            .filter(|p| p.ppid == 1 || Some(p.ppid) == q.daemon_pid || descends_from_daemon(p.pid))
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct FakeProc {
        dir: tempfile::TempDir,
    }

    impl FakeProc {
        fn new() -> FakeProc {
            let dir = tempfile::tempdir().expect("tempdir");
            FakeProc { dir }
        }

        fn add(&self, pid: u32, ppid: u32, comm: &str, argv: &[&str], rss_kib: u64) {
            let d = self.dir.path().join(pid.to_string());
            std::fs::create_dir_all(&d).expect("mkdir");
            std::fs::write(
                d.join("stat"),
                format!("{pid} ({comm}) S {ppid} {pid} {pid} 0 -1 4194560 0 0"),
            )
            .expect("stat");
            let mut cmd = argv.join("\0");
            if !cmd.is_empty() {
                cmd.push('\0');
            }
            std::fs::write(d.join("cmdline"), cmd).expect("cmdline");
            std::fs::write(
                d.join("status"),
                format!("Name:\t{comm}\nVmPeak:\t 9999 kB\nVmRSS:\t {rss_kib} kB\nThreads:\t1\n"),
            )
            .expect("status");
            std::fs::write(
                d.join("smaps_rollup"),
                format!(
                    "00400000-7ffff [rollup]\nRss:  {rss_kib} kB\nPss:  {} kB\n",
                    rss_kib / 2
                ),
            )
            .expect("smaps");
        }

        fn fs(&self) -> ProcFs {
            ProcFs::new(self.dir.path())
        }
    }

    #[test]
    fn reads_ppid_name_cmdline_and_memory() {
        let f = FakeProc::new();
        f.add(
            42,
            7,
            "weird) name (x",
            &["/usr/bin/containerd", "--config", "c.toml"],
            6200,
        );
        f.add(43, 2, "kworker/0:1", &[], 0);
        let fs = f.fs();
        let p = fs.process(42).expect("process");
        assert_eq!(p.ppid, 7);
        assert_eq!(p.name, "containerd");
        assert_eq!(p.cmdline, vec!["/usr/bin/containerd", "--config", "c.toml"]);
        assert_eq!(fs.process(43).expect("kthread").name, "kworker/0:1");
        assert_eq!(
            fs.memory(42),
            Some(Memory {
                rss_kib: 6200,
                pss_kib: 3100
            })
        );
        assert_eq!(fs.process(99), None);
        assert_eq!(fs.memory(99), None);
        assert_eq!(
            fs.processes().iter().map(|p| p.pid).collect::<Vec<_>>(),
            vec![42, 43]
        );
    }

    #[test]
    fn finds_this_daemons_new_shims_only() {
        let f = FakeProc::new();
        let shim = "containerd-shim-runc-v2";
        f.add(100, 1, "containerd", &["/usr/bin/containerd"], 60_000);
        // Ours: orphans (daemonised) and a child of the daemon.
        f.add(
            201,
            1,
            "containerd-shim",
            &[
                &format!("/usr/bin/{shim}"),
                "-namespace",
                "k8s.io",
                "-address",
                "/tmp/b/c.sock",
            ],
            13_000,
        );
        f.add(
            202,
            100,
            "containerd-shim",
            &[shim, "-address", "/tmp/b/c.sock"],
            12_000,
        );
        // A grandchild of the daemon through a helper.
        f.add(300, 100, "helper", &["helper"], 1);
        f.add(
            203,
            300,
            "containerd-shim",
            &[shim, "-address", "/tmp/b/c.sock"],
            11_000,
        );
        // Not ours: another daemon's shim, an old one, a child of a container.
        f.add(
            204,
            1,
            "containerd-shim",
            &[shim, "-address", "/run/other.sock"],
            13_000,
        );
        f.add(
            205,
            1,
            "containerd-shim",
            &[shim, "-address", "/tmp/b/c.sock"],
            13_000,
        );
        f.add(
            206,
            555,
            "containerd-shim",
            &[shim, "-address", "/tmp/b/c.sock"],
            13_000,
        );
        f.add(207, 201, "sleep", &["sleep", "3600"], 500);
        f.add(211, 207, "sh", &["sh"], 100);
        // A zombie shim: no memory, not counted.
        f.add(212, 1, "crust-shim", &[], 0);
        let stat = f.dir.path().join("212/stat");
        let zombie = std::fs::read_to_string(&stat)
            .expect("stat")
            .replace(") S ", ") Z ");
        std::fs::write(&stat, zombie).expect("stat");
        std::fs::write(f.dir.path().join("212/environ"), "CRUST_BENCH_RUN=/tmp/b").expect("env");
        // Marked by environment or working directory instead of argv.
        f.add(208, 1, "crust-shim", &["crust-shim"], 900);
        f.add(209, 1, "crust-shim", &["crust-shim"], 900);
        f.add(210, 1, "crust-shim", &["crust-shim"], 900);
        std::fs::write(
            f.dir.path().join("208/environ"),
            "A=1\0CRUST_BENCH_RUN=/tmp/b\0",
        )
        .expect("environ");
        std::os::unix::fs::symlink("/tmp/b/state/pod1", f.dir.path().join("209/cwd")).expect("cwd");
        let fs = f.fs();
        let exclude: HashSet<u32> = [205].into();
        let found = fs.find_shims(&ShimQuery {
            name: shim,
            daemon_pid: Some(100),
            marker: Some("/tmp/b/c.sock"),
            exclude: &exclude,
        });
        assert_eq!(
            found.iter().map(|p| p.pid).collect::<Vec<_>>(),
            vec![201, 202, 203]
        );
        // Without the command-line filter the other daemon's orphan counts too.
        let found = fs.find_shims(&ShimQuery {
            name: shim,
            daemon_pid: Some(100),
            marker: None,
            exclude: &exclude,
        });
        assert_eq!(
            found.iter().map(|p| p.pid).collect::<Vec<_>>(),
            vec![201, 202, 203, 204]
        );
        let found = fs.find_shims(&ShimQuery {
            name: "crust-shim",
            daemon_pid: None,
            marker: Some("/tmp/b"),
            exclude: &exclude,
        });
        assert_eq!(
            found.iter().map(|p| p.pid).collect::<Vec<_>>(),
            vec![208, 209]
        );
        assert_eq!(
            with_descendants(&fs.processes(), &[201, 202]),
            vec![201, 202, 207, 211]
        );
    }
}

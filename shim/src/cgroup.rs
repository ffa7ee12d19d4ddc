//! Reading a container's cgroup v1 statistics (and OOM kills) straight from cgroupfs,
//! and priming the kernel's cgroup migration lock before runc needs it.

use std::{
    collections::HashMap,
    fs,
    path::{Path, PathBuf},
    sync::atomic::{AtomicBool, Ordering},
};

use containerd_shim_protos::cgroups::metrics::{
    CPUStat, CPUUsage, MemoryEntry, MemoryOomControl, MemoryStat, Metrics, PidsStat, Throttle,
};

use crust_cgroups::ROOT;

/// The cgroup directories of one process, by v1 controller name.
#[derive(Debug, Clone, Default)]
pub struct Cgroups {
    dirs: HashMap<String, PathBuf>,
}

impl Cgroups {
    /// Reads `/proc/<pid>/cgroup`.
    pub fn of_pid(pid: u32) -> std::io::Result<Self> {
        let text = fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
        Ok(Self::parse(&text, Path::new(ROOT)))
    }

    /// The cgroup directories of the OCI `cgroupsPath` in a bundle's `config.json`
    /// (cgroupfs form only), for a process gone before its `/proc` entry was read.
    pub fn of_bundle(bundle: &Path) -> Option<Self> {
        let spec: oci_spec::runtime::Spec =
            serde_json::from_slice(&fs::read(bundle.join("config.json")).ok()?).ok()?;
        let path = spec.linux().as_ref()?.cgroups_path().clone()?;
        let path = path.to_str()?;
        if path.contains(':') {
            return None; // systemd's slice:prefix:name
        }
        let text: String = fs::read_dir(ROOT)
            .ok()?
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .map(|ctrl| format!("0:{ctrl}:{path}\n"))
            .collect();
        Some(Self::parse(&text, Path::new(ROOT)))
    }

    fn parse(text: &str, root: &Path) -> Self {
        let mut dirs = HashMap::new();
        for line in text.lines() {
            let mut parts = line.splitn(3, ':');
            let (Some(_), Some(ctrls), Some(path)) = (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            let rel = path.trim_start_matches('/');
            for c in ctrls
                .split(',')
                .filter(|c| !c.is_empty() && !c.contains('='))
            {
                dirs.insert(c.to_string(), root.join(c).join(rel));
            }
        }
        Cgroups { dirs }
    }

    fn file(&self, ctrl: &str, name: &str) -> Option<String> {
        fs::read_to_string(self.dirs.get(ctrl)?.join(name)).ok()
    }

    fn num(&self, ctrl: &str, name: &str) -> u64 {
        self.file(ctrl, name)
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    }

    fn kv(&self, ctrl: &str, name: &str) -> HashMap<String, u64> {
        self.file(ctrl, name)
            .map(|s| parse_kv(&s))
            .unwrap_or_default()
    }

    /// The `oom_kill` counter of the memory cgroup (kernel ≥ 4.13), if readable.
    pub fn oom_kills(&self) -> Option<u64> {
        crust_cgroups::oom::kills_v1(self.dirs.get("memory")?)
    }

    /// Whether the memory cgroup directory still exists.
    pub fn memory_exists(&self) -> bool {
        self.dirs.get("memory").is_some_and(|d| d.exists())
    }

    /// An eventfd the kernel signals on every OOM in the memory cgroup (v1
    /// `cgroup.event_control`), and when the cgroup goes away.
    pub fn oom_eventfd(&self) -> std::io::Result<std::os::fd::OwnedFd> {
        use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
        let dir = self
            .dirs
            .get("memory")
            .ok_or_else(|| std::io::Error::other("no memory cgroup"))?;
        // SAFETY: plain syscall; the result is checked before it is owned.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor nobody else owns.
        let efd = unsafe { OwnedFd::from_raw_fd(fd) };
        let ctl = fs::File::open(dir.join("memory.oom_control"))?;
        fs::write(
            dir.join("cgroup.event_control"),
            format!("{} {}", efd.as_raw_fd(), ctl.as_raw_fd()),
        )?;
        Ok(efd)
    }

    /// containerd's cgroup v1 `Metrics` for this process's cgroups.
    pub fn metrics(&self) -> Metrics {
        let mut m = Metrics::new();

        let st = self.kv("memory", "memory.stat");
        let g = |k: &str| st.get(k).copied().unwrap_or(0);
        let entry = |prefix: &str| MemoryEntry {
            usage: self.num("memory", &format!("{prefix}usage_in_bytes")),
            limit: self.num("memory", &format!("{prefix}limit_in_bytes")),
            max: self.num("memory", &format!("{prefix}max_usage_in_bytes")),
            failcnt: self.num("memory", &format!("{prefix}failcnt")),
            ..Default::default()
        };
        m.memory = Some(MemoryStat {
            cache: g("cache"),
            rss: g("rss"),
            rss_huge: g("rss_huge"),
            mapped_file: g("mapped_file"),
            dirty: g("dirty"),
            writeback: g("writeback"),
            pg_pg_in: g("pgpgin"),
            pg_pg_out: g("pgpgout"),
            pg_fault: g("pgfault"),
            pg_maj_fault: g("pgmajfault"),
            inactive_anon: g("inactive_anon"),
            active_anon: g("active_anon"),
            inactive_file: g("inactive_file"),
            active_file: g("active_file"),
            unevictable: g("unevictable"),
            hierarchical_memory_limit: g("hierarchical_memory_limit"),
            hierarchical_swap_limit: g("hierarchical_memsw_limit"),
            total_cache: g("total_cache"),
            total_rss: g("total_rss"),
            total_rss_huge: g("total_rss_huge"),
            total_mapped_file: g("total_mapped_file"),
            total_dirty: g("total_dirty"),
            total_writeback: g("total_writeback"),
            total_pg_pg_in: g("total_pgpgin"),
            total_pg_pg_out: g("total_pgpgout"),
            total_pg_fault: g("total_pgfault"),
            total_pg_maj_fault: g("total_pgmajfault"),
            total_inactive_anon: g("total_inactive_anon"),
            total_active_anon: g("total_active_anon"),
            total_inactive_file: g("total_inactive_file"),
            total_active_file: g("total_active_file"),
            total_unevictable: g("total_unevictable"),
            usage: Some(entry("memory.")).into(),
            swap: Some(entry("memory.memsw.")).into(),
            kernel: Some(entry("memory.kmem.")).into(),
            kernel_tcp: Some(entry("memory.kmem.tcp.")).into(),
            ..Default::default()
        })
        .into();

        if let Some(text) = self.file("memory", "memory.oom_control") {
            let kv = parse_kv(&text);
            let g = |k: &str| kv.get(k).copied().unwrap_or(0);
            m.memory_oom_control = Some(MemoryOomControl {
                oom_kill_disable: g("oom_kill_disable"),
                under_oom: g("under_oom"),
                oom_kill: g("oom_kill"),
                ..Default::default()
            })
            .into();
        }

        // cpuacct.stat counts USER_HZ ticks.
        let hz = match unsafe { libc::sysconf(libc::_SC_CLK_TCK) } {
            n if n > 0 => n as u64,
            _ => 100,
        };
        let acct = self.kv("cpuacct", "cpuacct.stat");
        let per_cpu = self
            .file("cpuacct", "cpuacct.usage_percpu")
            .map(|s| {
                s.split_whitespace()
                    .filter_map(|v| v.parse().ok())
                    .collect()
            })
            .unwrap_or_default();
        let thr = self.kv("cpu", "cpu.stat");
        m.cpu = Some(CPUStat {
            usage: Some(CPUUsage {
                total: self.num("cpuacct", "cpuacct.usage"),
                user: acct.get("user").copied().unwrap_or(0) * 1_000_000_000 / hz,
                kernel: acct.get("system").copied().unwrap_or(0) * 1_000_000_000 / hz,
                per_cpu,
                ..Default::default()
            })
            .into(),
            throttling: Some(Throttle {
                periods: thr.get("nr_periods").copied().unwrap_or(0),
                throttled_periods: thr.get("nr_throttled").copied().unwrap_or(0),
                throttled_time: thr.get("throttled_time").copied().unwrap_or(0),
                ..Default::default()
            })
            .into(),
            ..Default::default()
        })
        .into();

        if self.dirs.contains_key("pids") {
            m.pids = Some(PidsStat {
                current: self.num("pids", "pids.current"),
                limit: self.num("pids", "pids.max"), // "max" reads as 0 = unlimited
                ..Default::default()
            })
            .into();
        }
        m
    }
}

/// Whether a priming write is under way (one at a time is enough: they share the wait).
static PRIMING: AtomicBool = AtomicBool::new(false);

/// Starts, on a thread of its own, the wait that runc's first cgroup migration would
/// otherwise do alone.
///
/// Every write to a `cgroup.procs` file takes the kernel's global cgroup threadgroup
/// lock for writing, and unless that lock was taken in the last grace period or so
/// (or a hierarchy is mounted with `favordynmods`), taking it first waits out a full
/// RCU grace period: 10–15 ms on this kind of machine. runc 1.1 moves each container's
/// init — and each exec — into the container's cgroups about 8 ms after it starts, so
/// that wait used to be a third of every container start. A write of `0` to the shim's
/// own `cgroup.procs` moves the shim to the cgroup it is already in (nothing changes)
/// but begins the same wait now, alongside runc's start-up; runc's write then finds the
/// grace period under way or already passed. Call it right before launching runc.
///
/// While it waits, the kernel holds `cgroup_mutex` (as for runc's own write): cgroup
/// creation, removal and migration on the host wait too — for a wait runc would
/// otherwise have caused moments later. The cgroup written to is one whose
/// `cgroup.procs` lists this process, so a path misread (another cgroup namespace, a
/// mount rooted elsewhere) can never move the shim: nothing is written then. Nothing
/// depends on it: a failed write only costs the time it would have saved.
pub fn prime_migration_lock() {
    if PRIMING.swap(true, Ordering::AcqRel) {
        return;
    }
    let spawned = std::thread::Builder::new()
        .name("cgroup-prime".into())
        .stack_size(64 * 1024)
        .spawn(|| {
            if let Err(e) = prime() {
                log::debug!("priming the cgroup migration lock: {e}");
            }
            PRIMING.store(false, Ordering::Release);
        });
    if spawned.is_err() {
        PRIMING.store(false, Ordering::Release);
    }
}

fn prime() -> std::io::Result<()> {
    use std::io::Write;
    let text = fs::read_to_string("/proc/self/cgroup")?;
    let me = std::process::id().to_string();
    for procs in own_procs_files(&text, Path::new(ROOT)) {
        let listed = fs::read_to_string(&procs)
            .map(|t| t.lines().any(|l| l.trim() == me))
            .unwrap_or(false);
        if listed {
            return fs::OpenOptions::new()
                .write(true)
                .open(&procs)?
                .write_all(b"0");
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::NotFound,
        "no cgroup.procs that lists this process",
    ))
}

/// The `cgroup.procs` files that may be this process's own, from its
/// `/proc/self/cgroup`: each v1 controller hierarchy mounted under `root` (as
/// [`Cgroups::parse`] reads them), then the v2 one. The caller confirms the process is
/// listed before it writes.
fn own_procs_files(proc_self_cgroup: &str, root: &Path) -> Vec<PathBuf> {
    let v1 = Cgroups::parse(proc_self_cgroup, root).dirs.into_values();
    let v2 = proc_self_cgroup
        .lines()
        .filter_map(|l| l.strip_prefix("0::"))
        .map(|p| p.trim_start_matches('/'))
        .flat_map(|rel| [root.join("unified").join(rel), root.join(rel)]);
    v1.chain(v2)
        // Never climb out of a hierarchy's mount.
        .filter(|d| {
            !d.components()
                .any(|c| matches!(c, std::path::Component::ParentDir))
        })
        .map(|d| d.join("cgroup.procs"))
        .filter(|p| p.is_file())
        .collect()
}

use crust_cgroups::files::flat_keyed as parse_kv;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_v1_proc_cgroup() {
        let text = "12:pids:/crust/pod1/c1\n\
                    4:cpu,cpuacct:/crust/pod1/c1\n\
                    3:memory:/crust/pod1/c1\n\
                    1:name=systemd:/x\n\
                    0::/\n";
        let cg = Cgroups::parse(text, Path::new("/r"));
        assert_eq!(cg.dirs["memory"], Path::new("/r/memory/crust/pod1/c1"));
        assert_eq!(cg.dirs["cpuacct"], Path::new("/r/cpuacct/crust/pod1/c1"));
        assert_eq!(cg.dirs["cpu"], Path::new("/r/cpu/crust/pod1/c1"));
        assert!(!cg.dirs.contains_key("name=systemd"));
    }

    #[test]
    fn a_bundle_names_the_cgroup_of_a_process_already_gone() {
        let dir = tempfile::tempdir().unwrap();
        let spec = r#"{"linux":{"cgroupsPath":"/crust/pod1/c1"}}"#;
        fs::write(dir.path().join("config.json"), spec).unwrap();
        let cg = Cgroups::of_bundle(dir.path()).expect("a cgroupfs path");
        if Path::new(ROOT).join("memory").is_dir() {
            assert_eq!(
                cg.dirs["memory"],
                Path::new(ROOT).join("memory/crust/pod1/c1")
            );
        }
        let systemd = r#"{"linux":{"cgroupsPath":"kubepods.slice:crust:c1"}}"#;
        fs::write(dir.path().join("config.json"), systemd).unwrap();
        assert!(Cgroups::of_bundle(dir.path()).is_none());
    }

    #[test]
    fn primes_through_its_own_cgroup_only() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        for d in ["pids/a/b", "memory/m", "unified/u", "pids"] {
            fs::create_dir_all(r.join(d)).unwrap();
            fs::write(r.join(d).join("cgroup.procs"), "").unwrap();
        }
        // v1: each controller hierarchy that is mounted, at the process's own path,
        // then v2; named hierarchies never.
        let v1 = "9:name=systemd:/s\n8:blkio:/x\n5:pids:/a/b\n4:memory:/m\n0::/u\n";
        let found = own_procs_files(v1, r);
        assert_eq!(
            found.last(),
            Some(&r.join("unified/u/cgroup.procs")),
            "v2 last"
        );
        let mut v1_found = found[..found.len() - 1].to_vec();
        v1_found.sort();
        assert_eq!(
            v1_found,
            [
                r.join("memory/m/cgroup.procs"),
                r.join("pids/a/b/cgroup.procs")
            ]
        );
        // A path that is not there (another cgroup namespace, say) is never guessed at,
        // and a path that climbs is not even tried.
        let elsewhere = "5:pids:/nope\n4:memory:/nope\n0::/nope\n";
        assert!(own_procs_files(elsewhere, r).is_empty());
        assert!(own_procs_files("5:pids:/a/../..\n5:pids:/..\n", r).is_empty());
        // Pure v2.
        let v2 = tempfile::tempdir().unwrap();
        fs::create_dir_all(v2.path().join("k/p")).unwrap();
        fs::write(v2.path().join("k/p/cgroup.procs"), "").unwrap();
        assert_eq!(
            own_procs_files("0::/k/p\n", v2.path()),
            [v2.path().join("k/p/cgroup.procs")]
        );
    }

    #[test]
    fn priming_leaves_the_process_where_it_is() {
        let before = fs::read_to_string("/proc/self/cgroup").unwrap();
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            prime().expect("root finds and writes its own cgroup.procs");
            assert_eq!(fs::read_to_string("/proc/self/cgroup").unwrap(), before);
        }
        prime_migration_lock();
        // Wait for the priming thread (it may also have found nothing to write to).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while PRIMING.load(Ordering::Acquire) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(!PRIMING.load(Ordering::Acquire), "priming never finished");
        assert_eq!(fs::read_to_string("/proc/self/cgroup").unwrap(), before);
    }

    #[test]
    fn reads_stats_from_files() {
        let dir = tempfile::tempdir().unwrap();
        let mem = dir.path().join("memory/c");
        let cpu = dir.path().join("cpuacct/c");
        fs::create_dir_all(&mem).unwrap();
        fs::create_dir_all(&cpu).unwrap();
        fs::write(mem.join("memory.usage_in_bytes"), "4096\n").unwrap();
        fs::write(mem.join("memory.limit_in_bytes"), "8192\n").unwrap();
        fs::write(mem.join("memory.stat"), "rss 10\ntotal_inactive_file 7\n").unwrap();
        fs::write(
            mem.join("memory.oom_control"),
            "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
        )
        .unwrap();
        fs::write(cpu.join("cpuacct.usage"), "123456\n").unwrap();
        fs::write(cpu.join("cpuacct.usage_percpu"), "100 200 \n").unwrap();
        let cg = Cgroups::parse("3:memory:/c\n4:cpuacct:/c\n", dir.path());
        assert_eq!(cg.oom_kills(), Some(2));
        let m = cg.metrics();
        assert_eq!(m.memory.usage.usage, 4096);
        assert_eq!(m.memory.usage.limit, 8192);
        assert_eq!(m.memory.rss, 10);
        assert_eq!(m.memory.total_inactive_file, 7);
        assert_eq!(m.cpu.usage.total, 123456);
        assert_eq!(m.cpu.usage.per_cpu, vec![100, 200]);
        assert_eq!(m.memory_oom_control.oom_kill, 2);
    }
}

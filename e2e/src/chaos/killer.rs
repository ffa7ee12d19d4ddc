//! The kills of a chaos run: at random moments, SIGKILL crustd (and start it again after a
//! random pause) or the shim of a random pod of this crustd. Only this run's crustd and
//! the shims serving its pods (found through its own pod dirs) are ever signalled.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::Shared;
use super::facts::{Node, names};
use super::model::short;
use super::rng::Rng;
use crate::Crustd;

/// The random stream of the killer (the workers use 1..=N).
const STREAM: u64 = 1000;

/// Kills until the run stops; returns the crustd, running.
pub async fn run(sh: Arc<Shared>, mut crustd: Crustd, seed: u64) -> Crustd {
    let mut rng = Rng::derive(seed, STREAM);
    loop {
        // Every round draws the same numbers whatever it does, so that a seed replays
        // the same schedule.
        let wait = Duration::from_millis(rng.between(1500, 8000));
        let crustd_turn = rng.chance(35);
        let pause = Duration::from_millis(rng.below(1500));
        let which = rng.next_u64();
        if sh.sleep_unless_stopped(wait).await {
            break;
        }
        if crustd_turn {
            // Odd while crustd is down: a call begun or ended meanwhile is excused.
            sh.kills.epoch.fetch_add(1, Ordering::SeqCst);
            if let Err(e) = crustd.crash().await {
                sh.violation("available", format!("SIGKILL of crustd: {e:#}"));
            }
            sh.kills.crustd.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(pause).await;
            let restarted = crustd.restart().await;
            sh.kills.epoch.fetch_add(1, Ordering::SeqCst);
            if let Err(e) = restarted {
                sh.violation("available", format!("crustd did not start again: {e:#}"));
                sh.stop.store(true, Ordering::SeqCst);
                break;
            }
        } else {
            let shims = shims_of(&sh.node);
            if shims.is_empty() {
                continue;
            }
            let (pod, pid) = &shims[(which % shims.len() as u64) as usize];
            // The model first: an answer that follows the kill must find it known.
            sh.model().shim_lost(pod);
            if kill(Pid::from_raw(*pid), Signal::SIGKILL).is_ok() {
                sh.kills.shims.fetch_add(1, Ordering::SeqCst);
                eprintln!("chaos: SIGKILL shim {pid} of pod {}", short(pod));
            }
        }
    }
    crustd
}

/// (pod id, pid) of every live shim of this crustd's pods: the pid from the pod dir's
/// `shim.pid`, checked against the process's command line (`crust-shim … -id <pod>`
/// with this crustd's events socket), so a reused pid is never signalled.
pub fn shims_of(node: &Node) -> Vec<(String, i32)> {
    let mut out = Vec::new();
    for pod in names(&node.state_dir.join("pods")) {
        let Some(pid) = std::fs::read_to_string(node.pod_dir(&pod).join("shim.pid"))
            .ok()
            .and_then(|p| p.trim().parse::<i32>().ok())
        else {
            continue;
        };
        if is_shim_of(pid, &pod, &node.state_dir) {
            out.push((pod, pid));
        }
    }
    out
}

pub(super) fn is_shim_of(pid: i32, pod: &str, state_dir: &Path) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let args: Vec<String> = cmdline
        .split(|b| *b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit(')')
                .next()
                .map(|r| r.trim_start().starts_with('Z'))
        })
        .unwrap_or(true);
    !zombie
        && args.first().is_some_and(|a| a.ends_with("crust-shim"))
        && args.windows(2).any(|w| w[0] == "-id" && w[1] == pod)
        && args
            .iter()
            .any(|a| a.contains(&*state_dir.to_string_lossy()))
}

//! What the chaos client was told: the pods and containers crustd said it made, the states
//! each may be in now, and what crustd said it removed. Every answer and every kill
//! narrows or widens these sets; every observation (a status, a listing) must fall inside
//! them, or it is a violation.
//!
//! A state may change without an answer only in the ways listed in [`Model::closure`]: a
//! short container exits, a pod whose shim was SIGKILLed goes NOTREADY and its running
//! containers UNKNOWN or EXITED. A SIGKILLed crustd changes nothing: records are durable
//! and containers run in their shims.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::PathBuf;

use crate::cri;

/// A set of CRI states (pod or container), as bits of their enum numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct States(u8);

impl States {
    pub fn of(states: &[i32]) -> States {
        States(states.iter().fold(0, |m, s| m | (1 << s)))
    }

    pub fn contains(self, state: i32) -> bool {
        (0..8).contains(&state) && self.0 & (1 << state) != 0
    }

    pub fn union(self, other: States) -> States {
        States(self.0 | other.0)
    }

    fn each(self) -> impl Iterator<Item = i32> {
        (0..8).filter(move |s| self.contains(*s))
    }
}

pub const CREATED: i32 = cri::ContainerState::ContainerCreated as i32;
pub const RUNNING: i32 = cri::ContainerState::ContainerRunning as i32;
pub const EXITED: i32 = cri::ContainerState::ContainerExited as i32;
pub const UNKNOWN: i32 = cri::ContainerState::ContainerUnknown as i32;
pub const READY: i32 = cri::PodSandboxState::SandboxReady as i32;
pub const NOTREADY: i32 = cri::PodSandboxState::SandboxNotready as i32;

pub fn container_state_name(s: i32) -> &'static str {
    match s {
        CREATED => "CREATED",
        RUNNING => "RUNNING",
        EXITED => "EXITED",
        UNKNOWN => "UNKNOWN",
        _ => "?",
    }
}

pub fn pod_state_name(s: i32) -> &'static str {
    match s {
        READY => "READY",
        NOTREADY => "NOTREADY",
        _ => "?",
    }
}

/// What a container runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Logs `<name> <n>` every 0.2 s until SIGTERM (exit 0).
    Talker,
    /// Sleeps in 0.2 s steps without writing, until SIGTERM (exit 0): it outlives its shim.
    Quiet,
    /// Logs `<name> start`, sleeps `tenths`/10 s, logs `<name> end`, exits with `code`.
    Short { tenths: u32, code: i32 },
}

impl Kind {
    /// In the container's name, so that a report says what it ran.
    pub fn word(self) -> &'static str {
        match self {
            Kind::Talker => "talk",
            Kind::Quiet => "quiet",
            Kind::Short { .. } => "short",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Pod {
    pub id: String,
    pub name: String,
    pub owner: usize,
    pub states: States,
    /// The killer SIGKILLed this pod's shim.
    pub shim_lost: bool,
    /// The pod has its own PID namespace (an infra process).
    pub pid_ns_pod: bool,
    pub log_dir: PathBuf,
}

#[derive(Debug, Clone)]
pub struct Ctr {
    pub id: String,
    pub pod: String,
    pub name: String,
    pub kind: Kind,
    pub states: States,
    /// Stopped, its pod stopped, or its shim lost: its exit code is not its own.
    pub interfered: bool,
    /// Started successfully at least once.
    pub started: bool,
    /// Exit code and finish time, as first seen EXITED: they never change after.
    pub exit: Option<(i32, i64)>,
    pub log: PathBuf,
}

/// One broken promise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// Which invariant (`state`, `listed`, `mounts`, ...).
    pub invariant: &'static str,
    pub what: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}] {}", self.invariant, self.what)
    }
}

#[derive(Debug, Default, Clone)]
pub struct Model {
    pub pods: BTreeMap<String, Pod>,
    pub ctrs: BTreeMap<String, Ctr>,
    pub removed_pods: BTreeSet<String>,
    pub removed_ctrs: BTreeSet<String>,
    /// Pods whose shim was killed before the client knew them (a RunPodSandbox in flight).
    pub lost_shims: BTreeSet<String>,
    pub violations: Vec<Violation>,
}

impl Model {
    pub fn violation(&mut self, invariant: &'static str, what: String) {
        eprintln!("chaos: VIOLATION [{invariant}] {what}");
        self.violations.push(Violation { invariant, what });
    }

    /// The states a container in `state` may reach without being asked to.
    pub fn closure(&self, ctr: &Ctr, state: i32) -> States {
        let shim_lost = self.pods.get(&ctr.pod).is_some_and(|p| p.shim_lost);
        let mut s = States::of(&[state]);
        if state == RUNNING {
            if matches!(ctr.kind, Kind::Short { .. }) {
                s = s.union(States::of(&[EXITED]));
            }
            if shim_lost {
                s = s.union(States::of(&[UNKNOWN, EXITED]));
            }
        }
        if state == UNKNOWN {
            // Asked for again through its shim (Stop), or force-deleted.
            s = s.union(States::of(&[RUNNING, EXITED]));
        }
        s
    }

    /// The states a pod in `state` may reach without being asked to.
    pub fn pod_closure(&self, pod: &Pod, state: i32) -> States {
        if state == READY && pod.shim_lost {
            States::of(&[READY, NOTREADY])
        } else {
            States::of(&[state])
        }
    }

    /// The container states `targets` (of an answered request), with what may follow.
    pub fn reach(&self, id: &str, targets: &[i32]) -> States {
        let Some(c) = self.ctrs.get(id) else {
            return States::default();
        };
        targets
            .iter()
            .fold(States::default(), |s, t| s.union(self.closure(c, *t)))
    }

    pub fn add_pod(&mut self, pod: Pod) {
        let id = pod.id.clone();
        self.pods.insert(id.clone(), pod);
        if self.lost_shims.contains(&id) {
            self.shim_lost(&id);
        }
    }

    pub fn add_ctr(&mut self, ctr: Ctr) {
        self.ctrs.insert(ctr.id.clone(), ctr);
    }

    /// StartContainer answered OK.
    pub fn started(&mut self, id: &str) {
        let states = self.reach(id, &[RUNNING]);
        if let Some(c) = self.ctrs.get_mut(id) {
            c.states = states;
            c.started = true;
        }
    }

    /// StopContainer answered OK: a started container is EXITED (or UNKNOWN when its shim
    /// is gone: see the stop check), a created one stays CREATED.
    pub fn stopped(&mut self, id: &str) {
        let shim_lost = self
            .ctrs
            .get(id)
            .and_then(|c| self.pods.get(&c.pod))
            .is_some_and(|p| p.shim_lost);
        if let Some(c) = self.ctrs.get_mut(id) {
            c.interfered = true;
            c.states = c.states.each().fold(States::default(), |next, s| {
                next.union(match s {
                    CREATED => States::of(&[CREATED]),
                    _ if shim_lost => States::of(&[EXITED, UNKNOWN]),
                    _ => States::of(&[EXITED]),
                })
            });
        }
    }

    pub fn removed_ctr(&mut self, id: &str) {
        if self.ctrs.remove(id).is_some() {
            self.removed_ctrs.insert(id.to_string());
        }
    }

    /// StopPodSandbox answered OK: NOTREADY, and every container of it stopped.
    pub fn stopped_pod(&mut self, id: &str) {
        if let Some(p) = self.pods.get_mut(id) {
            p.states = States::of(&[NOTREADY]);
        }
        for c in self.ctrs_of(id) {
            self.stopped(&c);
        }
    }

    pub fn removed_pod(&mut self, id: &str) {
        for c in self.ctrs_of(id) {
            self.removed_ctr(&c);
        }
        if self.pods.remove(id).is_some() {
            self.removed_pods.insert(id.to_string());
        }
    }

    /// The killer SIGKILLed the pod's shim.
    pub fn shim_lost(&mut self, id: &str) {
        self.lost_shims.insert(id.to_string());
        let Some(p) = self.pods.get_mut(id) else {
            return;
        };
        p.shim_lost = true;
        p.states = p.states.union(States::of(&[NOTREADY]));
        for c in self.ctrs_of(id) {
            let widened = self.ctrs[&c]
                .states
                .each()
                .fold(States::default(), |s, st| {
                    s.union(self.closure(&self.ctrs[&c], st))
                });
            let ctr = self.ctrs.get_mut(&c).expect("listed just now");
            ctr.states = widened;
            ctr.interfered = true;
        }
    }

    pub fn ctrs_of(&self, pod: &str) -> Vec<String> {
        self.ctrs
            .values()
            .filter(|c| c.pod == pod)
            .map(|c| c.id.clone())
            .collect()
    }

    /// A container's state, seen now (a listing): it must be in its states, which become
    /// what may follow it.
    pub fn observe_ctr_state(&mut self, id: &str, state: i32, context: &str) {
        let Some(c) = self.ctrs.get(id).cloned() else {
            return;
        };
        if !c.states.contains(state) {
            self.violation(
                "state",
                format!(
                    "{context}: container {} ({}) is {}, expected one of {}",
                    short(id),
                    c.name,
                    container_state_name(state),
                    names(c.states, container_state_name)
                ),
            );
        }
        let next = self.closure(&c, state);
        if let Some(ctr) = self.ctrs.get_mut(id) {
            ctr.states = next;
        }
    }

    /// A container's status, seen now: its state as in [`observe_ctr_state`], its exit
    /// never changing once seen, and a short container left alone exiting with its own code.
    pub fn observe_ctr(&mut self, id: &str, st: &cri::ContainerStatus, context: &str) {
        let Some(c) = self.ctrs.get(id).cloned() else {
            return;
        };
        self.observe_ctr_state(id, st.state, context);
        if st.state != EXITED {
            return;
        }
        let exit = (st.exit_code, st.finished_at);
        match c.exit {
            Some(seen) if seen != exit => self.violation(
                "state",
                format!(
                    "{context}: container {} ({}) exit changed from {seen:?} to {exit:?} (code, finished_at)",
                    short(id),
                    c.name
                ),
            ),
            Some(_) => {}
            None => {
                if let Some(ctr) = self.ctrs.get_mut(id) {
                    ctr.exit = Some(exit);
                }
            }
        }
        if let Kind::Short { code, .. } = c.kind
            && !c.interfered
            && st.reason != "StartError"
            && st.exit_code != code
        {
            self.violation(
                "state",
                format!(
                    "{context}: container {} ({}) exited by itself with {}, not {code} ({}: {})",
                    short(id),
                    c.name,
                    st.exit_code,
                    st.reason,
                    st.message
                ),
            );
        }
    }

    /// A pod's state, seen now.
    pub fn observe_pod(&mut self, id: &str, state: i32, context: &str) {
        let Some(p) = self.pods.get(id).cloned() else {
            return;
        };
        if !p.states.contains(state) {
            self.violation(
                "state",
                format!(
                    "{context}: pod {} ({}) is {}, expected one of {}",
                    short(id),
                    p.name,
                    pod_state_name(state),
                    names(p.states, pod_state_name)
                ),
            );
        }
        let next = self.pod_closure(&p, state);
        if let Some(pod) = self.pods.get_mut(id) {
            pod.states = next;
        }
    }
}

pub fn names(s: States, name: fn(i32) -> &'static str) -> String {
    let v: Vec<&str> = s.each().map(name).collect();
    format!("{{{}}}", v.join(", "))
}

/// The first 12 characters of an id, as crictl shows it.
pub fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctr(id: &str, pod: &str, kind: Kind) -> Ctr {
        Ctr {
            id: id.into(),
            pod: pod.into(),
            name: id.into(),
            kind,
            states: States::of(&[CREATED]),
            interfered: false,
            started: false,
            exit: None,
            log: PathBuf::new(),
        }
    }

    fn model() -> Model {
        let mut m = Model::default();
        m.add_pod(Pod {
            id: "p".into(),
            name: "p".into(),
            owner: 0,
            states: States::of(&[READY]),
            shim_lost: false,
            pid_ns_pod: false,
            log_dir: PathBuf::new(),
        });
        m.add_ctr(ctr("talker", "p", Kind::Talker));
        m.add_ctr(ctr("short", "p", Kind::Short { tenths: 5, code: 3 }));
        m
    }

    fn status(state: i32, code: i32, finished: i64) -> cri::ContainerStatus {
        cri::ContainerStatus {
            state,
            exit_code: code,
            finished_at: finished,
            ..Default::default()
        }
    }

    #[test]
    fn a_state_outside_the_expected_ones_is_a_violation() {
        let mut m = model();
        m.started("talker");
        m.observe_ctr("talker", &status(RUNNING, 0, 0), "t");
        assert!(m.violations.is_empty());
        // A talker does not exit by itself while its shim lives.
        m.observe_ctr("talker", &status(EXITED, 0, 1), "t");
        assert_eq!(m.violations.len(), 1, "{:?}", m.violations);
        // A short one may; with its own code.
        m.started("short");
        m.observe_ctr("short", &status(EXITED, 3, 5), "t");
        assert_eq!(m.violations.len(), 1);
        m.observe_ctr("short", &status(EXITED, 3, 6), "t");
        assert_eq!(m.violations.len(), 2, "a changed finish time is seen");
        m.observe_ctr("short", &status(RUNNING, 0, 0), "t");
        assert_eq!(m.violations.len(), 3, "EXITED never runs again");
    }

    #[test]
    fn a_short_container_left_alone_exits_with_its_code() {
        let mut m = model();
        m.started("short");
        m.observe_ctr("short", &status(EXITED, 137, 5), "t");
        assert_eq!(m.violations.len(), 1);
        let mut m = model();
        m.started("short");
        m.stopped("short");
        m.observe_ctr("short", &status(EXITED, 137, 5), "t");
        assert!(m.violations.is_empty(), "{:?}", m.violations);
    }

    #[test]
    fn a_lost_shim_widens_its_pod_and_running_containers() {
        let mut m = model();
        m.started("talker");
        m.shim_lost("p");
        m.observe_pod("p", NOTREADY, "t");
        m.observe_ctr("talker", &status(UNKNOWN, 0, 0), "t");
        m.observe_ctr("short", &status(CREATED, 0, 0), "t");
        assert!(m.violations.is_empty(), "{:?}", m.violations);
        m.observe_pod("p", READY, "t");
        assert_eq!(m.violations.len(), 1, "NOTREADY stays NOTREADY");
    }

    #[test]
    fn removal_is_remembered_and_takes_the_pods_containers() {
        let mut m = model();
        m.removed_pod("p");
        assert!(m.pods.is_empty() && m.ctrs.is_empty());
        assert_eq!(m.removed_ctrs.len(), 2);
        assert!(m.removed_pods.contains("p"));
    }
}

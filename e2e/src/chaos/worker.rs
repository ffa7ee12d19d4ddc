//! One worker of the churn: it owns a few pods and their containers and, step by step,
//! runs, creates, starts, execs in, stops and removes them, through crictl or the gRPC
//! client as its random stream says. Every answer updates the model; a call without a clear
//! answer (crustd killed under it) is resolved from crustd's status before the next step,
//! as kubelet's next sync would.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::client::{CtrParams, Outcome, PodParams, Via};
use super::model::{CREATED, Ctr, EXITED, Kind, Pod, READY, RUNNING, States, UNKNOWN, short};
use super::rng::Rng;
use super::{Shared, cgroup_procs};

mod resolve;

const MAX_PODS: usize = 2;
const MAX_CTRS_PER_POD: usize = 3;
/// How long a stopped container's processes may take to leave its cgroup.
const STOP_GRACE: Duration = Duration::from_secs(2);
/// How long crustd may be unreachable (a restart) before the run gives up on it.
const UP_TIMEOUT: Duration = Duration::from_secs(90);

#[derive(Debug, Clone)]
enum Op {
    RunPod,
    Create(String),
    Start(String),
    Exec(String),
    Stop(String, i64),
    Remove(String),
    StopPod(String),
    RemovePod(String),
    Verify,
}

impl Op {
    fn name(&self) -> &'static str {
        match self {
            Op::RunPod => "runp",
            Op::Create(_) => "create",
            Op::Start(_) => "start",
            Op::Exec(_) => "exec",
            Op::Stop(..) => "stop",
            Op::Remove(_) => "rm",
            Op::StopPod(_) => "stopp",
            Op::RemovePod(_) => "rmp",
            Op::Verify => "verify",
        }
    }
}

pub struct Worker {
    n: usize,
    rng: Rng,
    sh: Arc<Shared>,
    made: u32,
}

impl Worker {
    pub fn new(n: usize, seed: u64, sh: Arc<Shared>) -> Worker {
        Worker {
            n,
            rng: Rng::derive(seed, n as u64 + 1),
            sh,
            made: 0,
        }
    }

    pub async fn run(mut self) {
        while !self.sh.stop.load(Ordering::SeqCst) {
            self.step().await;
            let pause = self.rng.below(200);
            tokio::time::sleep(Duration::from_millis(pause)).await;
        }
    }

    fn own(&self) -> (Vec<Pod>, Vec<Ctr>) {
        let m = self.sh.model();
        let pods: Vec<Pod> = m
            .pods
            .values()
            .filter(|p| p.owner == self.n)
            .cloned()
            .collect();
        let ctrs = m
            .ctrs
            .values()
            .filter(|c| pods.iter().any(|p| p.id == c.pod))
            .cloned()
            .collect();
        (pods, ctrs)
    }

    fn choose(&mut self) -> Op {
        let (pods, ctrs) = self.own();
        let healthy = |p: &Pod| p.states == States::of(&[READY]) && !p.shim_lost;
        let roomy: Vec<String> = pods
            .iter()
            .filter(|p| {
                healthy(p) && ctrs.iter().filter(|c| c.pod == p.id).count() < MAX_CTRS_PER_POD
            })
            .map(|p| p.id.clone())
            .collect();
        let ids = |f: &dyn Fn(&Ctr) -> bool| -> Vec<String> {
            ctrs.iter().filter(|c| f(c)).map(|c| c.id.clone()).collect()
        };
        let startable = ids(&|c| {
            c.states == States::of(&[CREATED]) && pods.iter().any(|p| p.id == c.pod && healthy(p))
        });
        let running = ids(&|c| c.states.contains(RUNNING));
        let stoppable = ids(&|c| c.states.contains(RUNNING) || c.states.contains(UNKNOWN));
        // What kubelet does first when a pod's sandbox is lost: stop its containers.
        let orphaned = ids(&|c| {
            (c.states.contains(RUNNING) || c.states.contains(UNKNOWN))
                && pods.iter().any(|p| p.id == c.pod && !healthy(p))
        });
        let all = ids(&|_| true);
        let exited = ids(&|c| c.states == States::of(&[EXITED]));
        let pod_ids: Vec<String> = pods.iter().map(|p| p.id.clone()).collect();
        let unready: Vec<String> = pods
            .iter()
            .filter(|p| !healthy(p))
            .map(|p| p.id.clone())
            .collect();
        let w = |cond: bool, n: u64| if cond { n } else { 0 };
        let weights = [
            w(pods.len() < MAX_PODS, if pods.is_empty() { 8 } else { 2 }),
            w(!roomy.is_empty(), 4),
            w(!startable.is_empty(), 5),
            w(!running.is_empty(), 3),
            w(!stoppable.is_empty(), 2) + w(!orphaned.is_empty(), 6),
            w(!all.is_empty(), 1) + w(!exited.is_empty(), 3),
            w(!pod_ids.is_empty(), 1),
            w(!pod_ids.is_empty(), 1) + w(!unready.is_empty(), 4),
            1,
        ];
        let rng = &mut self.rng;
        match rng.weighted(&weights) {
            Some(0) => Op::RunPod,
            Some(1) => Op::Create(rng.pick(&roomy).clone()),
            Some(2) => Op::Start(rng.pick(&startable).clone()),
            Some(3) => Op::Exec(rng.pick(&running).clone()),
            Some(4) => {
                let id = rng
                    .pick(if orphaned.is_empty() {
                        &stoppable
                    } else {
                        &orphaned
                    })
                    .clone();
                Op::Stop(id, rng.below(3) as i64)
            }
            Some(5) => Op::Remove(
                rng.pick(if exited.is_empty() { &all } else { &exited })
                    .clone(),
            ),
            Some(6) => Op::StopPod(rng.pick(&pod_ids).clone()),
            Some(7) => Op::RemovePod(
                rng.pick(if unready.is_empty() {
                    &pod_ids
                } else {
                    &unready
                })
                .clone(),
            ),
            _ => Op::Verify,
        }
    }

    async fn step(&mut self) {
        let op = self.choose();
        let via = if self.rng.chance(50) {
            Via::Crictl
        } else {
            Via::Grpc
        };
        let epoch = self.sh.kills.epoch.load(Ordering::SeqCst);
        let outcome = match &op {
            Op::RunPod => self.run_pod(via, epoch).await,
            Op::Create(pod) => self.create(via, pod, epoch).await,
            Op::Start(id) => self.start(via, id, epoch).await,
            Op::Exec(id) => self.exec(via, id, epoch).await,
            Op::Stop(id, timeout) => self.stop(via, id, *timeout, epoch).await,
            Op::Remove(id) => self.remove(via, id, epoch).await,
            Op::StopPod(id) => self.stop_pod(via, id, epoch).await,
            Op::RemovePod(id) => self.remove_pod(via, id, epoch).await,
            Op::Verify => self.verify().await,
        };
        let via = if matches!(op, Op::Verify) {
            "grpc"
        } else if via == Via::Crictl {
            "crictl"
        } else {
            "grpc"
        };
        self.sh.count(&format!("{} {via} {outcome}", op.name()));
    }

    /// Whether a crustd kill overlapped a call begun at `epoch` (odd while crustd is down).
    fn disturbed(&self, epoch: u64) -> bool {
        epoch % 2 == 1 || self.sh.kills.epoch.load(Ordering::SeqCst) != epoch
    }

    fn pod_of(&self, ctr: &str) -> Option<String> {
        self.sh.model().ctrs.get(ctr).map(|c| c.pod.clone())
    }

    fn shim_lost(&self, pod: &str) -> bool {
        self.sh.model().lost_shims.contains(pod)
    }

    /// Judges an outcome that is not `Done`: a refusal or a lost call is a violation unless
    /// a kill explains it. Returns whether the object must be resolved from crustd.
    async fn judge<T>(&self, what: &str, out: &Outcome<T>, epoch: u64, excused: bool) -> bool {
        let disturbed = self.disturbed(epoch);
        match out {
            Outcome::Done(_) => false,
            Outcome::NotSent(m) => {
                if !disturbed {
                    self.sh.violation(
                        "available",
                        format!("{what}: not sent while crustd ran: {m}"),
                    );
                }
                self.wait_up().await;
                false
            }
            Outcome::Refused { code, message } => {
                if !excused && !disturbed {
                    self.sh
                        .violation("answer", format!("{what}: {code}: {message}"));
                }
                self.wait_up().await;
                true
            }
            Outcome::Lost(m) => {
                if !disturbed {
                    self.sh
                        .violation("answer", format!("{what}: no answer while crustd ran: {m}"));
                }
                self.wait_up().await;
                true
            }
        }
    }

    async fn wait_up(&self) {
        if !self.sh.client.wait_up(UP_TIMEOUT).await {
            self.sh.violation(
                "available",
                format!("crustd did not answer for {UP_TIMEOUT:?}"),
            );
            self.sh.stop.store(true, Ordering::SeqCst);
        }
    }

    fn pod_params(&mut self, name: &str) -> PodParams {
        PodParams {
            name: name.to_string(),
            log_dir: self.sh.node.logs_dir.join(name),
            cgroup_parent: self.sh.node.cgroup_parent.clone(),
            pid_ns_pod: self.rng.chance(30),
        }
    }

    fn params_of(&self, pod: &Pod) -> PodParams {
        PodParams {
            name: pod.name.clone(),
            log_dir: pod.log_dir.clone(),
            cgroup_parent: self.sh.node.cgroup_parent.clone(),
            pid_ns_pod: pod.pid_ns_pod,
        }
    }

    async fn run_pod(&mut self, via: Via, epoch: u64) -> &'static str {
        self.made += 1;
        let name = format!("w{}-p{}", self.n, self.made);
        let params = self.pod_params(&name);
        let out = self.sh.client.run_pod(via, &params).await;
        let what = format!("RunPodSandbox {name}");
        if let Outcome::Done(id) = &out {
            self.sh.model().add_pod(Pod {
                id: id.clone(),
                name,
                owner: self.n,
                states: States::of(&[READY]),
                shim_lost: false,
                pid_ns_pod: params.pid_ns_pod,
                log_dir: params.log_dir,
            });
        } else if self.judge(&what, &out, epoch, false).await {
            self.adopt_pod(&params, &out).await;
        }
        label(&out)
    }

    async fn create(&mut self, via: Via, pod_id: &str, epoch: u64) -> &'static str {
        let Some(pod) = self.sh.model().pods.get(pod_id).cloned() else {
            return "gone";
        };
        self.made += 1;
        let kind = match self.rng.below(3) {
            0 => Kind::Talker,
            1 => Kind::Quiet,
            _ => Kind::Short {
                tenths: self.rng.between(2, 30) as u32,
                code: self.rng.between(1, 120) as i32,
            },
        };
        let name = format!("{}-c{}-{}", pod.name, self.made, kind.word());
        let params = CtrParams {
            name: name.clone(),
            image: self.sh.image.clone(),
            command: command(&name, kind),
        };
        let pod_params = self.params_of(&pod);
        let out = self
            .sh
            .client
            .create(via, pod_id, &pod_params, &params)
            .await;
        let ctr = Ctr {
            id: String::new(),
            pod: pod_id.to_string(),
            name: name.clone(),
            kind,
            states: States::of(&[CREATED]),
            interfered: false,
            started: false,
            exit: None,
            log: pod.log_dir.join(params.log_path()),
        };
        if let Outcome::Done(id) = &out {
            self.sh.model().add_ctr(Ctr {
                id: id.clone(),
                ..ctr
            });
        } else if self
            .judge(
                &format!("CreateContainer {name}"),
                &out,
                epoch,
                self.shim_lost(pod_id),
            )
            .await
        {
            self.adopt_ctr(ctr, &out).await;
        }
        label(&out)
    }

    async fn start(&mut self, via: Via, id: &str, epoch: u64) -> &'static str {
        let out = self.sh.client.start(via, id).await;
        if let Outcome::Done(()) = out {
            self.sh.model().started(id);
        } else {
            let excused = self.pod_of(id).is_some_and(|p| self.shim_lost(&p));
            if self
                .judge(
                    &format!("StartContainer {}", short(id)),
                    &out,
                    epoch,
                    excused,
                )
                .await
            {
                self.resolve_ctr(id, &[RUNNING, EXITED], false).await;
            }
        }
        label(&out)
    }

    async fn exec(&mut self, via: Via, id: &str, epoch: u64) -> &'static str {
        let token = format!("exec-{}-{}", self.n, self.rng.next_u64());
        let out = self.sh.client.exec(via, id, &token).await;
        let (kind, pod) = {
            let m = self.sh.model();
            let c = m.ctrs.get(id);
            (
                c.map(|c| c.kind),
                c.map(|c| c.pod.clone()).unwrap_or_default(),
            )
        };
        match &out {
            Outcome::Done((stdout, code)) => {
                // A streaming exec whose crustd died under it ends as if it succeeded
                // (client-go takes an error stream closed without a status for success).
                let wrong = *stdout != format!("{token}\n") || *code != 0;
                if wrong && !self.disturbed(epoch) && !self.ended_under_exec(id, kind, &pod).await {
                    self.sh.violation(
                        "exec",
                        format!(
                            "exec ({via:?}) echo {token} in {}: exit {code}, stdout {stdout:?}",
                            short(id)
                        ),
                    );
                }
            }
            _ => {
                // A short container may have ended; one whose shim is gone cannot exec.
                let excused = matches!(kind, Some(Kind::Short { .. })) || self.shim_lost(&pod);
                if self
                    .judge(&format!("exec in {}", short(id)), &out, epoch, excused)
                    .await
                {
                    self.resolve_ctr(id, &[], false).await;
                }
            }
        }
        label(&out)
    }

    /// An exec's process dies with its container (137): a short container that ended, or
    /// one whose shim is gone, may take an exec with it.
    async fn ended_under_exec(&self, id: &str, kind: Option<Kind>, pod: &str) -> bool {
        if !matches!(kind, Some(Kind::Short { .. })) && !self.shim_lost(pod) {
            return false;
        }
        let Some(Some((status, _))) = self.retry(|| self.sh.client.container_status(id)).await
        else {
            return false;
        };
        self.sh.model().observe_ctr(id, &status, "after an exec");
        status.state == EXITED || status.state == UNKNOWN
    }

    async fn stop(&mut self, via: Via, id: &str, timeout: i64, epoch: u64) -> &'static str {
        let out = self.sh.client.stop(via, id, timeout).await;
        if let Outcome::Done(()) = out {
            self.sh.model().stopped(id);
            self.check_stopped(&format!("StopContainer {}", short(id)), &[id.to_string()])
                .await;
        } else {
            let excused = self.pod_of(id).is_some_and(|p| self.shim_lost(&p));
            if self
                .judge(
                    &format!("StopContainer {}", short(id)),
                    &out,
                    epoch,
                    excused,
                )
                .await
            {
                self.resolve_ctr(id, &[EXITED, UNKNOWN], false).await;
            }
        }
        label(&out)
    }

    /// After a StopContainer or StopPodSandbox that answered OK no process of the
    /// containers is left (their cgroups are empty or gone).
    ///
    /// A SIGKILLed process takes a moment to leave its cgroup, and after a lost shim
    /// crustd answers once `runc delete --force` returns, which may be that moment too
    /// early: what is gone within [`STOP_GRACE`] is counted (`stop late`), what is left
    /// after it is a violation.
    async fn check_stopped(&self, what: &str, ids: &[String]) {
        let ctrs: Vec<Ctr> = {
            let m = self.sh.model();
            ids.iter()
                .filter_map(|id| m.ctrs.get(id).cloned())
                .collect()
        };
        for c in ctrs {
            let rel = format!("crust-{}/{}", c.pod, c.id);
            self.sh.checked();
            if cgroup_procs(&self.sh.node.cgroup_parent, &rel).is_empty() {
                continue;
            }
            tokio::time::sleep(STOP_GRACE).await;
            let left = cgroup_procs(&self.sh.node.cgroup_parent, &rel);
            if left.is_empty() {
                self.sh.count("stop late");
                continue;
            }
            self.sh.violation(
                "stop",
                format!(
                    "{what} answered OK and container {} ({}) still has processes {left:?} {STOP_GRACE:?} later",
                    short(&c.id),
                    c.name
                ),
            );
        }
    }

    async fn remove(&mut self, via: Via, id: &str, epoch: u64) -> &'static str {
        let out = self.sh.client.remove(via, id).await;
        if let Outcome::Done(()) = out {
            self.sh.model().removed_ctr(id);
        } else {
            let excused = self.pod_of(id).is_some_and(|p| self.shim_lost(&p));
            if self
                .judge(
                    &format!("RemoveContainer {}", short(id)),
                    &out,
                    epoch,
                    excused,
                )
                .await
            {
                self.resolve_ctr(id, &[EXITED, UNKNOWN], true).await;
            }
        }
        label(&out)
    }

    async fn stop_pod(&mut self, via: Via, id: &str, epoch: u64) -> &'static str {
        let out = self.sh.client.stop_pod(via, id).await;
        if let Outcome::Done(()) = out {
            let ctrs = {
                let mut m = self.sh.model();
                m.stopped_pod(id);
                m.ctrs_of(id)
            };
            self.check_stopped(&format!("StopPodSandbox {}", short(id)), &ctrs)
                .await;
        } else if self
            .judge(
                &format!("StopPodSandbox {}", short(id)),
                &out,
                epoch,
                self.shim_lost(id),
            )
            .await
        {
            self.resolve_pod(id, false).await;
        }
        label(&out)
    }

    async fn remove_pod(&mut self, via: Via, id: &str, epoch: u64) -> &'static str {
        let out = self.sh.client.remove_pod(via, id).await;
        if let Outcome::Done(()) = out {
            self.sh.model().removed_pod(id);
        } else if self
            .judge(
                &format!("RemovePodSandbox {}", short(id)),
                &out,
                epoch,
                self.shim_lost(id),
            )
            .await
        {
            self.resolve_pod(id, true).await;
        }
        label(&out)
    }

    /// Reads back the state of every own pod and container.
    async fn verify(&mut self) -> &'static str {
        let (pods, ctrs) = self.own();
        for p in &pods {
            self.resolve_pod_only(&p.id, false).await;
        }
        for c in &ctrs {
            self.resolve_ctr(&c.id, &[], false).await;
        }
        "done"
    }
}

fn label<T>(out: &Outcome<T>) -> &'static str {
    match out {
        Outcome::Done(_) => "done",
        Outcome::Refused { .. } => "refused",
        Outcome::Lost(_) => "lost",
        Outcome::NotSent(_) => "not-sent",
    }
}

/// The command of a container of `kind` named `name` (busybox sh).
pub fn command(name: &str, kind: Kind) -> Vec<String> {
    let script = match kind {
        Kind::Talker => format!(
            "trap 'exit 0' TERM; i=0; while :; do echo \"{name} $i\"; i=$((i+1)); sleep 0.2; done"
        ),
        Kind::Quiet => "trap 'exit 0' TERM; while :; do sleep 0.2; done".to_string(),
        Kind::Short { tenths, code } => format!(
            "echo '{name} start'; sleep {}.{}; echo '{name} end'; exit {code}",
            tenths / 10,
            tenths % 10
        ),
    };
    vec!["/bin/sh".into(), "-c".into(), script]
}

//! What a worker does after a call without a clear answer: it reads back from crustd
//! (retrying while crustd restarts) whether the object is there and in which state, and
//! judges that against what the call could have done.

use super::Worker;
use crate::chaos::client::{Outcome, PodParams};
use crate::chaos::model::{Ctr, EXITED, NOTREADY, Pod, READY, States, UNKNOWN, short};

impl Worker {
    /// After a RunPodSandbox without a clear answer: the pod is there or not.
    pub(super) async fn adopt_pod(&self, params: &PodParams, out: &Outcome<String>) {
        let Some(pods) = self.retry(|| self.sh.client.list_pods()).await else {
            return;
        };
        let Some(p) = pods
            .iter()
            .find(|p| p.labels.get("chaos.name") == Some(&params.name))
        else {
            return;
        };
        if let Outcome::Refused { code, .. } = out {
            self.sh.violation(
                "answer",
                format!(
                    "RunPodSandbox {} was refused ({code}) and left pod {}",
                    params.name,
                    short(&p.id)
                ),
            );
        }
        let mut m = self.sh.model();
        m.add_pod(Pod {
            id: p.id.clone(),
            name: params.name.clone(),
            owner: self.n,
            states: States::of(&[READY, NOTREADY]),
            shim_lost: false,
            pid_ns_pod: params.pid_ns_pod,
            log_dir: params.log_dir.clone(),
        });
        m.observe_pod(&p.id, p.state, "adopting a pod");
    }

    /// After a CreateContainer without a clear answer: the container is there or not.
    pub(super) async fn adopt_ctr(&self, ctr: Ctr, out: &Outcome<String>) {
        let Some(list) = self.retry(|| self.sh.client.list_containers()).await else {
            return;
        };
        let Some(c) = list
            .iter()
            .find(|c| c.labels.get("chaos.name") == Some(&ctr.name))
        else {
            return;
        };
        if let Outcome::Refused { code, .. } = out {
            self.sh.violation(
                "answer",
                format!(
                    "CreateContainer {} was refused ({code}) and left container {}",
                    ctr.name,
                    short(&c.id)
                ),
            );
        }
        let mut m = self.sh.model();
        let id = c.id.clone();
        m.add_ctr(Ctr {
            id: id.clone(),
            ..ctr
        });
        m.observe_ctr_state(&id, c.state, "adopting a container");
    }

    /// A call whose outcome is unclear, repeated (crustd restarts meanwhile) until it is.
    pub(super) async fn retry<T, F, Fut>(&self, call: F) -> Option<T>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Outcome<T>>,
    {
        for _ in 0..5 {
            match call().await {
                Outcome::Done(t) => return Some(t),
                Outcome::Refused { code, message } => {
                    self.sh
                        .violation("answer", format!("a status read: {code}: {message}"));
                    return None;
                }
                Outcome::Lost(_) | Outcome::NotSent(_) => self.wait_up().await,
            }
        }
        self.sh
            .violation("available", "a status read failed five times".into());
        None
    }

    /// Reads a container's status after a call that may have changed it to one of `targets`.
    pub(super) async fn resolve_ctr(&self, id: &str, targets: &[i32], removing: bool) {
        let Some(found) = self.retry(|| self.sh.client.container_status(id)).await else {
            return;
        };
        let mut m = self.sh.model();
        match found {
            None => {
                if !removing && m.ctrs.contains_key(id) {
                    m.violation("listed", format!("container {} vanished", short(id)));
                }
                m.removed_ctr(id);
            }
            Some((status, _)) => {
                let reach = m.reach(id, targets);
                if let Some(c) = m.ctrs.get_mut(id) {
                    c.states = c.states.union(reach);
                    if !targets.is_empty() {
                        c.interfered = true;
                    }
                }
                m.observe_ctr(id, &status, "resolving");
            }
        }
    }

    pub(super) async fn resolve_pod_only(&self, id: &str, removing: bool) -> bool {
        let Some(found) = self.retry(|| self.sh.client.pod_status(id)).await else {
            return false;
        };
        let mut m = self.sh.model();
        match found {
            None => {
                if !removing && m.pods.contains_key(id) {
                    m.violation("listed", format!("pod {} vanished", short(id)));
                }
                m.removed_pod(id);
                false
            }
            Some((status, _)) => {
                m.observe_pod(id, status.state, "resolving");
                true
            }
        }
    }

    /// After a StopPodSandbox or RemovePodSandbox without a clear answer.
    pub(super) async fn resolve_pod(&self, id: &str, removing: bool) {
        if let Some(p) = self.sh.model().pods.get_mut(id) {
            p.states = p.states.union(States::of(&[NOTREADY]));
        }
        let ctrs = self.sh.model().ctrs_of(id);
        for c in &ctrs {
            self.resolve_ctr(c, &[EXITED, UNKNOWN], removing).await;
        }
        self.resolve_pod_only(id, removing).await;
    }
}

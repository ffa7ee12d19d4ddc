//! PodSandboxStatus and ListPodSandbox.

use super::record::PodRecord;
use super::spec::{PodFilter, PodState};
use super::{Inner, PodSandboxes};
use crate::error::Result;
use crate::namespaces;

impl PodSandboxes {
    /// One pod by full id or unique prefix.
    pub fn status(&self, id: &str) -> Result<PodRecord> {
        let full = self.inner.resolve(id)?;
        // Only this pod is judged: a status poll costs the same with 1 or 1,000 pods.
        if let Some(full) = &full {
            self.inner.refresh_liveness(Some(full));
        }
        self.inner.get(id)
    }

    /// The CNI ADD result of a pod's network: the record's, or for a record written
    /// by a crustd that did not keep it, the CNI cache entry's. No plugin runs.
    pub fn cni_result(&self, rec: &PodRecord) -> Option<serde_json::Value> {
        rec.network.as_ref()?;
        rec.cni_result
            .clone()
            .or_else(|| self.inner.cni.cached(&rec.id)?.result)
    }

    /// The pods that match every field the filter sets, oldest first.
    pub fn list(&self, filter: &PodFilter) -> Vec<PodRecord> {
        self.inner.refresh_liveness(None);
        let mut out = self.inner.pods.filter(|p| matches(p, filter));
        out.sort_by(|a, b| a.created_at_ns.cmp(&b.created_at_ns).then(a.id.cmp(&b.id)));
        out
    }
}

impl Inner {
    /// A READY pod whose infra process (POD pid namespace) or shim died is NOTREADY, as a
    /// containerd pod is when its pause container exits: kubelet then recreates it.
    ///
    /// A pod whose op lock is held is not judged: StopPodSandbox kills the infra process
    /// and only then records NOTREADY, and RemovePodSandbox shuts the shim down, both under
    /// that lock; a status read in between would call an orderly stop a loss. The operation
    /// settles the state itself; a real loss is seen at the next call after it.
    ///
    /// `only`: judge that pod alone (a full id), else every pod.
    fn refresh_liveness(&self, only: Option<&str>) {
        let busy = self.pods_under_an_operation(only);
        let lost = self.pods.filter(|r| {
            r.state == PodState::Ready
                && only.is_none_or(|id| r.id == id)
                && !busy.contains(&r.id)
                && losses(r) != (false, false)
        });
        for rec in &lost {
            let (infra_dead, shim_dead) = losses(rec);
            tracing::warn!(pod = %rec.id, infra_dead, shim_dead, "pod lost its infra process or shim: NOTREADY");
            // Through the pod's own record lock: a pod removed meanwhile stays removed.
            match self.pods.update(&rec.id, |r| r.state = PodState::NotReady) {
                Ok(_) | Err(crate::Error::NotFound(_)) => {}
                Err(e) => tracing::warn!(pod = %rec.id, error = %e, "saving NOTREADY"),
            }
        }
        if !lost.is_empty() {
            self.update_metrics();
        }
    }
}

impl Inner {
    /// Ids of the pods (of `only`, when given) whose op lock someone holds right now.
    fn pods_under_an_operation(&self, only: Option<&str>) -> std::collections::HashSet<String> {
        self.op_locks
            .keys_where(|id, l| only.is_none_or(|o| o == id) && l.try_lock().is_err())
            .into_iter()
            .collect()
    }
}

/// Whether the pod's infra process, and its shim, died.
fn losses(r: &PodRecord) -> (bool, bool) {
    let infra_dead = r
        .namespaces
        .infra_pid
        .is_some_and(|pid| !namespaces::running(pid, r.namespaces.infra_start_time));
    let shim_dead = r
        .shim_pid
        .is_some_and(|pid| !super::shim::shim_alive(&r.id, pid as i32));
    (infra_dead, shim_dead)
}

fn matches(p: &PodRecord, f: &PodFilter) -> bool {
    (f.id.is_empty() || p.id.starts_with(&f.id))
        && f.state.is_none_or(|s| s == p.state)
        && f.label_selector
            .iter()
            .all(|(k, v)| p.spec.labels.get(k) == Some(v))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pod::spec::PodState;

    #[test]
    fn filters_are_anded() {
        let mut p = PodRecord::for_test();
        p.id = "abcdef".into();
        p.spec.labels.insert("app".into(), "web".into());
        let f = |id: &str, state, labels: &[(&str, &str)]| PodFilter {
            id: id.into(),
            state,
            label_selector: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        assert!(matches(&p, &f("", None, &[])));
        assert!(matches(
            &p,
            &f("abc", Some(PodState::Ready), &[("app", "web")])
        ));
        assert!(!matches(
            &p,
            &f("abd", Some(PodState::Ready), &[("app", "web")])
        ));
        assert!(!matches(
            &p,
            &f("abc", Some(PodState::NotReady), &[("app", "web")])
        ));
        assert!(!matches(
            &p,
            &f("abc", Some(PodState::Ready), &[("app", "db")])
        ));
    }
}

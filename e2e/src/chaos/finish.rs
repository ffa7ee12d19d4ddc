//! The end of a chaos run: once the churn and the kills have stopped, the invariants are
//! checked until they hold or a minute has passed (crustd releases what a crashed create
//! left in the background, a short container may still be ending); then every pod is
//! removed, half through crictl, and nothing of them may be left on the node.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use super::Shared;
use super::cgroup_procs;
use super::client::{Outcome, Via};
use super::invariants::{self, Checker, Owners};
use super::model::{EXITED, Kind, Model, READY, RUNNING, short};
use crate::cri;

/// Every invariant a run checks (the churn's own: `answer`, `exec`, `stop`, `available`).
pub const INVARIANTS: &[&str] = &[
    "listed",
    "state",
    "removed",
    "unknown",
    "consistent",
    "mounts",
    "netns",
    "veths",
    "cgroups",
    "processes",
    "ingest",
    "snapshots",
    "cni",
    "dirs",
    "logs",
    "answer",
    "exec",
    "stop",
    "available",
];

const SETTLE: Duration = Duration::from_secs(60);

pub async fn settle_and_check(sh: &Shared) -> Checker {
    let mut c = Checker::default();
    if !sh.client.wait_up(Duration::from_secs(90)).await {
        c.check("available", false, || {
            "crustd does not answer after the churn".into()
        });
        return c;
    }
    let base = {
        let mut m = sh.model().clone();
        m.violations.clear();
        m
    };
    let deadline = Instant::now() + SETTLE;
    loop {
        let mut model = base.clone();
        let mut c = Checker::default();
        check_once(sh, &mut model, &mut c).await;
        if c.violations.is_empty() || Instant::now() > deadline {
            return c;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

async fn listing(
    sh: &Shared,
    c: &mut Checker,
) -> Option<(Vec<cri::PodSandbox>, Vec<cri::Container>)> {
    match (
        sh.client.list_pods().await,
        sh.client.list_containers().await,
    ) {
        (Outcome::Done(p), Outcome::Done(x)) => Some((p, x)),
        (p, x) => {
            c.check("available", false, || {
                format!("listing: {} / {}", p.describe(), x.describe())
            });
            None
        }
    }
}

async fn check_once(sh: &Shared, model: &mut Model, c: &mut Checker) {
    let Some((pods, ctrs)) = listing(sh, c).await else {
        return;
    };
    invariants::listing(model, &pods, &ctrs, c);
    removed_are_gone(sh, model, c).await;
    consistent(sh, model, &pods, &ctrs, c).await;
    let owners = Owners::from_listing(&pods, &ctrs, image_snapshots(sh, c).await);
    let ids: Vec<String> = pods.iter().map(|p| p.id.clone()).collect();
    let facts = sh.node.facts(&ids);
    invariants::node(&sh.node, &facts, &owners, c);
    invariants::logs(&facts, c);
    logs_complete(model, c);
    c.violations.append(&mut model.violations);
}

/// Everything crustd said it removed answers NotFound.
async fn removed_are_gone(sh: &Shared, model: &Model, c: &mut Checker) {
    for id in &model.removed_pods {
        let out = sh.client.pod_status(id).await;
        c.check("removed", matches!(out, Outcome::Done(None)), || {
            format!(
                "removed pod {}: PodSandboxStatus {}",
                short(id),
                describe(&out)
            )
        });
    }
    for id in &model.removed_ctrs {
        let out = sh.client.container_status(id).await;
        c.check("removed", matches!(out, Outcome::Done(None)), || {
            format!(
                "removed container {}: ContainerStatus {}",
                short(id),
                describe(&out)
            )
        });
    }
}

fn describe<T>(out: &Outcome<Option<T>>) -> String {
    match out {
        Outcome::Done(None) => "NotFound".into(),
        Outcome::Done(Some(_)) => "answers: it exists".into(),
        o => o.describe(),
    }
}

/// The status of each listed object agrees with the node: a RUNNING container's process
/// lives, an EXITED one has none left, a READY pod's shim (and infra process) live.
async fn consistent(
    sh: &Shared,
    model: &mut Model,
    pods: &[cri::PodSandbox],
    ctrs: &[cri::Container],
    c: &mut Checker,
) {
    for x in ctrs {
        let Outcome::Done(Some((status, info))) = sh.client.container_status(&x.id).await else {
            continue;
        };
        model.observe_ctr(&x.id, &status, "ContainerStatus");
        let pid = info["pid"].as_i64().unwrap_or(0);
        if status.state == RUNNING {
            c.check("consistent", pid > 0 && crate::workload::alive(pid), || {
                format!(
                    "RUNNING container {} has no live process (pid {pid})",
                    short(&x.id)
                )
            });
        }
        if status.state == EXITED {
            let left = cgroup_procs(
                &sh.node.cgroup_parent,
                &format!("crust-{}/{}", x.pod_sandbox_id, x.id),
            );
            c.check("consistent", left.is_empty(), || {
                format!(
                    "EXITED container {} still has processes {left:?}",
                    short(&x.id)
                )
            });
        }
    }
    for p in pods.iter().filter(|p| p.state == READY) {
        let Outcome::Done(Some((_, info))) = sh.client.pod_status(&p.id).await else {
            continue;
        };
        let shim = info["shimPid"].as_i64().unwrap_or(0);
        c.check(
            "consistent",
            shim > 0 && super::killer::is_shim_of(shim as i32, &p.id, &sh.node.state_dir),
            || format!("READY pod {} has no live shim (pid {shim})", short(&p.id)),
        );
        let infra = info["pid"].as_i64().unwrap_or(0);
        let own_pid_ns = model.pods.get(&p.id).is_some_and(|m| m.pid_ns_pod);
        if own_pid_ns {
            c.check(
                "consistent",
                infra > 0 && crate::workload::alive(infra),
                || {
                    format!(
                        "READY pod {} has no live infra process (pid {infra})",
                        short(&p.id)
                    )
                },
            );
        }
    }
}

/// A short container that ended by itself logged its last line before crustd saw it exit.
fn logs_complete(model: &Model, c: &mut Checker) {
    for ctr in model.ctrs.values() {
        let Kind::Short { code, .. } = ctr.kind else {
            continue;
        };
        if ctr.interfered || ctr.exit.map(|e| e.0) != Some(code) {
            continue;
        }
        let last = std::fs::read_to_string(&ctr.log)
            .unwrap_or_default()
            .lines()
            .last()
            .map(|l| l.splitn(4, ' ').nth(3).unwrap_or_default().to_string());
        let want = format!("{} end", ctr.name);
        c.check("logs", last.as_deref() == Some(want.as_str()), || {
            format!(
                "{} exited with {code} and its log ends with {last:?}, not {want:?}",
                ctr.log.display()
            )
        });
    }
}

/// The snapshot directories of the image's layers (ImageStatus' verbose `lowerDirs`).
async fn image_snapshots(sh: &Shared, c: &mut Checker) -> BTreeSet<String> {
    let status = async {
        crate::channel(&sh.client.socket)
            .await
            .ok()
            .map(cri::image_service_client::ImageServiceClient::new)?
            .image_status(cri::ImageStatusRequest {
                image: Some(cri::ImageSpec {
                    image: sh.image.clone(),
                    ..Default::default()
                }),
                verbose: true,
            })
            .await
            .ok()
    };
    let info: serde_json::Value = status
        .await
        .and_then(|r| serde_json::from_str(r.into_inner().info.get("info")?).ok())
        .unwrap_or_default();
    let dirs: BTreeSet<String> = info["lowerDirs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|d| {
            let n = Path::new(d.as_str()?).parent()?.file_name()?;
            Some(n.to_string_lossy().into_owned())
        })
        .collect();
    c.check("snapshots", !dirs.is_empty(), || {
        format!("ImageStatus of {} names no layer directories", sh.image)
    });
    dirs
}

/// Removes every pod (alternately through crictl and gRPC), then nothing of any may be
/// left on the node: what the image holds is all that stays.
pub async fn remove_all_and_check(sh: &Shared) -> Checker {
    let mut c = Checker::default();
    if let Outcome::Done(pods) = sh.client.list_pods().await {
        for (i, p) in pods.iter().enumerate() {
            let via = if i % 2 == 0 { Via::Crictl } else { Via::Grpc };
            let out = sh.client.remove_pod(via, &p.id).await;
            c.check("answer", matches!(out, Outcome::Done(())), || {
                format!(
                    "RemovePodSandbox {} at the end: {}",
                    short(&p.id),
                    out.describe()
                )
            });
        }
    }
    let deadline = Instant::now() + SETTLE;
    loop {
        let mut attempt = Checker::default();
        if let Some((pods, ctrs)) = listing(sh, &mut attempt).await {
            attempt.check("removed", pods.is_empty() && ctrs.is_empty(), || {
                format!(
                    "{} pods and {} containers listed after removing all",
                    pods.len(),
                    ctrs.len()
                )
            });
            let owners = Owners {
                image_snapshots: image_snapshots(sh, &mut attempt).await,
                ..Default::default()
            };
            let facts = sh.node.facts(&[]);
            invariants::node(&sh.node, &facts, &owners, &mut attempt);
        }
        if attempt.violations.is_empty() || Instant::now() > deadline {
            c.count += attempt.count;
            c.violations.extend(attempt.violations);
            return c;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

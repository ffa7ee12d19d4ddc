//! The invariants a chaos run ends with, as pure functions of what crustd lists, what the
//! client was told ([`Model`]) and what is on the node ([`Facts`]), so that each can be
//! shown to fail (the tests below feed it a leftover of each kind).
//!
//! - `listed`: every pod and container crustd said it made (and did not remove) is listed,
//!   a container under its own pod;
//! - `state`: with a state it may be in (see `model.rs`);
//! - `removed`: nothing crustd said it removed is listed;
//! - `unknown`: nothing is listed that the client never made;
//! - `mounts`, `netns`, `veths`, `cgroups`, `processes`, `ingest`, `snapshots`, `cni`, `dirs`:
//!   nothing of these is on the node that no listed pod or container owns (and a READY pod
//!   has its namespace pin, veth and lease; a container its rootfs mount and bundle);
//! - `logs`: no log line twice, none lost in between.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use super::facts::{Facts, Node};
use super::model::{Model, READY, RUNNING, UNKNOWN, Violation, short};
use crate::cri;

/// Counts the checks made and keeps the ones that failed.
#[derive(Debug, Default)]
pub struct Checker {
    pub count: u64,
    pub violations: Vec<Violation>,
}

impl Checker {
    pub fn check(&mut self, invariant: &'static str, ok: bool, what: impl FnOnce() -> String) {
        self.count += 1;
        if !ok {
            self.violations.push(Violation {
                invariant,
                what: what(),
            });
        }
    }
}

/// What crustd lists: the owners of everything on the node.
#[derive(Debug, Default, Clone)]
pub struct Owners {
    /// Pod id → state.
    pub pods: BTreeMap<String, i32>,
    /// Container id → (pod id, state).
    pub ctrs: BTreeMap<String, (String, i32)>,
    /// Snapshot directory names the images' layers are unpacked in.
    pub image_snapshots: BTreeSet<String>,
}

impl Owners {
    pub fn from_listing(
        pods: &[cri::PodSandbox],
        ctrs: &[cri::Container],
        image_snapshots: BTreeSet<String>,
    ) -> Owners {
        Owners {
            pods: pods.iter().map(|p| (p.id.clone(), p.state)).collect(),
            ctrs: ctrs
                .iter()
                .map(|c| (c.id.clone(), (c.pod_sandbox_id.clone(), c.state)))
                .collect(),
            image_snapshots,
        }
    }
}

/// The listing against the model: `listed`, `state`, `removed`, `unknown`.
pub fn listing(
    model: &mut Model,
    pods: &[cri::PodSandbox],
    ctrs: &[cri::Container],
    c: &mut Checker,
) {
    let listed_pods: BTreeMap<&str, &cri::PodSandbox> =
        pods.iter().map(|p| (p.id.as_str(), p)).collect();
    let listed_ctrs: BTreeMap<&str, &cri::Container> =
        ctrs.iter().map(|x| (x.id.as_str(), x)).collect();
    for (id, pod) in model.pods.clone() {
        let found = listed_pods.get(id.as_str());
        c.check("listed", found.is_some(), || {
            format!("pod {} ({}) is not listed", short(&id), pod.name)
        });
        if let Some(p) = found {
            c.count += 1;
            model.observe_pod(&id, p.state, "ListPodSandbox");
        }
    }
    for (id, ctr) in model.ctrs.clone() {
        let found = listed_ctrs.get(id.as_str());
        c.check("listed", found.is_some(), || {
            format!("container {} ({}) is not listed", short(&id), ctr.name)
        });
        let Some(x) = found else { continue };
        c.check("listed", x.pod_sandbox_id == ctr.pod, || {
            format!(
                "container {} ({}) is listed under pod {}, not {}",
                short(&id),
                ctr.name,
                short(&x.pod_sandbox_id),
                short(&ctr.pod)
            )
        });
        c.count += 1;
        model.observe_ctr_state(&id, x.state, "ListContainers");
    }
    for p in pods {
        c.check("removed", !model.removed_pods.contains(&p.id), || {
            format!("pod {} was removed and is listed", short(&p.id))
        });
        c.check(
            "unknown",
            model.pods.contains_key(&p.id) || model.removed_pods.contains(&p.id),
            || {
                format!(
                    "pod {} is listed and was never made by the client",
                    short(&p.id)
                )
            },
        );
    }
    for x in ctrs {
        c.check("removed", !model.removed_ctrs.contains(&x.id), || {
            format!("container {} was removed and is listed", short(&x.id))
        });
        c.check(
            "unknown",
            model.ctrs.contains_key(&x.id) || model.removed_ctrs.contains(&x.id),
            || {
                format!(
                    "container {} is listed and was never made by the client",
                    short(&x.id)
                )
            },
        );
    }
    // What model.observe_* found.
    c.violations.append(&mut model.violations);
}

/// Everything on the node must have a listed owner.
pub fn node(node: &Node, f: &Facts, o: &Owners, c: &mut Checker) {
    mounts(node, f, o, c);
    network(f, o, c);
    cgroups(f, o, c);
    processes(f, o, c);
    storage(f, o, c);
    cni(f, o, c);
    dirs(node, f, o, c);
}

fn mounts(node: &Node, f: &Facts, o: &Owners, c: &mut Checker) {
    for m in &f.mounts {
        let rel = m.point.strip_prefix(&node.state_dir).ok();
        let parts: Vec<String> = rel
            .map(|r| r.iter().map(|s| s.to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        let owned = match parts.iter().map(String::as_str).collect::<Vec<_>>()[..] {
            ["pods", id, ..] => o.pods.contains_key(id),
            ["containers", id, "rootfs"] => o.ctrs.contains_key(id),
            _ => false,
        };
        let invariant = if m.fstype == "nsfs" {
            "netns"
        } else {
            "mounts"
        };
        c.check(invariant, owned, || {
            format!("{} mount {} has no owner", m.fstype, m.point.display())
        });
    }
    let points: BTreeSet<&Path> = f.mounts.iter().map(|m| m.point.as_path()).collect();
    for id in o.ctrs.keys() {
        let rootfs = node.state_dir.join("containers").join(id).join("rootfs");
        c.check("mounts", points.contains(rootfs.as_path()), || {
            format!("container {} has no rootfs mounted", short(id))
        });
    }
    for (id, _) in o.pods.iter().filter(|(_, s)| **s == READY) {
        let pin = node.pod_dir(id).join("ns/net");
        c.check("netns", points.contains(pin.as_path()), || {
            format!("READY pod {} has no network namespace pin", short(id))
        });
    }
}

fn network(f: &Facts, o: &Owners, c: &mut Checker) {
    let owned: BTreeSet<u32> = f
        .pod_peers
        .iter()
        .filter(|(p, _)| o.pods.contains_key(*p))
        .flat_map(|(_, peers)| peers.iter().copied())
        .collect();
    for (index, name) in &f.veths {
        c.check("veths", owned.contains(index), || {
            format!("veth {name} (ifindex {index}) on the bridge pairs with no listed pod")
        });
    }
    let on_bridge: BTreeSet<u32> = f.veths.iter().map(|v| v.0).collect();
    for (id, _) in o.pods.iter().filter(|(_, s)| **s == READY) {
        let peers = f.pod_peers.get(id);
        c.check(
            "veths",
            peers.is_some_and(|p| p.iter().any(|i| on_bridge.contains(i))),
            || format!("READY pod {} has no veth on the bridge", short(id)),
        );
    }
}

/// `crust-<pod>[/<ctr>]` → (pod, ctr).
fn cgroup_owner(rel: &str) -> (Option<&str>, Option<&str>) {
    let mut parts = rel.split('/');
    let pod = parts.next().and_then(|p| p.strip_prefix("crust-"));
    (pod, parts.next())
}

fn cgroups(f: &Facts, o: &Owners, c: &mut Checker) {
    for rel in &f.cgroups {
        let owned = match cgroup_owner(rel) {
            (Some(pod), None) => o.pods.contains_key(pod),
            (Some(pod), Some(ctr)) => o.ctrs.get(ctr).is_some_and(|(p, _)| p == pod),
            (None, _) => false,
        };
        c.check("cgroups", owned, || format!("cgroup {rel} has no owner"));
    }
}

fn processes(f: &Facts, o: &Owners, c: &mut Checker) {
    for p in &f.procs {
        // A zombie whose parent is init is init's to reap (a process outlives its killed
        // shim and is reparented there); the init of a test machine may reap nothing.
        let owned = if p.zombie && p.ppid == 1 {
            true
        } else if p.cgroups.is_empty() {
            // Not in a pod's cgroup: only a pod's shim may name crustd's dirs.
            let words: Vec<&str> = p.cmdline.split(' ').collect();
            let id = words
                .windows(2)
                .find(|w| w[0] == "-id")
                .map(|w| w[1])
                .filter(|_| words.first().is_some_and(|w| w.ends_with("crust-shim")));
            id.is_some_and(|id| o.pods.contains_key(id))
        } else {
            p.cgroups.iter().all(|rel| match cgroup_owner(rel) {
                (Some(pod), None) => o.pods.contains_key(pod),
                (Some(pod), Some(ctr)) => o
                    .ctrs
                    .get(ctr)
                    .is_some_and(|(cp, s)| cp == pod && (*s == RUNNING || *s == UNKNOWN)),
                (None, _) => false,
            })
        };
        c.check("processes", owned, || {
            format!(
                "process {} ({}{}, parent {} {}) in {:?} belongs to no listed pod or running container",
                p.pid,
                p.cmdline,
                if p.zombie { "zombie" } else { "" },
                p.ppid,
                p.parent,
                p.cgroups
            )
        });
    }
}

fn storage(f: &Facts, o: &Owners, c: &mut Checker) {
    for name in &f.ingest {
        c.check("ingest", false, || format!("ingest file {name} is left"));
    }
    for name in &f.trash {
        c.check("snapshots", false, || format!("trash entry {name} is left"));
    }
    // A container's snapshot is the upper dir of its rootfs mount.
    let uppers: BTreeSet<String> = f
        .mounts
        .iter()
        .filter(|m| m.fstype == "overlay")
        .filter_map(|m| {
            let upper = m
                .options
                .split(',')
                .find_map(|o| o.strip_prefix("upperdir="))?;
            let n = Path::new(upper)
                .parent()?
                .file_name()?
                .to_string_lossy()
                .into_owned();
            Some(n)
        })
        .collect();
    for n in &f.snapshots {
        c.check(
            "snapshots",
            o.image_snapshots.contains(n) || uppers.contains(n),
            || format!("snapshot {n} belongs to no image layer and no container's rootfs"),
        );
    }
}

fn cni(f: &Facts, o: &Owners, c: &mut Checker) {
    for name in &f.cni_cache {
        let owned = name
            .strip_suffix(".json")
            .is_some_and(|id| o.pods.contains_key(id));
        c.check("cni", owned, || {
            format!("CNI cache entry {name} has no pod")
        });
    }
    for l in &f.leases {
        c.check("cni", o.pods.contains_key(&l.owner), || {
            format!(
                "IP lease {} is held by {}, which is no listed pod",
                l.ip,
                short(&l.owner)
            )
        });
    }
    for (id, _) in o.pods.iter().filter(|(_, s)| **s == READY) {
        let n = f.leases.iter().filter(|l| &l.owner == id).count();
        c.check("cni", n == 1, || {
            format!("READY pod {} holds {n} IP leases", short(id))
        });
    }
}

fn dirs(node: &Node, f: &Facts, o: &Owners, c: &mut Checker) {
    for d in &f.pod_dirs {
        c.check("dirs", o.pods.contains_key(d), || {
            format!("pod dir {d} has no pod")
        });
    }
    for id in o.pods.keys() {
        c.check("dirs", f.pod_dirs.contains(id), || {
            format!("pod {} has no pod dir", short(id))
        });
    }
    for b in &f.bundles {
        c.check("dirs", o.ctrs.contains_key(b), || {
            format!("bundle {b} has no container")
        });
    }
    for id in o.ctrs.keys() {
        c.check("dirs", f.bundles.contains(id), || {
            format!("container {} has no bundle", short(id))
        });
    }
    for r in &f.runc_state {
        let running = o
            .ctrs
            .get(r)
            .is_some_and(|(_, s)| *s == RUNNING || *s == UNKNOWN);
        c.check("dirs", running, || {
            format!("runc state {r} belongs to no running container")
        });
    }
    let addresses: BTreeSet<&Path> = f
        .shim_addresses
        .iter()
        .filter(|(p, _)| o.pods.contains_key(*p))
        .map(|(_, a)| a.as_path())
        .collect();
    for s in &f.shim_sockets {
        c.check("dirs", addresses.contains(s.as_path()), || {
            format!("shim socket {} is no listed pod's", s.display())
        });
    }
    let _ = node;
}

/// No log line twice; a talker's numbered lines without a gap.
pub fn logs(f: &Facts, c: &mut Checker) {
    for (path, lines) in &f.logs {
        let mut seen = BTreeSet::new();
        let mut numbers = Vec::new();
        for line in lines {
            let text = line.splitn(4, ' ').nth(3).unwrap_or_default();
            c.check("logs", seen.insert(text.to_string()), || {
                format!("{}: line {text:?} is there twice", path.display())
            });
            if let Some(n) = text.rsplit(' ').next().and_then(|n| n.parse::<u64>().ok()) {
                numbers.push(n);
            }
        }
        let contiguous = numbers.iter().enumerate().all(|(i, n)| *n == i as u64);
        c.check("logs", contiguous, || {
            format!(
                "{}: numbered lines {numbers:?} are not 0, 1, 2, ...",
                path.display()
            )
        });
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::super::facts::{Lease, Mount, Proc};
    use super::super::model::EXITED;
    use super::*;

    fn node() -> Node {
        Node {
            dir: "/t".into(),
            root_dir: "/t/root".into(),
            state_dir: "/t/state".into(),
            crustd_pid: None,
            bridge: "crust-p100".into(),
            cgroup_parent: "/crust-e2e-100".into(),
            leases_dir: "/t/ipam/n".into(),
            logs_dir: "/t/logs".into(),
        }
    }

    fn mount(point: &str, fstype: &str, options: &str) -> Mount {
        Mount {
            point: point.into(),
            fstype: fstype.into(),
            options: options.into(),
        }
    }

    /// One READY pod `p1` with a running container `c1` and everything they own.
    fn healthy() -> (Facts, Owners) {
        let facts = Facts {
            mounts: vec![
                mount("/t/state/pods/p1/ns/net", "nsfs", "rw"),
                mount("/t/state/pods/p1/shm", "tmpfs", "rw"),
                mount(
                    "/t/state/containers/c1/rootfs",
                    "overlay",
                    "rw,lowerdir=/t/root/images/snapshots/1/fs,upperdir=/t/root/images/snapshots/2/fs,workdir=/t/root/images/snapshots/2/work",
                ),
            ],
            veths: vec![(57, "veth1".into())],
            pod_peers: [("p1".to_string(), [57].into())].into(),
            cgroups: ["crust-p1".to_string(), "crust-p1/c1".to_string()].into(),
            procs: vec![
                Proc {
                    pid: 10,
                    ppid: 1,
                    parent: String::new(),
                    zombie: false,
                    cmdline: "/b/crust-shim -namespace k8s.io -id p1 -address /t/state/events.sock"
                        .into(),
                    cgroups: BTreeSet::new(),
                },
                Proc {
                    pid: 11,
                    ppid: 10,
                    parent: String::new(),
                    zombie: false,
                    cmdline: "sh -c talk".into(),
                    cgroups: ["crust-p1/c1".to_string()].into(),
                },
            ],
            snapshots: vec!["1".into(), "2".into()],
            cni_cache: vec!["p1.json".into()],
            leases: vec![Lease {
                ip: "10.88.100.2".into(),
                owner: "p1".into(),
            }],
            pod_dirs: vec!["p1".into()],
            bundles: vec!["c1".into()],
            runc_state: vec!["c1".into()],
            shim_sockets: vec!["/t/state/s/abc".into()],
            shim_addresses: [("p1".to_string(), PathBuf::from("/t/state/s/abc"))].into(),
            ..Default::default()
        };
        let owners = Owners {
            pods: [("p1".to_string(), READY)].into(),
            ctrs: [("c1".to_string(), ("p1".to_string(), RUNNING))].into(),
            image_snapshots: ["1".to_string()].into(),
        };
        (facts, owners)
    }

    fn failed(f: &Facts, o: &Owners) -> Vec<&'static str> {
        let mut c = Checker::default();
        super::node(&node(), f, o, &mut c);
        logs(f, &mut c);
        c.violations.iter().map(|v| v.invariant).collect()
    }

    #[test]
    fn a_healthy_node_passes() {
        let (f, o) = healthy();
        let mut c = Checker::default();
        super::node(&node(), &f, &o, &mut c);
        assert!(c.violations.is_empty(), "{:?}", c.violations);
        assert!(c.count > 20);
    }

    #[test]
    fn each_leftover_is_seen() {
        type Plant = Box<dyn Fn(&mut Facts, &mut Owners)>;
        let cases: Vec<(&str, Plant)> = vec![
            (
                "mounts",
                Box::new(|f, _| f.mounts.push(mount("/t/state/stray", "tmpfs", ""))),
            ),
            (
                "netns",
                Box::new(|f, _| f.mounts.push(mount("/t/state/pods/p9/ns/net", "nsfs", ""))),
            ),
            ("veths", Box::new(|f, _| f.veths.push((58, "veth9".into())))),
            (
                "cgroups",
                Box::new(|f, _| {
                    f.cgroups.insert("crust-p9".into());
                }),
            ),
            (
                "processes",
                Box::new(|f, _| {
                    f.procs.push(Proc {
                        pid: 12,
                        ppid: 10,
                        parent: String::new(),
                        zombie: false,
                        cmdline: "sleep 1000".into(),
                        cgroups: ["crust-p1/c9".to_string()].into(),
                    })
                }),
            ),
            // A zombie its shim does not reap.
            (
                "processes",
                Box::new(|f, _| {
                    f.procs.push(Proc {
                        pid: 14,
                        ppid: 10,
                        parent: String::new(),
                        zombie: true,
                        cmdline: String::new(),
                        cgroups: ["crust-p1/c7 (deleted)".to_string()].into(),
                    })
                }),
            ),
            (
                "processes",
                Box::new(|f, _| {
                    f.procs.push(Proc {
                        pid: 13,
                        ppid: 1,
                        parent: String::new(),
                        zombie: false,
                        cmdline:
                            "/b/crust-shim -namespace k8s.io -id p9 -address /t/state/events.sock"
                                .into(),
                        cgroups: BTreeSet::new(),
                    })
                }),
            ),
            ("ingest", Box::new(|f, _| f.ingest.push("tmp-1".into()))),
            ("snapshots", Box::new(|f, _| f.snapshots.push("3".into()))),
            ("snapshots", Box::new(|f, _| f.trash.push("4".into()))),
            ("cni", Box::new(|f, _| f.cni_cache.push("p9.json".into()))),
            (
                "cni",
                Box::new(|f, _| {
                    f.leases.push(Lease {
                        ip: "10.88.100.3".into(),
                        owner: "p9".into(),
                    })
                }),
            ),
            ("dirs", Box::new(|f, _| f.pod_dirs.push("p9".into()))),
            ("dirs", Box::new(|f, _| f.bundles.push("c9".into()))),
            ("dirs", Box::new(|f, _| f.runc_state.push("c9".into()))),
            (
                "dirs",
                Box::new(|f, _| f.shim_sockets.push("/t/state/s/def".into())),
            ),
            (
                "logs",
                Box::new(|f, _| {
                    f.logs.push((
                        "/t/logs/p/c/0.log".into(),
                        vec![
                            "2026-01-01T00:00:00.1Z stdout F c 0".into(),
                            "2026-01-01T00:00:00.2Z stdout F c 0".into(),
                        ],
                    ))
                }),
            ),
            (
                "logs",
                Box::new(|f, _| {
                    f.logs.push((
                        "/t/logs/p/c/0.log".into(),
                        vec![
                            "2026-01-01T00:00:00.1Z stdout F c 0".into(),
                            "2026-01-01T00:00:00.2Z stdout F c 2".into(),
                        ],
                    ))
                }),
            ),
            // What a READY pod or a container must have.
            (
                "netns",
                Box::new(|f, _| f.mounts.retain(|m| m.fstype != "nsfs")),
            ),
            ("veths", Box::new(|f, _| f.veths.clear())),
            ("cni", Box::new(|f, _| f.leases.clear())),
            (
                "mounts",
                Box::new(|f, _| f.mounts.retain(|m| m.fstype != "overlay")),
            ),
            // A process in the cgroup of an EXITED container.
            (
                "processes",
                Box::new(|_, o| {
                    o.ctrs.insert("c1".into(), ("p1".into(), EXITED));
                }),
            ),
        ];
        for (want, plant) in cases {
            let (mut f, mut o) = healthy();
            plant(&mut f, &mut o);
            let got = failed(&f, &o);
            assert!(got.contains(&want), "{want}: got {got:?}");
        }
    }

    #[test]
    fn the_listing_is_judged_against_the_model() {
        use super::super::model::{CREATED, Ctr, Kind, Pod, States};
        let mut m = Model::default();
        m.add_pod(Pod {
            id: "p1".into(),
            name: "p".into(),
            owner: 0,
            states: States::of(&[READY]),
            shim_lost: false,
            pid_ns_pod: false,
            log_dir: PathBuf::new(),
        });
        m.add_ctr(Ctr {
            id: "c1".into(),
            pod: "p1".into(),
            name: "c".into(),
            kind: Kind::Talker,
            states: States::of(&[CREATED]),
            interfered: false,
            started: false,
            exit: None,
            log: PathBuf::new(),
        });
        m.removed_pods.insert("p0".into());
        let pod = |id: &str, state| cri::PodSandbox {
            id: id.into(),
            state,
            ..Default::default()
        };
        let ctr = |id: &str, pod: &str, state| cri::Container {
            id: id.into(),
            pod_sandbox_id: pod.into(),
            state,
            ..Default::default()
        };
        let run = |pods: &[cri::PodSandbox], ctrs: &[cri::Container]| {
            let mut c = Checker::default();
            listing(&mut m.clone(), pods, ctrs, &mut c);
            c.violations.iter().map(|v| v.invariant).collect::<Vec<_>>()
        };
        assert_eq!(
            run(&[pod("p1", READY)], &[ctr("c1", "p1", CREATED)]),
            Vec::<&str>::new()
        );
        assert_eq!(run(&[pod("p1", READY)], &[]), vec!["listed"]);
        assert_eq!(
            run(&[pod("p1", READY)], &[ctr("c1", "p1", RUNNING)]),
            vec!["state"]
        );
        assert_eq!(
            run(
                &[pod("p1", READY), pod("p0", READY)],
                &[ctr("c1", "p1", CREATED)]
            ),
            vec!["removed"]
        );
        assert_eq!(
            run(
                &[pod("p1", READY), pod("p7", READY)],
                &[ctr("c1", "p1", CREATED)]
            ),
            vec!["unknown"]
        );
        assert_eq!(
            run(&[pod("p1", READY)], &[ctr("c1", "p2", CREATED)]),
            vec!["listed"]
        );
    }
}

//! Network counters of pods, read from inside each pod's network namespace
//! without running a command: a thread of its own enters the namespaces one
//! after the other (`setns`) and reads `/proc/thread-self/net/dev`, which shows
//! the calling thread's namespace. The thread ends afterwards, so no thread of
//! crustd's pools is ever left in a pod's namespace.

use std::io;
use std::path::PathBuf;

/// The interface CNI plugins give a pod (`CNI_IFNAME`): a pod's default interface.
pub const DEFAULT_INTERFACE: &str = "eth0";

/// The counters of one interface, as the kernel keeps them since it was made.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InterfaceStats {
    pub name: String,
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub rx_errors: u64,
    pub rx_dropped: u64,
    pub tx_bytes: u64,
    pub tx_packets: u64,
    pub tx_errors: u64,
    pub tx_dropped: u64,
}

/// Parses `/proc/net/dev`: two header lines, then `name: <8 receive> <8 transmit>`
/// counters per interface. Malformed lines are skipped.
pub fn parse_net_dev(text: &str) -> Vec<InterfaceStats> {
    text.lines()
        .skip(2)
        .filter_map(|line| {
            let (name, rest) = line.split_once(':')?;
            let v: Vec<u64> = rest
                .split_whitespace()
                .map(str::parse)
                .collect::<Result<_, _>>()
                .ok()?;
            (v.len() >= 16).then(|| InterfaceStats {
                name: name.trim().to_string(),
                rx_bytes: v[0],
                rx_packets: v[1],
                rx_errors: v[2],
                rx_dropped: v[3],
                tx_bytes: v[8],
                tx_packets: v[9],
                tx_errors: v[10],
                tx_dropped: v[11],
            })
        })
        .collect()
}

/// The interfaces of each network namespace pinned at `netns[i]`, loopback
/// left out (cAdvisor and containerd leave it out too); an error for a
/// namespace that cannot be entered or read. One thread serves the whole list.
pub async fn read_namespaces(netns: Vec<PathBuf>) -> Vec<io::Result<Vec<InterfaceStats>>> {
    if netns.is_empty() {
        return Vec::new();
    }
    let n = netns.len();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name("crust-netstats".into())
        .spawn(move || {
            let out: Vec<_> = netns.iter().map(read_in).collect();
            let _ = tx.send(out);
        });
    match spawned {
        Ok(_) => rx.await.unwrap_or_else(|_| {
            (0..n)
                .map(|_| Err(io::Error::other("netstats thread died")))
                .collect()
        }),
        Err(e) => (0..n)
            .map(|_| Err(io::Error::new(e.kind(), e.to_string())))
            .collect(),
    }
}

/// Enters `netns` on the calling thread and reads its interfaces. Only for a
/// thread that is thrown away afterwards.
fn read_in(netns: &PathBuf) -> io::Result<Vec<InterfaceStats>> {
    let f = std::fs::File::open(netns)?;
    nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET)
        .map_err(|e| io::Error::other(format!("entering {}: {e}", netns.display())))?;
    let text = std::fs::read_to_string("/proc/thread-self/net/dev")?;
    Ok(parse_net_dev(&text)
        .into_iter()
        .filter(|i| i.name != "lo")
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    const NET_DEV: &str = "\
Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:     120       2    0    0    0     0          0         0      120       2    0    0    0     0       0          0
  eth0: 1500 10 1 2 0 0 0 0 900 7 3 4 0 0 0 0
garbage line
  bad: 1 2 3
";

    #[test]
    fn net_dev_counters_per_interface() {
        let ifs = parse_net_dev(NET_DEV);
        assert_eq!(ifs.len(), 2);
        assert_eq!(
            ifs[1],
            InterfaceStats {
                name: "eth0".into(),
                rx_bytes: 1500,
                rx_packets: 10,
                rx_errors: 1,
                rx_dropped: 2,
                tx_bytes: 900,
                tx_packets: 7,
                tx_errors: 3,
                tx_dropped: 4,
            }
        );
        assert_eq!(ifs[0].name, "lo");
    }

    #[tokio::test]
    async fn a_namespace_that_cannot_be_entered_is_an_error_of_its_own() {
        let r = read_namespaces(vec![PathBuf::from("/nonexistent/ns/net")]).await;
        assert_eq!(r.len(), 1);
        assert!(r[0].is_err());
        // The node's own namespace can be entered (as root) and read.
        if nix::unistd::geteuid().is_root() {
            let r = read_namespaces(vec![PathBuf::from("/proc/self/ns/net")]).await;
            assert!(
                r[0].as_ref()
                    .is_ok_and(|ifs| ifs.iter().all(|i| i.name != "lo"))
            );
        }
    }
}

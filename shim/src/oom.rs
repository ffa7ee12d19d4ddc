//! OOM events of a container (`/tasks/oom`): the kernel's notification on the memory
//! cgroup's eventfd, and the cgroup's `oom_kill` count checked again at the init's exit,
//! each kill reported once.

use containerd_shim::protos::{events::task::TaskOOM, topics};
use log::info;

use crate::cgroup::Cgroups;
use crate::service::{Service, lock};

impl Service {
    /// Publishes `/tasks/oom` when the memory cgroup counted OOM kills not reported yet
    /// (`notified`: the kernel signalled an OOM, report it even without a counter).
    pub(crate) fn report_oom(&self, cid: &str, cgroups: &Cgroups, notified: bool) {
        let kills = cgroups.oom_kills();
        let new = {
            let mut cs = lock(&self.0.containers);
            let Some(c) = cs.get_mut(cid) else { return };
            match kills {
                Some(n) if n > c.ooms_reported => {
                    c.ooms_reported = n;
                    true
                }
                Some(_) => false,
                None => notified && cgroups.memory_exists(),
            }
        };
        if new {
            info!("container {cid}: OOM");
            let ev = TaskOOM {
                container_id: cid.to_string(),
                ..Default::default()
            };
            self.publish(
                topics::TASK_OOM_EVENT_TOPIC,
                "containerd.events.TaskOOM",
                &ev,
            );
        }
    }

    /// Follows the container's OOM eventfd until its memory cgroup is gone.
    pub(crate) async fn watch_oom(self, cid: String, efd: std::os::fd::OwnedFd) {
        use std::os::fd::AsRawFd;
        let cgroups = {
            let cs = lock(&self.0.containers);
            match cs.get(&cid) {
                Some(c) => c.cgroups.clone(),
                None => return,
            }
        };
        // SAFETY: the AsyncFd owns the descriptor for as long as it is registered.
        let Ok(afd) = (unsafe { tokio::io::unix::AsyncFd::register(efd) }) else {
            return;
        };
        loop {
            let Ok(mut guard) = afd.readable().await else {
                return;
            };
            let mut buf = [0u8; 8];
            // SAFETY: reads 8 bytes into a local buffer from our eventfd.
            let n = unsafe { libc::read(afd.get_ref().as_raw_fd(), buf.as_mut_ptr().cast(), 8) };
            if n < 0 {
                guard.clear_ready();
                continue;
            }
            if !cgroups.memory_exists() {
                return;
            }
            self.report_oom(&cid, &cgroups, true);
        }
    }
}

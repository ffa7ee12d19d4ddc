//! runc as the shim drives it: one `runc::Runc` per container (its binary, state root,
//! log and cgroup driver from the create options), its commands spawned through the
//! [`Reaper`] (the framework reaps every child), readable errors from runc's own log, the
//! console socket of a terminal process.

use std::{path::Path, sync::Arc, time::Duration};

use containerd_shim::{
    TtrpcResult,
    api::Options,
    protos::ttrpc::{self, Code},
};
use log::warn;
use runc::options::{CreateOpts, GlobalOpts};

use crate::io::ConsoleSocket;
use crate::reaper::{Reaper, RuncSpawner};
use crate::service::{internal, status};

/// runc state root when the create options carry none.
pub const DEFAULT_RUNC_ROOT: &str = "/run/crust/runc";

/// The runc of a container, from its create options.
pub(crate) fn build(
    reaper: &Arc<Reaper>,
    opts: &Options,
    bundle: &Path,
) -> TtrpcResult<runc::Runc> {
    let binary = if opts.binary_name.is_empty() {
        "runc"
    } else {
        &opts.binary_name
    };
    let root = if opts.root.is_empty() {
        DEFAULT_RUNC_ROOT
    } else {
        &opts.root
    };
    let mut g = GlobalOpts::new()
        .command(binary)
        .root(root)
        .log(bundle.join("log.json"))
        .log_json()
        .systemd_cgroup(opts.systemd_cgroup);
    g.custom_spawner(Arc::new(RuncSpawner(reaper.clone())));
    g.build()
        .map_err(|e| status(Code::FAILED_PRECONDITION, format!("runc {binary}: {e}")))
}

/// The last error runc logged in the bundle's log.json.
pub(crate) fn runc_logged_error(bundle: &Path) -> Option<String> {
    let text = std::fs::read_to_string(bundle.join("log.json")).ok()?;
    text.lines().rev().find_map(|l| {
        let v: serde_json::Value = serde_json::from_str(l).ok()?;
        (v.get("level")?.as_str()? == "error")
            .then(|| v.get("msg")?.as_str().map(str::to_string))?
    })
}

/// The last error runc logged in the bundle's log.json, for a readable message.
pub(crate) fn runc_error(bundle: &Path, e: runc::error::Error) -> ttrpc::Error {
    let msg = match runc_logged_error(bundle) {
        Some(m) => format!("runc: {m}"),
        None => format!("runc: {e}"),
    };
    if msg.contains("does not exist") {
        status(Code::NOT_FOUND, msg)
    } else {
        internal(msg)
    }
}

pub(crate) fn read_pid(path: &Path) -> TtrpcResult<u32> {
    let s = std::fs::read_to_string(path)
        .map_err(|e| internal(format!("read {}: {e}", path.display())))?;
    s.trim()
        .parse()
        .map_err(|e| internal(format!("pid file {}: {e}", path.display())))
}

pub(crate) fn unmount(target: &Path) {
    if let Err(e) = nix::mount::umount2(target, nix::mount::MntFlags::MNT_DETACH) {
        warn!("unmount {}: {e}", target.display());
    }
}

/// `runc create`, or `runc run --detach` when the task starts at once: it
/// returns once the process runs.
pub(crate) async fn launch(
    runc: &runc::Runc,
    start_now: bool,
    id: &str,
    bundle: &Path,
    opts: &CreateOpts,
) -> TtrpcResult<()> {
    if start_now {
        runc.run(id, bundle, Some(opts)).await
    } else {
        runc.create(id, bundle, Some(opts)).await
    }
    .map(|_| ())
    .map_err(|e| runc_error(bundle, e))
}

/// Runs runc create/exec with a console socket, returning the pty master.
pub(crate) async fn with_console<F, T>(
    sock: ConsoleSocket,
    run: F,
) -> TtrpcResult<(T, std::os::fd::OwnedFd)>
where
    F: std::future::Future<Output = TtrpcResult<T>>,
{
    let recv = tokio::spawn(sock.receive());
    let r = run.await;
    let r = match r {
        Ok(r) => r,
        Err(e) => {
            recv.abort();
            return Err(e);
        }
    };
    match tokio::time::timeout(Duration::from_secs(10), recv).await {
        Ok(Ok(Ok(fd))) => Ok((r, fd)),
        Ok(Ok(Err(e))) => Err(internal(format!("console socket: {e}"))),
        _ => Err(internal("no pty master received from runc")),
    }
}

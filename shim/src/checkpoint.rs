//! `Checkpoint`: a CRIU dump of a running container through `runc checkpoint`,
//! as containerd's runc shim does it — the request's `path` is the image
//! directory, its options (`containerd.runc.v1.CheckpointOptions`) say whether
//! the container is left running (unless `exit`), where CRIU works and logs
//! (`work_path`), and which CRIU extras to allow.
//!
//! The runc client crate has no checkpoint call, so the command line is built
//! here from the same global options as the container's other runc calls and
//! runs through the shim's reaping spawner. A `Create` whose `checkpoint`
//! names CRIU images restores the container from them (`runc restore`).

use std::path::{Path, PathBuf};

use containerd_shim::{
    TtrpcResult,
    api::{CheckpointTaskRequest, CreateTaskRequest, Options},
    protos::{
        protobuf::Message,
        shim::oci::CheckpointOptions,
        ttrpc::{self, Code},
        types::task::Status,
    },
};
use crust_shim_protocol::CHECKPOINT_OPTIONS;
use runc::{Spawner, options::CreateOpts};

use crate::reaper::RuncSpawner;
use crate::runtime::DEFAULT_RUNC_ROOT;
use crate::service::{Service, internal, lock, not_found, status};

/// CRIU's logs inside the work directory (runc names them so).
const DUMP_LOG: &str = "dump.log";
const RESTORE_LOG: &str = "restore.log";

/// The runc command line of a container: binary and global options.
#[derive(Debug, Clone)]
pub(crate) struct RuncCli {
    binary: String,
    root: String,
    log: PathBuf,
    systemd_cgroup: bool,
}

impl RuncCli {
    /// The same binary, root, log and cgroup driver `build_runc` gives the
    /// runc client for this container.
    pub(crate) fn new(opts: &Options, bundle: &Path) -> Self {
        let pick = |s: &str, default: &str| {
            if s.is_empty() {
                default.to_string()
            } else {
                s.to_string()
            }
        };
        RuncCli {
            binary: pick(&opts.binary_name, "runc"),
            root: pick(&opts.root, DEFAULT_RUNC_ROOT),
            log: bundle.join("log.json"),
            systemd_cgroup: opts.systemd_cgroup,
        }
    }

    fn global_args(&self) -> Vec<String> {
        let mut a = vec![
            "--root".to_string(),
            self.root.clone(),
            "--log".to_string(),
            self.log.display().to_string(),
            "--log-format".to_string(),
            "json".to_string(),
        ];
        if self.systemd_cgroup {
            a.push("--systemd-cgroup".to_string());
        }
        a
    }
}

/// The checkpoint request's options; none is containerd's default (leave running).
fn parse_options(req: &CheckpointTaskRequest) -> TtrpcResult<CheckpointOptions> {
    match req.options.as_ref() {
        Some(any) if !any.value.is_empty() || !any.type_url.is_empty() => {
            if any.type_url != CHECKPOINT_OPTIONS {
                return Err(status(
                    Code::INVALID_ARGUMENT,
                    format!(
                        "checkpoint options of type {:?}: want {CHECKPOINT_OPTIONS}",
                        any.type_url
                    ),
                ));
            }
            CheckpointOptions::parse_from_bytes(&any.value)
                .map_err(|e| status(Code::INVALID_ARGUMENT, format!("checkpoint options: {e}")))
        }
        _ => Ok(CheckpointOptions::new()),
    }
}

/// `runc checkpoint` arguments after the global options.
fn checkpoint_args(id: &str, image: &Path, work: &Path, o: &CheckpointOptions) -> Vec<String> {
    let mut a = vec![
        "checkpoint".to_string(),
        "--image-path".to_string(),
        image.display().to_string(),
        "--work-path".to_string(),
        work.display().to_string(),
    ];
    let flags = [
        (!o.exit, "--leave-running"),
        (o.open_tcp, "--tcp-established"),
        (o.external_unix_sockets, "--ext-unix-sk"),
        (o.terminal, "--shell-job"),
        (o.file_locks, "--file-locks"),
    ];
    a.extend(
        flags
            .iter()
            .filter(|(on, _)| *on)
            .map(|(_, f)| f.to_string()),
    );
    for ns in &o.empty_namespaces {
        a.push("--empty-ns".to_string());
        a.push(ns.clone());
    }
    if !o.cgroups_mode.is_empty() {
        a.push("--manage-cgroups-mode".to_string());
        a.push(o.cgroups_mode.clone());
    }
    a.push(id.to_string());
    a
}

/// An absolute directory path from a request field.
fn absolute(what: &str, p: &str) -> TtrpcResult<PathBuf> {
    let path = PathBuf::from(p);
    if !path.is_absolute() {
        return Err(status(
            Code::INVALID_ARGUMENT,
            format!("checkpoint {what} {p:?} is not an absolute path"),
        ));
    }
    Ok(path)
}

/// A failed runc checkpoint/restore: runc's first logged line (its next one
/// names CRIU's log, whose errors are quoted instead: the caller may remove
/// the file), else `fallback`, and CRIU's last errors.
fn failure(
    what: &str,
    id: &str,
    bundle: &Path,
    work: &Path,
    log: &str,
    fallback: String,
) -> ttrpc::Error {
    let runc = crate::runtime::runc_logged_error(bundle).unwrap_or(fallback);
    let runc = runc.lines().next().unwrap_or_default().trim();
    let criu = criu_errors(work, log)
        .map(|c| format!("; criu: {c}"))
        .unwrap_or_default();
    status(
        Code::INTERNAL,
        format!("{what} of {id} failed: runc: {runc}{criu}"),
    )
}

/// CRIU's own `Error` lines from its log, the last few.
fn criu_errors(work: &Path, log: &str) -> Option<String> {
    let text = std::fs::read_to_string(work.join(log)).ok()?;
    let errors: Vec<&str> = text
        .lines()
        .filter_map(|l| l.split_once("Error (").map(|(_, rest)| rest))
        .collect();
    let last = &errors[errors.len().saturating_sub(3)..];
    (!last.is_empty()).then(|| {
        last.iter()
            .map(|e| format!("Error ({e}"))
            .collect::<Vec<_>>()
            .join("; ")
    })
}

/// The CRIU image directory a `Create` restores from, if any (`checkpoint`);
/// not for a terminal (the pty would have to be handed to CRIU as external).
pub(crate) fn restore_from(req: &CreateTaskRequest) -> TtrpcResult<Option<PathBuf>> {
    if req.checkpoint.is_empty() {
        return Ok(None);
    }
    if req.terminal {
        return Err(status(
            Code::INVALID_ARGUMENT,
            "restoring a container with a terminal is not supported",
        ));
    }
    let dir = absolute("checkpoint", &req.checkpoint)?;
    if !dir.join("inventory.img").is_file() {
        return Err(status(
            Code::INVALID_ARGUMENT,
            format!("{} holds no CRIU images", dir.display()),
        ));
    }
    Ok(Some(dir))
}

impl Service {
    /// `runc restore --detach` of the container from CRIU `images`, its stdio
    /// (and so the restored process's) the create options' io, as `runc run` would.
    pub(crate) async fn restore(
        &self,
        cli: &RuncCli,
        id: &str,
        bundle: &Path,
        images: &Path,
        copts: &CreateOpts,
    ) -> TtrpcResult<()> {
        let work = bundle.join("criu-restore");
        std::fs::create_dir_all(&work)
            .map_err(|e| internal(format!("mkdir {}: {e}", work.display())))?;
        let mut cmd = runc::Command::new(&cli.binary);
        cmd.args(cli.global_args()).args([
            "restore".to_string(),
            "--detach".to_string(),
            "--bundle".to_string(),
            bundle.display().to_string(),
            "--pid-file".to_string(),
            bundle.join("init.pid").display().to_string(),
            "--image-path".to_string(),
            images.display().to_string(),
            "--work-path".to_string(),
            work.display().to_string(),
        ]);
        if copts.no_pivot {
            cmd.arg("--no-pivot");
        }
        cmd.arg(id);
        match &copts.io {
            Some(io) => io
                .set(&mut cmd)
                .await
                .map_err(|e| internal(format!("restore stdio: {e}")))?,
            None => {
                cmd.stdin(std::process::Stdio::null())
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null());
            }
        }
        let spawner = RuncSpawner(self.0.reaper.clone());
        let result = spawner.execute(cmd).await;
        if let Some(io) = &copts.io {
            io.close_after_start().await;
        }
        let (exit, ..) = result.map_err(|e| internal(format!("runc restore: {e}")))?;
        if exit.success() {
            return Ok(());
        }
        Err(failure(
            "restore",
            id,
            bundle,
            &work,
            RESTORE_LOG,
            exit.to_string(),
        ))
    }

    /// Dumps the running container `req.id` into `req.path` with `runc checkpoint`.
    pub(crate) async fn checkpoint_task(&self, req: CheckpointTaskRequest) -> TtrpcResult<()> {
        let opts = parse_options(&req)?;
        let image = absolute("path", &req.path)?;
        let (cli, bundle) = {
            let cs = lock(&self.0.containers);
            let c = cs
                .get(&req.id)
                .ok_or_else(|| not_found("container", &req.id))?;
            if c.init.status != Status::RUNNING {
                return Err(status(
                    Code::FAILED_PRECONDITION,
                    format!("container {} is not running", req.id),
                ));
            }
            (c.cli.clone(), c.bundle.clone())
        };
        let work = if opts.work_path.is_empty() {
            bundle.join("criu-work")
        } else {
            absolute("work path", &opts.work_path)?
        };
        for d in [&image, &work] {
            std::fs::create_dir_all(d)
                .map_err(|e| internal(format!("mkdir {}: {e}", d.display())))?;
        }
        let mut cmd = runc::Command::new(&cli.binary);
        cmd.args(cli.global_args())
            .args(checkpoint_args(&req.id, &image, &work, &opts))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let spawner = RuncSpawner(self.0.reaper.clone());
        let (exit, _, stdout, stderr) = spawner
            .execute(cmd)
            .await
            .map_err(|e| internal(format!("runc checkpoint: {e}")))?;
        if exit.success() {
            return Ok(());
        }
        let output = format!("{} {}", stdout.trim(), stderr.trim());
        Err(failure(
            "checkpoint",
            &req.id,
            &bundle,
            &work,
            DUMP_LOG,
            output,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use containerd_shim::protos::protobuf::well_known_types::any::Any;

    #[test]
    fn leave_running_unless_exit_and_extras_as_flags() {
        let mut o = CheckpointOptions::new();
        let a = checkpoint_args("c1", Path::new("/i"), Path::new("/w"), &o);
        assert_eq!(
            a,
            [
                "checkpoint",
                "--image-path",
                "/i",
                "--work-path",
                "/w",
                "--leave-running",
                "c1"
            ]
        );
        o.exit = true;
        o.open_tcp = true;
        o.terminal = true;
        o.empty_namespaces = vec!["network".into()];
        o.cgroups_mode = "soft".into();
        let a = checkpoint_args("c1", Path::new("/i"), Path::new("/w"), &o);
        assert_eq!(
            a[5..],
            [
                "--tcp-established",
                "--shell-job",
                "--empty-ns",
                "network",
                "--manage-cgroups-mode",
                "soft",
                "c1"
            ]
        );
    }

    #[test]
    fn options_of_another_type_are_refused() {
        let mut req = CheckpointTaskRequest::new();
        assert!(!parse_options(&req).unwrap().exit);
        let mut o = CheckpointOptions::new();
        o.exit = true;
        req.options = Some(Any {
            type_url: CHECKPOINT_OPTIONS.into(),
            value: o.write_to_bytes().unwrap(),
            ..Default::default()
        })
        .into();
        assert!(parse_options(&req).unwrap().exit);
        req.options = Some(Any {
            type_url: "containerd.runc.v1.Options".into(),
            value: vec![],
            ..Default::default()
        })
        .into();
        assert!(parse_options(&req).is_err());
        assert!(absolute("path", "rel/dir").is_err());
    }

    #[test]
    fn a_restore_needs_criu_images_and_no_terminal() {
        let d = tempfile::tempdir().unwrap();
        let mut req = CreateTaskRequest::new();
        assert_eq!(restore_from(&req).unwrap(), None);
        req.checkpoint = d.path().display().to_string();
        assert!(restore_from(&req).is_err(), "no inventory.img");
        std::fs::write(d.path().join("inventory.img"), "x").unwrap();
        assert_eq!(restore_from(&req).unwrap(), Some(d.path().to_path_buf()));
        req.terminal = true;
        assert!(restore_from(&req).is_err(), "terminal");
        req.terminal = false;
        req.checkpoint = "rel".into();
        assert!(restore_from(&req).is_err(), "relative");
    }

    #[test]
    fn criu_errors_come_from_the_dump_log() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(criu_errors(d.path(), DUMP_LOG), None);
        std::fs::write(
            d.path().join(DUMP_LOG),
            "(00.1) Dumping\n(00.2) Error (criu/sk-unix.c:1): unix: Can't dump\n(00.3) Error (criu/cr-dump.c:2): Dumping FAILED.\n",
        )
        .unwrap();
        assert_eq!(
            criu_errors(d.path(), DUMP_LOG).unwrap(),
            "Error (criu/sk-unix.c:1): unix: Can't dump; Error (criu/cr-dump.c:2): Dumping FAILED."
        );
    }
}

//! Client of the per-pod `crust-shim` (a containerd shim v2) over ttrpc.
//!
//! - [`ShimClient::spawn`] starts a pod's shim the containerd way: it runs
//!   `crust-shim -namespace NS -id POD -address EVENTS start` in the pod's state
//!   directory with `BootstrapParams` on stdin (events address, socket directory) and
//!   reads the address the shim answers with. The shim runs detached (own session) and
//!   writes that address to `<pod dir>/address`, so [`ShimClient::reconnect`] finds it
//!   again after crustd restarts.
//! - [`EventsServer`] is the ttrpc `containerd.services.events.ttrpc.v1.Events` service
//!   the shims publish `/tasks/exit`, `/tasks/start`, `/tasks/oom`, ... to.
//!
//! Container stdio (see [`TaskIo`]): a CRI log file is passed as the stdout field
//! `file:///abs/path.log` (the shim writes stdout and stderr into it in the CRI format);
//! stdin is a FIFO the caller writes to; exec output can go to FIFOs.
//! ReopenContainerLog is an `Update` with the [`REOPEN_LOG_ANNOTATION`] annotation
//! ([`ShimClient::reopen_log`]).
//!
//! The types the client speaks in (errors, stdio, create requests, status) are in
//! `types.rs`.
//!
//! Other shim v2 binaries (containerd-shim-runc-v2) are started and fed differently; every
//! such difference is behind [`ShimFlavour`], and a [`ShimClient`] carries the flavour of its
//! shim, so its callers do not tell shims apart.

mod events;
mod flavour;
mod logcopy;
mod task;
mod types;

use std::{collections::HashMap, path::Path, process::Stdio, time::Duration};

use containerd_shim_protos::{
    api::{
        CheckpointTaskRequest, CloseIORequest, ConnectRequest, CreateTaskRequest, DeleteRequest,
        ExecProcessRequest, KillRequest, PidsRequest, ResizePtyRequest, ShutdownRequest,
        StartRequest, StateRequest, StatsRequest, UpdateTaskRequest, WaitRequest,
    },
    bootstrap_api::{BootstrapParams, BootstrapResult},
    cgroups::metrics::Metrics,
    protobuf::{Message, well_known_types::any::Any},
    shim::oci::{CheckpointOptions, Options},
    shim_async::Client,
    ttrpc::{self, context::Context},
    types::{mount::Mount, task::Status},
};
use tokio::io::AsyncWriteExt;

pub use events::{EventsServer, ShimEvent, TaskEvent};
pub use flavour::{SANDBOX_ID_ANNOTATION, ShimFlavour};
use task::TaskClient;
use types::to_time;
pub use types::*;

pub use crust_shim_protocol::{
    CREATE_AND_START_OPTIONS, CRI_LOG_SCHEME, PROCESS_TYPE, REOPEN_LOG_ANNOTATION, RESOURCES_TYPE,
    RUNC_OPTIONS,
};

/// A connection to one pod's shim.
#[derive(Clone)]
pub struct ShimClient {
    task: TaskClient,
    address: String,
    timeout: Duration,
    flavour: ShimFlavour,
}

impl std::fmt::Debug for ShimClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShimClient")
            .field("address", &self.address)
            .field("flavour", &self.flavour)
            .finish()
    }
}

/// After a crustd restart: reads the `log` FIFO of the containerd-style shim of `pod_dir`
/// again (its logger would block once the FIFO is full). A no-op for crust-shim.
pub fn follow_shim_log(pod_dir: &Path) {
    if ShimFlavour::of_pod_dir(pod_dir) == ShimFlavour::Containerd
        && pod_dir.join("log").exists()
        && let Err(e) = logcopy::follow_shim_log(pod_dir, false)
    {
        tracing::warn!(dir = %pod_dir.display(), error = %e, "following the shim's log");
    }
}

/// Parses what `shim start` printed: a `BootstrapResult`, the legacy JSON, or a bare address.
fn parse_start_output(out: &[u8]) -> Option<String> {
    if let Ok(r) = BootstrapResult::parse_from_bytes(out)
        && !r.address.is_empty()
        && r.address.is_ascii()
    {
        return Some(r.address);
    }
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(out)
        && let Some(a) = v.get("address").and_then(|a| a.as_str())
    {
        return Some(a.to_string());
    }
    let s = std::str::from_utf8(out).ok()?.trim();
    (!s.is_empty()).then(|| s.to_string())
}

impl ShimClient {
    /// Starts the pod's shim (or finds the one already serving this pod) and connects.
    ///
    /// `pod_dir` is the shim's working directory: it gets `address`, `shim.pid` and
    /// `shim.log`. `events_address` is the [`EventsServer`] the shim publishes to.
    pub async fn spawn(
        cfg: &SpawnConfig,
        pod_id: &str,
        pod_dir: &Path,
        events_address: &str,
    ) -> Result<ShimClient> {
        // The shim names its socket <socket_dir>/<64 hex digits>; sun_path holds 107 bytes.
        let len = cfg.socket_dir.as_os_str().len() + 65;
        if len > 107 {
            return Err(ShimError::InvalidArgument(format!(
                "shim socket directory {} is too long for a unix socket path ({len} > 107 bytes)",
                cfg.socket_dir.display()
            )));
        }
        crust_state::private::create_dir(&cfg.socket_dir)?;
        cfg.flavour.record(pod_dir)?;
        cfg.flavour.prepare_work_dir(pod_dir, pod_id)?;
        // A containerd-style shim's logger blocks on the `log` FIFO until it is read.
        let log_placeholder = match cfg.flavour {
            ShimFlavour::Crust => None,
            ShimFlavour::Containerd => logcopy::follow_shim_log(pod_dir, true)?,
        };
        let params = BootstrapParams {
            instance_id: pod_id.to_string(),
            namespace: cfg.namespace.clone(),
            containerd_ttrpc_address: events_address.to_string(),
            containerd_grpc_address: events_address.to_string(),
            socket_dir: Some(cfg.socket_dir.display().to_string()),
            ..Default::default()
        };
        // containerd-style shims read an optional runc `Options` `Any` from stdin: give none.
        let input = match cfg.flavour {
            ShimFlavour::Crust => params
                .write_to_bytes()
                .map_err(|e| ShimError::Internal(e.to_string()))?,
            ShimFlavour::Containerd => Vec::new(),
        };
        let mut cmd = tokio::process::Command::new(&cfg.binary);
        cmd.current_dir(pod_dir)
            .args(["-namespace", &cfg.namespace, "-id", pod_id])
            .args(["-address", events_address])
            .env("TTRPC_ADDRESS", events_address)
            // crustd's systemd notify socket is crustd's alone: the shim outlives it,
            // and runc reads NOTIFY_SOCKET as the container's (it would bind it in and
            // wait on it).
            .env_remove("NOTIFY_SOCKET")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if cfg.debug {
            cmd.arg("-debug");
        }
        cmd.arg("start");
        let mut child = cmd
            .spawn()
            .map_err(|e| ShimError::Start(format!("{}: {e}", cfg.binary.display())))?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(&input).await?;
            // Dropped here: the shim reads stdin to its end.
        }
        let out = tokio::time::timeout(cfg.start_timeout, child.wait_with_output())
            .await
            .map_err(|_| ShimError::Start("timed out".into()))??;
        if !out.status.success() {
            return Err(ShimError::Start(format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        let address = parse_start_output(&out.stdout)
            .ok_or_else(|| ShimError::Start("shim printed no address".into()))?;
        let client = Self::connect_as(&address, cfg.flavour).await?;
        if let Some(placeholder) = log_placeholder {
            // Once the shim answers a call, its logger holds the `log` FIFO open.
            let answered = client.shim_pid().await;
            drop(placeholder);
            // Not every version leaves its pid beside its address: crust reads it there
            // (cleaning up after a crash, the pod record).
            let pid = answered?;
            if !pod_dir.join("shim.pid").exists() {
                crust_state::private::write_file(
                    &pod_dir.join("shim.pid"),
                    pid.to_string().as_bytes(),
                )?;
            }
        }
        Ok(client)
    }

    /// Connects to a crust-shim at `address` (`unix:///path`).
    pub async fn connect(address: &str) -> Result<ShimClient> {
        Self::connect_as(address, ShimFlavour::Crust).await
    }

    /// Connects to a shim of `flavour` at `address`.
    pub async fn connect_as(address: &str, flavour: ShimFlavour) -> Result<ShimClient> {
        let client = Client::connect(address)
            .await
            .map_err(|e| ShimError::Unavailable(format!("{address}: {e}")))?;
        Ok(ShimClient {
            task: TaskClient::new(client, flavour),
            address: address.to_string(),
            timeout: Duration::from_secs(30),
            flavour,
        })
    }

    /// Reconnects to the shim whose address was saved in `pod_dir/address` (after a restart),
    /// driving it as the flavour recorded there.
    pub async fn reconnect(pod_dir: &Path) -> Result<ShimClient> {
        let address = tokio::fs::read_to_string(pod_dir.join("address")).await?;
        Self::connect_as(address.trim(), ShimFlavour::of_pod_dir(pod_dir)).await
    }

    pub fn flavour(&self) -> ShimFlavour {
        self.flavour
    }

    /// After a crustd restart: makes sure the output of a running container reaches its CRI
    /// log (a no-op for shims that write the log themselves, or when already followed).
    pub fn follow_output(&self, id: &str, bundle: &Path, log_path: Option<&Path>) {
        if let Some(log_path) = log_path
            && !self.flavour.writes_cri_logs()
        {
            logcopy::follow(id, bundle, log_path);
        }
    }

    pub fn address(&self) -> &str {
        &self.address
    }

    /// Per-call timeout for everything but `wait` (default 30 s).
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    fn ctx(&self) -> Context {
        ttrpc::context::with_timeout(self.timeout.as_nanos() as i64)
    }

    /// Creates a container; returns its init pid. A CRI log is written by the shim, or by
    /// crustd from the shim's output FIFOs when the shim does not write one.
    pub async fn create(&self, t: &CreateTask) -> Result<u32> {
        self.create_with(t, RUNC_OPTIONS).await
    }

    /// Creates and starts a container; returns its pid. crust-shim does both
    /// in one runtime call; another shim, or a crust-shim too old to know
    /// the options (it only creates), gets the `Start` too.
    pub async fn create_and_start(&self, t: &CreateTask) -> Result<u32> {
        if self.flavour != ShimFlavour::Crust {
            self.create(t).await?;
            return self.start(&t.id, "").await;
        }
        let pid = self.create_with(t, CREATE_AND_START_OPTIONS).await?;
        match self.state(&t.id, "").await?.status {
            TaskStatus::Created => self.start(&t.id, "").await,
            _ => Ok(pid),
        }
    }

    /// Creates the container restored from CRIU `images` (a checkpoint's
    /// `checkpoint/` directory) and so running; returns its pid.
    pub async fn restore(&self, t: &CreateTask, images: &Path) -> Result<u32> {
        if self.flavour != ShimFlavour::Crust {
            self.create_from(t, crust_shim_protocol::RUNC_OPTIONS, Some(images))
                .await?;
            return self.start(&t.id, "").await;
        }
        self.create_from(t, CREATE_AND_START_OPTIONS, Some(images))
            .await
    }

    async fn create_with(&self, t: &CreateTask, options_type: &str) -> Result<u32> {
        self.create_from(t, options_type, None).await
    }

    async fn create_from(
        &self,
        t: &CreateTask,
        options_type: &str,
        checkpoint: Option<&Path>,
    ) -> Result<u32> {
        let mut placeholders = None;
        let (stdin, stdout, stderr) = match &t.io.output {
            Output::CriLog(path) if !self.flavour.writes_cri_logs() => {
                let (out, err, p) = logcopy::start(&t.id, &t.bundle, path, t.io.terminal)?;
                placeholders = Some(p);
                TaskIo {
                    output: Output::Paths {
                        stdout: Some(out),
                        stderr: err,
                    },
                    ..t.io.clone()
                }
                .fields()
            }
            _ => t.io.fields(),
        };
        let opts = Options {
            binary_name: t.runtime.binary.clone().unwrap_or_default(),
            root: t
                .runtime
                .root
                .as_ref()
                .map(|r| r.display().to_string())
                .unwrap_or_default(),
            systemd_cgroup: t.runtime.systemd_cgroup,
            ..Default::default()
        };
        let options = Any {
            type_url: options_type.to_string(),
            value: opts
                .write_to_bytes()
                .map_err(|e| ShimError::Internal(e.to_string()))?,
            ..Default::default()
        };
        let req = CreateTaskRequest {
            id: t.id.clone(),
            bundle: t.bundle.display().to_string(),
            rootfs: t
                .rootfs
                .iter()
                .map(|m| Mount {
                    type_: m.kind.clone(),
                    source: m.source.clone(),
                    options: m.options.clone(),
                    ..Default::default()
                })
                .collect(),
            terminal: t.io.terminal,
            stdin,
            stdout,
            stderr,
            options: Some(options).into(),
            checkpoint: checkpoint
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            ..Default::default()
        };
        let pid = self.task.create(self.ctx(), &req).await?.pid;
        if let Some(p) = placeholders {
            p.release_after_exit(self, &t.id);
        }
        Ok(pid)
    }

    /// Starts a created container (`exec_id` empty) or an added exec; returns its pid.
    pub async fn start(&self, id: &str, exec_id: &str) -> Result<u32> {
        let req = StartRequest {
            id: id.to_string(),
            exec_id: exec_id.to_string(),
            ..Default::default()
        };
        Ok(self.task.start(self.ctx(), &req).await?.pid)
    }

    /// Signals the container's init (`all`: every process of it) or an exec.
    pub async fn kill(&self, id: &str, exec_id: &str, signal: u32, all: bool) -> Result<()> {
        let req = KillRequest {
            id: id.to_string(),
            exec_id: exec_id.to_string(),
            signal,
            all,
            ..Default::default()
        };
        self.task.kill(self.ctx(), &req).await?;
        Ok(())
    }

    /// Waits until the process exited (no timeout).
    pub async fn wait(&self, id: &str, exec_id: &str) -> Result<ExitInfo> {
        let req = WaitRequest {
            id: id.to_string(),
            exec_id: exec_id.to_string(),
            ..Default::default()
        };
        let r = self.task.wait(Context::default(), &req).await?;
        Ok(ExitInfo {
            pid: 0,
            exit_status: r.exit_status,
            exited_at: to_time(&r.exited_at),
        })
    }

    /// Deletes a stopped container (or exec) and returns how it ended.
    pub async fn delete(&self, id: &str, exec_id: &str) -> Result<ExitInfo> {
        let req = DeleteRequest {
            id: id.to_string(),
            exec_id: exec_id.to_string(),
            ..Default::default()
        };
        let r = self.task.delete(self.ctx(), &req).await?;
        Ok(ExitInfo {
            pid: r.pid,
            exit_status: r.exit_status,
            exited_at: to_time(&r.exited_at),
        })
    }

    pub async fn state(&self, id: &str, exec_id: &str) -> Result<TaskState> {
        let req = StateRequest {
            id: id.to_string(),
            exec_id: exec_id.to_string(),
            ..Default::default()
        };
        let r = self.task.state(self.ctx(), &req).await?;
        let status = match r.status.enum_value_or_default() {
            Status::CREATED => TaskStatus::Created,
            Status::RUNNING => TaskStatus::Running,
            Status::STOPPED => TaskStatus::Stopped,
            Status::PAUSED | Status::PAUSING => TaskStatus::Paused,
            _ => TaskStatus::Unknown,
        };
        Ok(TaskState {
            id: r.id.clone(),
            exec_id: r.exec_id.clone(),
            pid: r.pid,
            status,
            exit_status: r.exit_status,
            exited_at: to_time(&r.exited_at),
            bundle: r.bundle.clone(),
            terminal: r.terminal,
        })
    }

    /// Adds an exec process (an OCI `process` object, serialized as JSON); start it with
    /// [`ShimClient::start`].
    pub async fn exec<S: serde::Serialize>(
        &self,
        id: &str,
        exec_id: &str,
        process: &S,
        io: &TaskIo,
    ) -> Result<()> {
        let (stdin, stdout, stderr) = io.fields();
        let value =
            serde_json::to_vec(process).map_err(|e| ShimError::InvalidArgument(e.to_string()))?;
        let req = ExecProcessRequest {
            id: id.to_string(),
            exec_id: exec_id.to_string(),
            terminal: io.terminal,
            stdin,
            stdout,
            stderr,
            spec: Some(Any {
                type_url: PROCESS_TYPE.into(),
                value,
                ..Default::default()
            })
            .into(),
            ..Default::default()
        };
        self.task.exec(self.ctx(), &req).await?;
        Ok(())
    }

    /// cgroup v1 statistics of the container.
    pub async fn stats(&self, id: &str) -> Result<Metrics> {
        let req = StatsRequest {
            id: id.to_string(),
            ..Default::default()
        };
        let r = self.task.stats(self.ctx(), &req).await?;
        let any = r
            .stats
            .as_ref()
            .ok_or_else(|| ShimError::Internal("no stats".into()))?;
        Metrics::parse_from_bytes(&any.value).map_err(|e| ShimError::Internal(e.to_string()))
    }

    /// Applies new resources (an OCI `LinuxResources` object) to a running container.
    pub async fn update<S: serde::Serialize>(&self, id: &str, resources: &S) -> Result<()> {
        let value =
            serde_json::to_vec(resources).map_err(|e| ShimError::InvalidArgument(e.to_string()))?;
        let req = UpdateTaskRequest {
            id: id.to_string(),
            resources: Some(Any {
                type_url: RESOURCES_TYPE.into(),
                value,
                ..Default::default()
            })
            .into(),
            ..Default::default()
        };
        self.task.update(self.ctx(), &req).await?;
        Ok(())
    }

    /// Dumps the running container with CRIU into `image_dir`, leaving it running;
    /// CRIU works and logs (dump.log, stats-dump) in `work_dir`. `timeout` bounds
    /// the call (the shim's per-call timeout does not: a dump takes what it takes).
    pub async fn checkpoint(
        &self,
        id: &str,
        image_dir: &Path,
        work_dir: &Path,
        timeout: Duration,
    ) -> Result<()> {
        let opts = CheckpointOptions {
            exit: false,
            work_path: work_dir.display().to_string(),
            ..Default::default()
        };
        let req = CheckpointTaskRequest {
            id: id.to_string(),
            path: image_dir.display().to_string(),
            options: Some(Any {
                type_url: crust_shim_protocol::CHECKPOINT_OPTIONS.into(),
                value: opts
                    .write_to_bytes()
                    .map_err(|e| ShimError::Internal(e.to_string()))?,
                ..Default::default()
            })
            .into(),
            ..Default::default()
        };
        let ctx = ttrpc::context::with_timeout(timeout.as_nanos() as i64);
        self.task.checkpoint(ctx, &req).await?;
        Ok(())
    }

    /// Reopens the container's CRI log file (ReopenContainerLog). Fails with
    /// `FailedPrecondition` when the container is not running or has no CRI log.
    pub async fn reopen_log(&self, id: &str) -> Result<()> {
        if !self.flavour.writes_cri_logs() {
            return match logcopy::reopen(id) {
                Some(r) => Ok(r?),
                None => Err(ShimError::FailedPrecondition(format!(
                    "container {id} is not running or has no CRI log"
                ))),
            };
        }
        let req = UpdateTaskRequest {
            id: id.to_string(),
            annotations: HashMap::from([(REOPEN_LOG_ANNOTATION.to_string(), "true".to_string())]),
            ..Default::default()
        };
        self.task.update(self.ctx(), &req).await?;
        Ok(())
    }

    /// Pids of the container's processes.
    pub async fn pids(&self, id: &str) -> Result<Vec<u32>> {
        let req = PidsRequest {
            id: id.to_string(),
            ..Default::default()
        };
        let r = self.task.pids(self.ctx(), &req).await?;
        Ok(r.processes.iter().map(|p| p.pid).collect())
    }

    /// Closes the process's stdin (after the attached client went away).
    pub async fn close_stdin(&self, id: &str, exec_id: &str) -> Result<()> {
        let req = CloseIORequest {
            id: id.to_string(),
            exec_id: exec_id.to_string(),
            stdin: true,
            ..Default::default()
        };
        self.task.close_io(self.ctx(), &req).await?;
        Ok(())
    }

    pub async fn resize_pty(&self, id: &str, exec_id: &str, width: u32, height: u32) -> Result<()> {
        let req = ResizePtyRequest {
            id: id.to_string(),
            exec_id: exec_id.to_string(),
            width,
            height,
            ..Default::default()
        };
        self.task.resize_pty(self.ctx(), &req).await?;
        Ok(())
    }

    /// The shim's own pid.
    pub async fn shim_pid(&self) -> Result<u32> {
        let r = self
            .task
            .connect(self.ctx(), &ConnectRequest::default())
            .await?;
        Ok(r.shim_pid)
    }

    /// Asks the shim to exit: only when it holds no container, unless `now` (containerd-style
    /// shims ignore `now`: their tasks must be deleted first).
    pub async fn shutdown(&self, now: bool) -> Result<()> {
        let req = ShutdownRequest {
            now,
            ..Default::default()
        };
        match self.task.shutdown(self.ctx(), &req).await {
            Ok(_) => Ok(()),
            // The shim may exit before answering.
            Err(ttrpc::Error::RemoteClosed | ttrpc::Error::LocalClosed) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use containerd_shim_protos::ttrpc::Code;

    #[test]
    fn start_output_formats() {
        let r = BootstrapResult {
            version: 3,
            address: "unix:///run/crust/s/abc".into(),
            protocol: "ttrpc".into(),
            ..Default::default()
        };
        let bytes = r.write_to_bytes().unwrap();
        assert_eq!(
            parse_start_output(&bytes).as_deref(),
            Some("unix:///run/crust/s/abc")
        );
        assert_eq!(
            parse_start_output(br#"{"version":3,"address":"unix:///x","protocol":"ttrpc"}"#)
                .as_deref(),
            Some("unix:///x")
        );
        assert_eq!(
            parse_start_output(b"unix:///y\n").as_deref(),
            Some("unix:///y")
        );
        assert_eq!(parse_start_output(b""), None);
    }

    #[test]
    fn stdio_fields() {
        let io = TaskIo {
            stdin: Some("/p/stdin".into()),
            output: Output::CriLog("/var/log/pods/c.log".into()),
            terminal: false,
        };
        assert_eq!(
            io.fields(),
            (
                "/p/stdin".to_string(),
                "file:///var/log/pods/c.log".to_string(),
                String::new()
            )
        );
        let io = TaskIo {
            output: Output::Paths {
                stdout: Some("/f/out".into()),
                stderr: None,
            },
            ..Default::default()
        };
        assert_eq!(
            io.fields(),
            (String::new(), "/f/out".to_string(), String::new())
        );
    }

    #[test]
    fn status_codes_map_to_variants() {
        let e: ShimError =
            ttrpc::Error::RpcStatus(ttrpc::get_status(Code::NOT_FOUND, "gone")).into();
        assert!(matches!(e, ShimError::NotFound(m) if m == "gone"));
        let e: ShimError = ttrpc::Error::RemoteClosed.into();
        assert!(matches!(e, ShimError::Unavailable(_)));
    }
}

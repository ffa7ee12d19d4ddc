//! The chaos run's two clients of one crustd: the real `crictl` and crust's own gRPC client
//! (tonic, as the e2e tests use it). Each call's outcome says what the caller may conclude:
//! done, refused by crustd, lost (no answer: it may or may not have happened) or never sent.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::json;
use tonic::Code;

use crate::cri;
use crate::cri::runtime_service_client::RuntimeServiceClient;

/// How long one call may take before the run calls it hung.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// What became of one call.
#[derive(Debug)]
pub enum Outcome<T> {
    Done(T),
    /// crustd answered with an error.
    Refused {
        code: String,
        message: String,
    },
    /// No answer (crustd died, the connection broke, the call timed out).
    Lost(String),
    /// Never reached crustd (no socket, nobody listening).
    NotSent(String),
}

impl<T> Outcome<T> {
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Outcome<U> {
        match self {
            Outcome::Done(t) => Outcome::Done(f(t)),
            Outcome::Refused { code, message } => Outcome::Refused { code, message },
            Outcome::Lost(m) => Outcome::Lost(m),
            Outcome::NotSent(m) => Outcome::NotSent(m),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Outcome::Done(_) => "done".into(),
            Outcome::Refused { code, message } => format!("refused {code}: {message}"),
            Outcome::Lost(m) => format!("lost: {m}"),
            Outcome::NotSent(m) => format!("not sent: {m}"),
        }
    }
}

/// Which client makes a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    Crictl,
    Grpc,
}

/// A pod as the chaos run asks for it; the CRI message and crictl's JSON are made from it.
#[derive(Debug, Clone)]
pub struct PodParams {
    pub name: String,
    pub log_dir: PathBuf,
    pub cgroup_parent: String,
    /// The pod's own PID namespace (an infra process), else one per container.
    pub pid_ns_pod: bool,
}

impl PodParams {
    pub fn labels(&self) -> [(String, String); 1] {
        [("chaos.name".into(), self.name.clone())]
    }

    pub fn cri(&self) -> cri::PodSandboxConfig {
        let pid = if self.pid_ns_pod {
            cri::NamespaceMode::Pod
        } else {
            cri::NamespaceMode::Container
        };
        cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: self.name.clone(),
                uid: format!("uid-{}", self.name),
                namespace: "chaos".into(),
                attempt: 0,
            }),
            hostname: self.name.clone(),
            log_directory: self.log_dir.display().to_string(),
            labels: self.labels().into_iter().collect(),
            linux: Some(cri::LinuxPodSandboxConfig {
                cgroup_parent: self.cgroup_parent.clone(),
                security_context: Some(cri::LinuxSandboxSecurityContext {
                    namespace_options: Some(cri::NamespaceOption {
                        pid: pid as i32,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// crictl's JSON of the same config (the Go structs' snake_case field names).
    fn json(&self) -> serde_json::Value {
        let c = self.cri();
        json!({
            "metadata": {"name": self.name, "uid": format!("uid-{}", self.name), "namespace": "chaos", "attempt": 0},
            "hostname": self.name,
            "log_directory": c.log_directory,
            "labels": {"chaos.name": self.name},
            "linux": {
                "cgroup_parent": self.cgroup_parent,
                "security_context": {"namespace_options": {"pid": if self.pid_ns_pod { 0 } else { 1 }}},
            },
        })
    }
}

/// A container as the chaos run asks for it.
#[derive(Debug, Clone)]
pub struct CtrParams {
    pub name: String,
    pub image: String,
    pub command: Vec<String>,
}

impl CtrParams {
    pub fn log_path(&self) -> String {
        format!("{}/0.log", self.name)
    }

    pub fn cri(&self) -> cri::ContainerConfig {
        cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata {
                name: self.name.clone(),
                attempt: 0,
            }),
            image: Some(cri::ImageSpec {
                image: self.image.clone(),
                ..Default::default()
            }),
            command: self.command.clone(),
            log_path: self.log_path(),
            labels: [("chaos.name".to_string(), self.name.clone())].into(),
            ..Default::default()
        }
    }

    fn json(&self) -> serde_json::Value {
        json!({
            "metadata": {"name": self.name, "attempt": 0},
            "image": {"image": self.image},
            "command": self.command,
            "log_path": self.log_path(),
            "labels": {"chaos.name": self.name},
        })
    }
}

/// Both clients of one crustd.
#[derive(Debug, Clone)]
pub struct Client {
    pub socket: PathBuf,
    crictl_config: PathBuf,
    /// Where the config files handed to crictl are written.
    files: PathBuf,
}

impl Client {
    pub fn new(socket: &Path, files: &Path) -> anyhow::Result<Client> {
        std::fs::create_dir_all(files)?;
        Ok(Client {
            socket: socket.to_path_buf(),
            crictl_config: crate::crictl::config(socket)?,
            files: files.to_path_buf(),
        })
    }

    async fn rt(&self) -> Result<RuntimeServiceClient<tonic::transport::Channel>, String> {
        crate::channel(&self.socket)
            .await
            .map(RuntimeServiceClient::new)
            .map_err(|e| format!("connect {}: {e:#}", self.socket.display()))
    }

    /// One gRPC call on a fresh connection, bounded by [`CALL_TIMEOUT`].
    async fn grpc<T, F, Fut>(&self, call: F) -> Outcome<T>
    where
        F: FnOnce(RuntimeServiceClient<tonic::transport::Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let rt = match self.rt().await {
            Ok(rt) => rt,
            Err(e) => return Outcome::NotSent(e),
        };
        match tokio::time::timeout(CALL_TIMEOUT, call(rt)).await {
            Err(_) => Outcome::Lost(format!("no answer within {CALL_TIMEOUT:?}")),
            Ok(Ok(r)) => Outcome::Done(r.into_inner()),
            Ok(Err(s)) => status_outcome(&s),
        }
    }

    /// One crictl command; its stdout when it succeeded.
    async fn crictl(&self, args: &[&str]) -> Outcome<String> {
        let mut cmd = tokio::process::Command::new(crate::crictl::path());
        cmd.arg("--config")
            .arg(&self.crictl_config)
            .arg("--timeout")
            .arg(format!("{}s", CALL_TIMEOUT.as_secs()))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let out = match tokio::time::timeout(CALL_TIMEOUT + Duration::from_secs(30), cmd.output())
            .await
        {
            Err(_) => return Outcome::Lost(format!("crictl {args:?} did not end")),
            Ok(Err(e)) => return Outcome::NotSent(format!("running crictl: {e}")),
            Ok(Ok(out)) => out,
        };
        if out.status.success() {
            return Outcome::Done(String::from_utf8_lossy(&out.stdout).trim().to_string());
        }
        crictl_outcome(&String::from_utf8_lossy(&out.stderr))
    }

    fn write_json(&self, name: &str, value: &serde_json::Value) -> Result<PathBuf, String> {
        let p = self.files.join(name);
        std::fs::write(&p, value.to_string()).map_err(|e| format!("{}: {e}", p.display()))?;
        Ok(p)
    }

    pub async fn run_pod(&self, via: Via, pod: &PodParams) -> Outcome<String> {
        match via {
            Via::Grpc => self
                .grpc(|mut rt| async move {
                    rt.run_pod_sandbox(cri::RunPodSandboxRequest {
                        config: Some(pod.cri()),
                        runtime_handler: String::new(),
                    })
                    .await
                })
                .await
                .map(|r| r.pod_sandbox_id),
            Via::Crictl => match self.write_json(&format!("{}.pod.json", pod.name), &pod.json()) {
                Ok(p) => self.crictl(&["runp", &p.display().to_string()]).await,
                Err(e) => Outcome::NotSent(e),
            },
        }
    }

    pub async fn create(
        &self,
        via: Via,
        pod_id: &str,
        pod: &PodParams,
        ctr: &CtrParams,
    ) -> Outcome<String> {
        match via {
            Via::Grpc => self
                .grpc(|mut rt| async move {
                    rt.create_container(cri::CreateContainerRequest {
                        pod_sandbox_id: pod_id.into(),
                        config: Some(ctr.cri()),
                        sandbox_config: Some(pod.cri()),
                    })
                    .await
                })
                .await
                .map(|r| r.container_id),
            Via::Crictl => {
                let files = self
                    .write_json(&format!("{}.pod.json", pod.name), &pod.json())
                    .and_then(|p| {
                        let c = self.write_json(&format!("{}.ctr.json", ctr.name), &ctr.json())?;
                        Ok((p, c))
                    });
                match files {
                    Ok((p, c)) => {
                        let (p, c) = (p.display().to_string(), c.display().to_string());
                        self.crictl(&["create", pod_id, &c, &p]).await
                    }
                    Err(e) => Outcome::NotSent(e),
                }
            }
        }
    }

    pub async fn start(&self, via: Via, id: &str) -> Outcome<()> {
        match via {
            Via::Grpc => self
                .grpc(|mut rt| async move {
                    rt.start_container(cri::StartContainerRequest {
                        container_id: id.into(),
                    })
                    .await
                })
                .await
                .map(drop),
            Via::Crictl => self.crictl(&["start", id]).await.map(drop),
        }
    }

    pub async fn stop(&self, via: Via, id: &str, timeout: i64) -> Outcome<()> {
        match via {
            Via::Grpc => self
                .grpc(|mut rt| async move {
                    rt.stop_container(cri::StopContainerRequest {
                        container_id: id.into(),
                        timeout,
                    })
                    .await
                })
                .await
                .map(drop),
            Via::Crictl => self
                .crictl(&["stop", "--timeout", &timeout.to_string(), id])
                .await
                .map(drop),
        }
    }

    pub async fn remove(&self, via: Via, id: &str) -> Outcome<()> {
        match via {
            Via::Grpc => self
                .grpc(|mut rt| async move {
                    rt.remove_container(cri::RemoveContainerRequest {
                        container_id: id.into(),
                    })
                    .await
                })
                .await
                .map(drop),
            // --force: crictl refuses a running container by itself otherwise.
            Via::Crictl => self.crictl(&["rm", "--force", id]).await.map(drop),
        }
    }

    pub async fn stop_pod(&self, via: Via, id: &str) -> Outcome<()> {
        match via {
            Via::Grpc => self
                .grpc(|mut rt| async move {
                    rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
                        pod_sandbox_id: id.into(),
                    })
                    .await
                })
                .await
                .map(drop),
            Via::Crictl => self.crictl(&["stopp", id]).await.map(drop),
        }
    }

    pub async fn remove_pod(&self, via: Via, id: &str) -> Outcome<()> {
        match via {
            Via::Grpc => self
                .grpc(|mut rt| async move {
                    rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
                        pod_sandbox_id: id.into(),
                    })
                    .await
                })
                .await
                .map(drop),
            Via::Crictl => self.crictl(&["rmp", "--force", id]).await.map(drop),
        }
    }

    /// `echo <token>` in the container: ExecSync over gRPC, or `crictl exec` through the
    /// streaming server. Its stdout and exit code.
    pub async fn exec(&self, via: Via, id: &str, token: &str) -> Outcome<(String, i32)> {
        match via {
            Via::Grpc => self
                .grpc(|mut rt| async move {
                    rt.exec_sync(cri::ExecSyncRequest {
                        container_id: id.into(),
                        cmd: vec!["echo".into(), token.into()],
                        timeout: 20,
                    })
                    .await
                })
                .await
                .map(|r| (String::from_utf8_lossy(&r.stdout).into_owned(), r.exit_code)),
            Via::Crictl => self
                .crictl(&["exec", id, "echo", token])
                .await
                .map(|out| (format!("{out}\n"), 0)),
        }
    }

    /// ContainerStatus (verbose): None when crustd does not know the container.
    pub async fn container_status(
        &self,
        id: &str,
    ) -> Outcome<Option<(cri::ContainerStatus, serde_json::Value)>> {
        let out = self
            .grpc(|mut rt| async move {
                rt.container_status(cri::ContainerStatusRequest {
                    container_id: id.into(),
                    verbose: true,
                })
                .await
            })
            .await;
        not_found_is_none(out).map(|r| {
            r.and_then(|r| {
                let info = r
                    .info
                    .get("info")
                    .and_then(|i| serde_json::from_str(i).ok())
                    .unwrap_or_default();
                Some((r.status?, info))
            })
        })
    }

    /// PodSandboxStatus (verbose): None when crustd does not know the pod.
    pub async fn pod_status(
        &self,
        id: &str,
    ) -> Outcome<Option<(cri::PodSandboxStatus, serde_json::Value)>> {
        let out = self
            .grpc(|mut rt| async move {
                rt.pod_sandbox_status(cri::PodSandboxStatusRequest {
                    pod_sandbox_id: id.into(),
                    verbose: true,
                })
                .await
            })
            .await;
        not_found_is_none(out).map(|r| {
            r.and_then(|r| {
                let info = r
                    .info
                    .get("info")
                    .and_then(|i| serde_json::from_str(i).ok())
                    .unwrap_or_default();
                Some((r.status?, info))
            })
        })
    }

    pub async fn list_pods(&self) -> Outcome<Vec<cri::PodSandbox>> {
        self.grpc(|mut rt| async move {
            rt.list_pod_sandbox(cri::ListPodSandboxRequest::default())
                .await
        })
        .await
        .map(|r| r.items)
    }

    pub async fn list_containers(&self) -> Outcome<Vec<cri::Container>> {
        self.grpc(|mut rt| async move {
            rt.list_containers(cri::ListContainersRequest::default())
                .await
        })
        .await
        .map(|r| r.containers)
    }

    /// Waits until crustd answers Version (it is being restarted), up to `within`.
    pub async fn wait_up(&self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let out = self
                .grpc(|mut rt| async move { rt.version(cri::VersionRequest::default()).await })
                .await;
            if matches!(out, Outcome::Done(_)) {
                return true;
            }
            if tokio::time::Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn not_found_is_none<T>(out: Outcome<T>) -> Outcome<Option<T>> {
    match out {
        Outcome::Refused { code, .. } if code == "NotFound" => Outcome::Done(None),
        o => o.map(Some),
    }
}

/// A gRPC error: crustd's own answer, or none (the connection failed under the call).
fn status_outcome<T>(s: &tonic::Status) -> Outcome<T> {
    match s.code() {
        Code::Unavailable | Code::Unknown | Code::Cancelled | Code::DeadlineExceeded => {
            Outcome::Lost(format!("{:?}: {}", s.code(), s.message()))
        }
        code => Outcome::Refused {
            code: format!("{code:?}"),
            message: s.message().to_string(),
        },
    }
}

/// What crictl's stderr says of a failed command: `rpc error: code = X desc = Y` is
/// crustd's answer unless it is a transport failure; a failed dial means nothing was sent.
pub fn crictl_outcome<T>(stderr: &str) -> Outcome<T> {
    let text = stderr.trim();
    let dial_failed = [
        "connect: connection refused",
        "connect: no such file or directory",
    ]
    .iter()
    .any(|m| text.contains(m));
    if dial_failed {
        return Outcome::NotSent(text.to_string());
    }
    let Some(i) = text.rfind("code = ") else {
        // The Exec call was answered; the streaming session's end says how the exec went.
        if text.contains("execing command in container") {
            return Outcome::Refused {
                code: "Exec".into(),
                message: text.to_string(),
            };
        }
        return Outcome::Lost(text.to_string());
    };
    let rest = &text[i + "code = ".len()..];
    let code = rest
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string();
    let message = rest
        .split_once("desc = ")
        .map(|(_, d)| d.trim_end_matches('"').to_string())
        .unwrap_or_default();
    match code.as_str() {
        "Unavailable" | "Unknown" | "Canceled" | "DeadlineExceeded" => {
            Outcome::Lost(format!("{code}: {message}"))
        }
        _ => Outcome::Refused { code, message },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crictl_errors_are_classified() {
        let refused: Outcome<()> = crictl_outcome(
            r#"time="x" level=fatal msg="starting the container \"ab\": rpc error: code = NotFound desc = container \"ab\" not found""#,
        );
        assert!(
            matches!(&refused, Outcome::Refused { code, message } if code == "NotFound" && message == r#"container \"ab\" not found"#),
            "{refused:?}"
        );
        let lost: Outcome<()> = crictl_outcome(
            r#"level=fatal msg="run pod sandbox: rpc error: code = Unavailable desc = error reading from server: EOF""#,
        );
        assert!(matches!(lost, Outcome::Lost(_)), "{lost:?}");
        let not_sent: Outcome<()> = crictl_outcome(
            r#"level=fatal msg="validate service connection: rpc error: code = Unavailable desc = connection error: desc = \"transport: Error while dialing: dial unix /x/crust.sock: connect: connection refused\"""#,
        );
        assert!(matches!(not_sent, Outcome::NotSent(_)), "{not_sent:?}");
        let exec: Outcome<()> = crictl_outcome(
            r#"level=fatal msg="execing command in container ab: shim: runc: exec failed""#,
        );
        assert!(
            matches!(&exec, Outcome::Refused { code, .. } if code == "Exec"),
            "{exec:?}"
        );
        let odd: Outcome<()> = crictl_outcome("panic: something else");
        assert!(matches!(odd, Outcome::Lost(_)), "{odd:?}");
    }

    #[test]
    fn the_json_crictl_gets_says_what_the_cri_message_says() {
        let pod = PodParams {
            name: "w0-p1".into(),
            log_dir: "/l/w0-p1".into(),
            cgroup_parent: "/crust-e2e-100".into(),
            pid_ns_pod: true,
        };
        let j = pod.json();
        let c = pod.cri();
        assert_eq!(j["metadata"]["uid"], c.metadata.as_ref().unwrap().uid);
        assert_eq!(j["log_directory"], c.log_directory);
        assert_eq!(
            j["linux"]["security_context"]["namespace_options"]["pid"],
            cri::NamespaceMode::Pod as i32
        );
        let ctr = CtrParams {
            name: "c1".into(),
            image: "i".into(),
            command: vec!["sh".into()],
        };
        assert_eq!(ctr.json()["log_path"], ctr.cri().log_path);
    }
}

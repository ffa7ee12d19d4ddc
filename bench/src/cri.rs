//! A CRI client for any runtime's unix socket, with a timeout on every call,
//! `Unimplemented` turned into [`BenchError::Unsupported`], and the request
//! shapes the scenarios send (what kubelet sends, minus what they do not need).

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use k8s_cri::v1 as cri;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::{Channel, Endpoint, Uri};

/// Label every pod and container the bench creates carries; its value is the
/// run's id, so a run can find (and remove) exactly what it made.
pub const RUN_LABEL: &str = "io.crust.bench.run";

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The runtime answered `Unimplemented`: the scenario is reported as
    /// unsupported, not as a failure.
    #[error("{rpc} is not implemented by this runtime")]
    Unsupported { rpc: &'static str },
    #[error("{rpc} failed: {code:?}: {message}")]
    Rpc {
        rpc: &'static str,
        code: tonic::Code,
        message: String,
    },
    #[error("{rpc} did not answer within {secs} s")]
    Timeout { rpc: &'static str, secs: u64 },
    #[error("cannot connect to {endpoint}: {message}")]
    Connect { endpoint: String, message: String },
    #[error("{0}")]
    Invalid(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
}

/// The socket path of `unix:///path` or a bare `/path`.
pub fn socket_path(endpoint: &str) -> Result<PathBuf, BenchError> {
    let path = endpoint.strip_prefix("unix://").unwrap_or(endpoint);
    if path.starts_with('/') {
        Ok(PathBuf::from(path))
    } else {
        Err(BenchError::Invalid(format!(
            "endpoint {endpoint:?} is not unix:///absolute/path"
        )))
    }
}

/// Clients of one endpoint. Cheap to clone: clones share the connection.
#[derive(Clone)]
pub struct Cri {
    rt: RuntimeServiceClient<Channel>,
    img: ImageServiceClient<Channel>,
    timeout: Duration,
}

impl Cri {
    pub async fn connect(endpoint: &str, timeout: Duration) -> Result<Cri, BenchError> {
        let socket = socket_path(endpoint)?;
        let connect_err = |e: &dyn std::fmt::Display| BenchError::Connect {
            endpoint: endpoint.to_string(),
            message: e.to_string(),
        };
        let channel = Endpoint::try_from("http://[::]:50051")
            .map_err(|e| connect_err(&e))?
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let socket = socket.clone();
                async move {
                    Ok::<_, std::io::Error>(TokioIo::new(
                        tokio::net::UnixStream::connect(socket).await?,
                    ))
                }
            }))
            .await
            .map_err(|e| connect_err(&e))?;
        let max = 64 * 1024 * 1024;
        Ok(Cri {
            rt: RuntimeServiceClient::new(channel.clone()).max_decoding_message_size(max),
            img: ImageServiceClient::new(channel).max_decoding_message_size(max),
            timeout,
        })
    }

    /// Runs one RPC under the timeout and measures its round trip.
    async fn timed<T>(
        &self,
        rpc: &'static str,
        timeout: Duration,
        fut: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<(T, Duration), BenchError> {
        timed(rpc, timeout, fut).await
    }

    pub async fn version(&self) -> Result<(cri::VersionResponse, Duration), BenchError> {
        let mut c = self.rt.clone();
        self.timed(
            "Version",
            self.timeout,
            c.version(cri::VersionRequest::default()),
        )
        .await
    }

    pub async fn status(&self) -> Result<(cri::StatusResponse, Duration), BenchError> {
        let mut c = self.rt.clone();
        self.timed(
            "Status",
            self.timeout,
            c.status(cri::StatusRequest::default()),
        )
        .await
    }

    pub async fn image_status(
        &self,
        image: &str,
    ) -> Result<(Option<cri::Image>, Duration), BenchError> {
        let mut c = self.img.clone();
        let req = cri::ImageStatusRequest {
            image: Some(image_spec(image)),
            verbose: false,
        };
        let (r, d) = self
            .timed("ImageStatus", self.timeout, c.image_status(req))
            .await?;
        Ok((r.image, d))
    }

    /// Pulls may take long (a large image on a loaded machine): ten timeouts.
    pub async fn pull_image(&self, image: &str) -> Result<(String, Duration), BenchError> {
        let mut c = self.img.clone();
        let req = cri::PullImageRequest {
            image: Some(image_spec(image)),
            ..Default::default()
        };
        let (r, d) = self
            .timed("PullImage", self.timeout * 10, c.pull_image(req))
            .await?;
        Ok((r.image_ref, d))
    }

    pub async fn remove_image(&self, image: &str) -> Result<Duration, BenchError> {
        let mut c = self.img.clone();
        let req = cri::RemoveImageRequest {
            image: Some(image_spec(image)),
        };
        Ok(self
            .timed("RemoveImage", self.timeout, c.remove_image(req))
            .await?
            .1)
    }

    pub async fn run_pod(
        &self,
        config: &cri::PodSandboxConfig,
    ) -> Result<(String, Duration), BenchError> {
        let mut c = self.rt.clone();
        let req = cri::RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: String::new(),
        };
        let (r, d) = self
            .timed("RunPodSandbox", self.timeout, c.run_pod_sandbox(req))
            .await?;
        Ok((r.pod_sandbox_id, d))
    }

    pub async fn stop_pod(&self, id: &str) -> Result<Duration, BenchError> {
        let mut c = self.rt.clone();
        let req = cri::StopPodSandboxRequest {
            pod_sandbox_id: id.to_string(),
        };
        Ok(self
            .timed("StopPodSandbox", self.timeout, c.stop_pod_sandbox(req))
            .await?
            .1)
    }

    pub async fn remove_pod(&self, id: &str) -> Result<Duration, BenchError> {
        let mut c = self.rt.clone();
        let req = cri::RemovePodSandboxRequest {
            pod_sandbox_id: id.to_string(),
        };
        Ok(self
            .timed("RemovePodSandbox", self.timeout, c.remove_pod_sandbox(req))
            .await?
            .1)
    }

    /// PodSandboxStatus; `verbose` as `crictl inspectp` asks for it.
    pub async fn pod_status(&self, id: &str, verbose: bool) -> Result<Duration, BenchError> {
        let mut c = self.rt.clone();
        let req = cri::PodSandboxStatusRequest {
            pod_sandbox_id: id.to_string(),
            verbose,
        };
        Ok(self
            .timed("PodSandboxStatus", self.timeout, c.pod_sandbox_status(req))
            .await?
            .1)
    }

    /// Pods carrying `label=value`, or every pod when `label` is `None`.
    pub async fn list_pods(
        &self,
        label: Option<(&str, &str)>,
    ) -> Result<(Vec<String>, Duration), BenchError> {
        let mut c = self.rt.clone();
        let req = cri::ListPodSandboxRequest {
            filter: label.map(|(k, v)| cri::PodSandboxFilter {
                label_selector: HashMap::from([(k.to_string(), v.to_string())]),
                ..Default::default()
            }),
        };
        let (r, d) = self
            .timed("ListPodSandbox", self.timeout, c.list_pod_sandbox(req))
            .await?;
        Ok((r.items.into_iter().map(|p| p.id).collect(), d))
    }

    pub async fn list_containers(
        &self,
        label: Option<(&str, &str)>,
    ) -> Result<(Vec<String>, Duration), BenchError> {
        let mut c = self.rt.clone();
        let req = cri::ListContainersRequest {
            filter: label.map(|(k, v)| cri::ContainerFilter {
                label_selector: HashMap::from([(k.to_string(), v.to_string())]),
                ..Default::default()
            }),
        };
        let (r, d) = self
            .timed("ListContainers", self.timeout, c.list_containers(req))
            .await?;
        Ok((r.containers.into_iter().map(|c| c.id).collect(), d))
    }

    pub async fn create_container(
        &self,
        pod_id: &str,
        config: &cri::ContainerConfig,
        pod_config: &cri::PodSandboxConfig,
    ) -> Result<(String, Duration), BenchError> {
        let mut c = self.rt.clone();
        let req = cri::CreateContainerRequest {
            pod_sandbox_id: pod_id.to_string(),
            config: Some(config.clone()),
            sandbox_config: Some(pod_config.clone()),
        };
        let (r, d) = self
            .timed("CreateContainer", self.timeout, c.create_container(req))
            .await?;
        Ok((r.container_id, d))
    }

    pub async fn start_container(&self, id: &str) -> Result<Duration, BenchError> {
        let mut c = self.rt.clone();
        let req = cri::StartContainerRequest {
            container_id: id.to_string(),
        };
        Ok(self
            .timed("StartContainer", self.timeout, c.start_container(req))
            .await?
            .1)
    }

    pub async fn stop_container(&self, id: &str, grace_secs: i64) -> Result<Duration, BenchError> {
        let mut c = self.rt.clone();
        let req = cri::StopContainerRequest {
            container_id: id.to_string(),
            timeout: grace_secs,
        };
        let limit = self.timeout + Duration::from_secs(grace_secs.max(0) as u64);
        Ok(self
            .timed("StopContainer", limit, c.stop_container(req))
            .await?
            .1)
    }

    pub async fn remove_container(&self, id: &str) -> Result<Duration, BenchError> {
        let mut c = self.rt.clone();
        let req = cri::RemoveContainerRequest {
            container_id: id.to_string(),
        };
        Ok(self
            .timed("RemoveContainer", self.timeout, c.remove_container(req))
            .await?
            .1)
    }

    pub async fn container_status(&self, id: &str) -> Result<Duration, BenchError> {
        let mut c = self.rt.clone();
        let req = cri::ContainerStatusRequest {
            container_id: id.to_string(),
            verbose: false,
        };
        Ok(self
            .timed("ContainerStatus", self.timeout, c.container_status(req))
            .await?
            .1)
    }

    pub async fn list_container_stats(&self) -> Result<(usize, Duration), BenchError> {
        let mut c = self.rt.clone();
        let req = cri::ListContainerStatsRequest { filter: None };
        let (r, d) = self
            .timed(
                "ListContainerStats",
                self.timeout,
                c.list_container_stats(req),
            )
            .await?;
        Ok((r.stats.len(), d))
    }

    /// ListPodSandboxStats of every pod; (pods answered, round trip).
    pub async fn list_pod_sandbox_stats(&self) -> Result<(usize, Duration), BenchError> {
        let mut c = self.rt.clone();
        let req = cri::ListPodSandboxStatsRequest { filter: None };
        let (r, d) = self
            .timed(
                "ListPodSandboxStats",
                self.timeout,
                c.list_pod_sandbox_stats(req),
            )
            .await?;
        Ok((r.stats.len(), d))
    }

    /// ListPodSandboxMetrics; (pods answered, metrics in all, round trip).
    pub async fn list_pod_sandbox_metrics(&self) -> Result<(usize, usize, Duration), BenchError> {
        let mut c = self.rt.clone();
        let req = cri::ListPodSandboxMetricsRequest {};
        let (r, d) = self
            .timed(
                "ListPodSandboxMetrics",
                self.timeout,
                c.list_pod_sandbox_metrics(req),
            )
            .await?;
        let metrics = r
            .pod_metrics
            .iter()
            .map(|p| {
                p.metrics.len()
                    + p.container_metrics
                        .iter()
                        .map(|c| c.metrics.len())
                        .sum::<usize>()
            })
            .sum();
        Ok((r.pod_metrics.len(), metrics, d))
    }

    pub async fn container_stats(&self, id: &str) -> Result<Duration, BenchError> {
        let mut c = self.rt.clone();
        let req = cri::ContainerStatsRequest {
            container_id: id.to_string(),
        };
        Ok(self
            .timed("ContainerStats", self.timeout, c.container_stats(req))
            .await?
            .1)
    }

    /// The streaming URL for forwarding `port` of a pod.
    pub async fn port_forward(
        &self,
        pod_id: &str,
        port: u16,
    ) -> Result<(String, Duration), BenchError> {
        let mut c = self.rt.clone();
        let req = cri::PortForwardRequest {
            pod_sandbox_id: pod_id.to_string(),
            port: vec![i32::from(port)],
        };
        let (r, d) = self
            .timed("PortForward", self.timeout, c.port_forward(req))
            .await?;
        Ok((r.url, d))
    }

    /// Exec of `cmd` with stdout only: the streaming URL.
    pub async fn exec(&self, id: &str, cmd: &[&str]) -> Result<(String, Duration), BenchError> {
        let mut c = self.rt.clone();
        let req = cri::ExecRequest {
            container_id: id.to_string(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            stdout: true,
            ..Default::default()
        };
        let (r, d) = self.timed("Exec", self.timeout, c.exec(req)).await?;
        Ok((r.url, d))
    }

    pub async fn exec_sync(
        &self,
        id: &str,
        cmd: &[&str],
    ) -> Result<(cri::ExecSyncResponse, Duration), BenchError> {
        let mut c = self.rt.clone();
        let req = cri::ExecSyncRequest {
            container_id: id.to_string(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            timeout: 10,
        };
        self.timed("ExecSync", self.timeout, c.exec_sync(req)).await
    }
}

/// Runs one RPC under `timeout` and measures its round trip; Unimplemented
/// becomes [`BenchError::Unsupported`].
async fn timed<T>(
    rpc: &'static str,
    timeout: Duration,
    fut: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<(T, Duration), BenchError> {
    let start = Instant::now();
    let res = tokio::time::timeout(timeout, fut).await;
    let took = start.elapsed();
    match res {
        Err(_) => Err(BenchError::Timeout {
            rpc,
            secs: timeout.as_secs(),
        }),
        Ok(Err(s)) if s.code() == tonic::Code::Unimplemented => {
            Err(BenchError::Unsupported { rpc })
        }
        Ok(Err(s)) => Err(BenchError::Rpc {
            rpc,
            code: s.code(),
            message: s.message().to_string(),
        }),
        Ok(Ok(r)) => Ok((r.into_inner(), took)),
    }
}

pub fn image_spec(image: &str) -> cri::ImageSpec {
    cri::ImageSpec {
        image: image.to_string(),
        ..Default::default()
    }
}

/// A pod as kubelet would ask for it, with the default namespace options
/// (own network, IPC and UTS; a PID namespace per container) and no cgroup
/// parent, so the runtime's cgroups are all it creates and removes.
pub fn pod_config(run_id: &str, index: usize, log_root: &Path) -> cri::PodSandboxConfig {
    let name = format!("bench-{run_id}-{index}");
    let uid = format!("{run_id}-{index:05}");
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.clone(),
            uid: uid.clone(),
            namespace: "crust-bench".to_string(),
            attempt: 0,
        }),
        hostname: format!("bench-{index}"),
        log_directory: log_root.join(&uid).display().to_string(),
        labels: HashMap::from([(RUN_LABEL.to_string(), run_id.to_string())]),
        linux: Some(cri::LinuxPodSandboxConfig {
            security_context: Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(cri::NamespaceOption {
                    network: cri::NamespaceMode::Pod as i32,
                    pid: cri::NamespaceMode::Container as i32,
                    ipc: cri::NamespaceMode::Pod as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// What the `sleep` containers run: a shell that exits on SIGTERM (a bare
/// `sleep` as PID 1 ignores it, and every stop would wait out its grace
/// period) around a long sleep.
pub const SLEEP_COMMAND: [&str; 3] = ["/bin/sh", "-c", "trap 'exit 0' TERM; sleep 3600 & wait"];

pub fn sleep_container(run_id: &str, name: &str, image: &str) -> cri::ContainerConfig {
    container(run_id, name, image, &SLEEP_COMMAND)
}

/// The port the echo container listens on.
pub const ECHO_PORT: u16 = 8080;

/// A container echoing back whatever a TCP client on ECHO_PORT sends
/// (busybox `nc -ll`: a new `cat` per connection, for ever).
pub fn echo_container(run_id: &str, image: &str) -> cri::ContainerConfig {
    let port = ECHO_PORT.to_string();
    container(
        run_id,
        "echo",
        image,
        &["/usr/bin/nc", "-ll", "-p", &port, "-e", "/bin/cat"],
    )
}

fn container(run_id: &str, name: &str, image: &str, command: &[&str]) -> cri::ContainerConfig {
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: name.to_string(),
            attempt: 0,
        }),
        image: Some(image_spec(image)),
        command: command.iter().map(|s| s.to_string()).collect(),
        log_path: format!("{name}.log"),
        labels: HashMap::from([(RUN_LABEL.to_string(), run_id.to_string())]),
        linux: Some(cri::LinuxContainerConfig::default()),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        assert_eq!(
            socket_path("unix:///run/x.sock").expect("ok"),
            PathBuf::from("/run/x.sock")
        );
        assert_eq!(
            socket_path("/run/x.sock").expect("ok"),
            PathBuf::from("/run/x.sock")
        );
        assert!(socket_path("tcp://1.2.3.4:5").is_err());
        assert!(socket_path("unix://relative").is_err());
    }

    #[test]
    fn pods_are_labelled_and_unique() {
        let a = pod_config("r1", 1, Path::new("/tmp/logs"));
        let b = pod_config("r1", 2, Path::new("/tmp/logs"));
        assert_ne!(a.metadata, b.metadata);
        assert_eq!(a.labels.get(RUN_LABEL).map(String::as_str), Some("r1"));
        assert_eq!(a.log_directory, "/tmp/logs/r1-00001");
        let c = sleep_container("r1", "sleep", "img");
        assert_eq!(c.labels.get(RUN_LABEL).map(String::as_str), Some("r1"));
        assert_eq!(c.command[0], "/bin/sh");
    }

    #[tokio::test]
    async fn answers_map_to_outcomes() {
        let t = Duration::from_secs(5);
        let ok = timed("Version", t, async { Ok(tonic::Response::new(7)) }).await;
        assert_eq!(ok.expect("ok").0, 7);
        let unimpl = timed::<()>("RunPodSandbox", t, async {
            Err(tonic::Status::unimplemented("not yet"))
        })
        .await;
        assert!(matches!(
            unimpl,
            Err(BenchError::Unsupported {
                rpc: "RunPodSandbox"
            })
        ));
        let failed = timed::<()>("PullImage", t, async {
            Err(tonic::Status::not_found("no such image"))
        })
        .await;
        match failed {
            Err(BenchError::Rpc { rpc, code, message }) => {
                assert_eq!((rpc, code), ("PullImage", tonic::Code::NotFound));
                assert_eq!(message, "no such image");
            }
            other => panic!("{other:?}"),
        }
        let slow = timed::<()>("Status", Duration::from_millis(20), async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            Ok(tonic::Response::new(()))
        })
        .await;
        assert!(matches!(
            slow,
            Err(BenchError::Timeout { rpc: "Status", .. })
        ));
    }

    #[tokio::test]
    async fn connecting_to_no_socket_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ep = format!("unix://{}", dir.path().join("none.sock").display());
        // tonic connects lazily on some versions; either connect or the first
        // call must fail, and neither may hang.
        let res = match Cri::connect(&ep, Duration::from_secs(2)).await {
            Err(e) => Err(e),
            Ok(c) => c.version().await.map(|_| ()),
        };
        assert!(res.is_err());
    }
}

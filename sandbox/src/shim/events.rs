//! The ttrpc Events service shims publish to (what containerd's `-address` /
//! `TTRPC_ADDRESS` points at).

use std::{path::Path, sync::Arc, time::SystemTime};

use async_trait::async_trait;
use containerd_shim_protos::{
    api::{Empty, ForwardRequest},
    events::task::{
        TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskOOM, TaskStart,
    },
    protobuf::Message,
    shim_async::{Events, create_events},
    topics,
    ttrpc::{self, r#async::TtrpcContext, asynchronous::Server},
};
use tokio::sync::mpsc;

use super::{Result, ShimError, to_time};

/// One event a shim published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShimEvent {
    pub namespace: String,
    pub topic: String,
    pub timestamp: Option<SystemTime>,
    pub event: TaskEvent,
}

/// The task events crust acts on, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskEvent {
    Create {
        container_id: String,
        pid: u32,
    },
    Start {
        container_id: String,
        pid: u32,
    },
    /// A process ended: `id` is the container id for its init, else the exec id.
    Exit {
        container_id: String,
        id: String,
        pid: u32,
        exit_status: u32,
        exited_at: Option<SystemTime>,
    },
    Oom {
        container_id: String,
    },
    Delete {
        container_id: String,
        pid: u32,
        exit_status: u32,
    },
    ExecAdded {
        container_id: String,
        exec_id: String,
    },
    ExecStarted {
        container_id: String,
        exec_id: String,
        pid: u32,
    },
    /// A topic crust does not decode.
    Other,
}

fn decode(topic: &str, value: &[u8]) -> std::result::Result<TaskEvent, String> {
    let e = |e: containerd_shim_protos::protobuf::Error| e.to_string();
    Ok(match topic {
        topics::TASK_CREATE_EVENT_TOPIC => {
            let m = TaskCreate::parse_from_bytes(value).map_err(e)?;
            TaskEvent::Create {
                container_id: m.container_id,
                pid: m.pid,
            }
        }
        topics::TASK_START_EVENT_TOPIC => {
            let m = TaskStart::parse_from_bytes(value).map_err(e)?;
            TaskEvent::Start {
                container_id: m.container_id,
                pid: m.pid,
            }
        }
        topics::TASK_EXIT_EVENT_TOPIC => {
            let m = TaskExit::parse_from_bytes(value).map_err(e)?;
            TaskEvent::Exit {
                exited_at: to_time(&m.exited_at),
                container_id: m.container_id,
                id: m.id,
                pid: m.pid,
                exit_status: m.exit_status,
            }
        }
        topics::TASK_OOM_EVENT_TOPIC => {
            let m = TaskOOM::parse_from_bytes(value).map_err(e)?;
            TaskEvent::Oom {
                container_id: m.container_id,
            }
        }
        topics::TASK_DELETE_EVENT_TOPIC => {
            let m = TaskDelete::parse_from_bytes(value).map_err(e)?;
            TaskEvent::Delete {
                container_id: m.container_id,
                pid: m.pid,
                exit_status: m.exit_status,
            }
        }
        topics::TASK_EXEC_ADDED_EVENT_TOPIC => {
            let m = TaskExecAdded::parse_from_bytes(value).map_err(e)?;
            TaskEvent::ExecAdded {
                container_id: m.container_id,
                exec_id: m.exec_id,
            }
        }
        topics::TASK_EXEC_STARTED_EVENT_TOPIC => {
            let m = TaskExecStarted::parse_from_bytes(value).map_err(e)?;
            TaskEvent::ExecStarted {
                container_id: m.container_id,
                exec_id: m.exec_id,
                pid: m.pid,
            }
        }
        _ => TaskEvent::Other,
    })
}

struct Handler(mpsc::UnboundedSender<ShimEvent>);

#[async_trait]
impl Events for Handler {
    async fn forward(&self, _ctx: &TtrpcContext, req: ForwardRequest) -> ttrpc::Result<Empty> {
        let env = req.envelope;
        let Some(env) = env.into_option() else {
            return Ok(Empty::new());
        };
        let value = env
            .event
            .as_ref()
            .map(|a| a.value.as_slice())
            .unwrap_or(&[]);
        let event = decode(&env.topic, value).map_err(|m| {
            ttrpc::Error::RpcStatus(ttrpc::get_status(ttrpc::Code::INVALID_ARGUMENT, m))
        })?;
        let _ = self.0.send(ShimEvent {
            timestamp: to_time(&env.timestamp),
            namespace: env.namespace,
            topic: env.topic,
            event,
        });
        Ok(Empty::new())
    }
}

/// A listening Events service; events arrive on the receiver [`EventsServer::start`] returns.
pub struct EventsServer {
    server: Server,
    address: String,
}

impl EventsServer {
    /// Listens on the unix socket `path` (replacing a stale one).
    pub async fn start(path: &Path) -> Result<(EventsServer, mpsc::UnboundedReceiver<ShimEvent>)> {
        if let Some(dir) = path.parent() {
            crust_state::private::create_dir(dir)?;
        }
        match tokio::fs::remove_file(path).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
        let address = format!("unix://{}", path.display());
        let (tx, rx) = mpsc::unbounded_channel();
        let service = create_events(Arc::new(Handler(tx)));
        let mut server = Server::new()
            .bind(&address)
            .map_err(|e| ShimError::Internal(format!("bind {address}: {e}")))?
            .register_service(service);
        server
            .start()
            .await
            .map_err(|e| ShimError::Internal(format!("events server: {e}")))?;
        Ok((EventsServer { server, address }, rx))
    }

    /// `unix:///path`, what shims are given as `-address`.
    pub fn address(&self) -> &str {
        &self.address
    }

    pub async fn shutdown(mut self) {
        let _ = self.server.shutdown().await;
        let path = self.address.trim_start_matches("unix://").to_string();
        let _ = tokio::fs::remove_file(path).await;
    }
}

#[cfg(test)]
mod tests {
    use containerd_shim_protos::{
        events::task::TaskExit,
        protobuf::well_known_types::{any::Any, timestamp::Timestamp},
        shim::event::Envelope,
        shim_async::{Client, EventsClient},
    };

    use super::*;

    #[tokio::test]
    async fn forwarded_exit_arrives_decoded() {
        let dir = tempfile::tempdir().unwrap();
        let (server, mut rx) = EventsServer::start(&dir.path().join("ev.sock"))
            .await
            .unwrap();
        let client = EventsClient::new(Client::connect(server.address()).await.unwrap());
        let exit = TaskExit {
            container_id: "c1".into(),
            id: "c1".into(),
            pid: 42,
            exit_status: 3,
            exited_at: Some(Timestamp {
                seconds: 1_700_000_000,
                ..Default::default()
            })
            .into(),
            ..Default::default()
        };
        let req = ForwardRequest {
            envelope: Some(Envelope {
                topic: topics::TASK_EXIT_EVENT_TOPIC.into(),
                namespace: "k8s.io".into(),
                event: Some(Any {
                    type_url: "containerd.events.TaskExit".into(),
                    value: exit.write_to_bytes().unwrap(),
                    ..Default::default()
                })
                .into(),
                ..Default::default()
            })
            .into(),
            ..Default::default()
        };
        client.forward(Default::default(), &req).await.unwrap();
        let ev = rx.recv().await.unwrap();
        assert_eq!(ev.namespace, "k8s.io");
        assert_eq!(
            ev.event,
            TaskEvent::Exit {
                container_id: "c1".into(),
                id: "c1".into(),
                pid: 42,
                exit_status: 3,
                exited_at: Some(
                    std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000)
                ),
            }
        );
        server.shutdown().await;
        assert!(!dir.path().join("ev.sock").exists());
    }
}

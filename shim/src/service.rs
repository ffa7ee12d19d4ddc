//! The shim v2 Task service: every container of the pod (and their execs) in one process.
//! A thin layer over the modules that do the work: `container` (create, start, delete,
//! update, stats), `process` (execs, signals, waits, state), `reaper` (exits), `oom`,
//! `runtime` (runc); each request goes to the one that owns it.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard},
    time::SystemTime,
};

use async_trait::async_trait;
use containerd_shim::{
    Task, TtrpcContext, TtrpcResult,
    api::{
        CheckpointTaskRequest, CloseIORequest, ConnectRequest, ConnectResponse, CreateTaskRequest,
        CreateTaskResponse, DeleteRequest, DeleteResponse, ExecProcessRequest, KillRequest,
        PidsRequest, PidsResponse, ResizePtyRequest, ShutdownRequest, StartRequest, StartResponse,
        StateRequest, StateResponse, StatsRequest, StatsResponse, UpdateTaskRequest, WaitRequest,
        WaitResponse,
    },
    asynchronous::{ExitSignal, monitor::monitor_subscribe},
    monitor::{Subject, Topic},
    protos::{
        protobuf::{
            Message, MessageField, well_known_types::empty::Empty,
            well_known_types::timestamp::Timestamp,
        },
        ttrpc::{self, Code},
    },
};
use log::{debug, info, warn};

use crate::{container::Container, publisher::Publisher, reaper::Reaper};

pub use crust_shim_protocol::{CREATE_AND_START_OPTIONS, REOPEN_LOG_ANNOTATION};

pub(crate) fn status(code: Code, msg: impl ToString) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, msg))
}
pub(crate) fn not_found(what: &str, id: &str) -> ttrpc::Error {
    status(Code::NOT_FOUND, format!("{what} {id} not found"))
}
pub(crate) fn internal(msg: impl ToString) -> ttrpc::Error {
    status(Code::INTERNAL, msg)
}
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
pub(crate) fn ts(t: Option<SystemTime>) -> MessageField<Timestamp> {
    t.map(Timestamp::from).into()
}

pub(crate) struct Inner {
    pub(crate) publisher: Publisher,
    pub(crate) exit: Arc<ExitSignal>,
    pub(crate) reaper: Arc<Reaper>,
    pub(crate) containers: Mutex<HashMap<String, Container>>,
}

#[derive(Clone)]
pub struct Service(pub(crate) Arc<Inner>);

impl Service {
    pub async fn new(publisher: Publisher, exit: Arc<ExitSignal>) -> Self {
        let svc = Service(Arc::new(Inner {
            publisher,
            exit,
            reaper: Arc::new(Reaper::default()),
            containers: Mutex::new(HashMap::new()),
        }));
        match monitor_subscribe(Topic::All).await {
            Ok(mut sub) => {
                let s = svc.clone();
                tokio::spawn(async move {
                    while let Some(ev) = sub.rx.recv().await {
                        if let Subject::Pid(pid) = ev.subject {
                            s.on_exit(pid, ev.exit_code, SystemTime::now());
                        }
                    }
                });
            }
            Err(e) => warn!("subscribe to exits: {e}"),
        }
        svc
    }

    pub(crate) fn publish(&self, topic: &'static str, type_url: &'static str, ev: &impl Message) {
        self.0.publisher.publish(topic, type_url, ev);
    }

    /// Container `id`, the containers locked while it is held; NotFound when there is none.
    pub(crate) fn container(&self, id: &str) -> TtrpcResult<Locked<'_>> {
        let map = lock(&self.0.containers);
        if !map.contains_key(id) {
            return Err(not_found("container", id));
        }
        Ok(Locked {
            map,
            id: id.to_string(),
        })
    }
}

/// One container of the locked map (see [`Service::container`]).
pub(crate) struct Locked<'a> {
    map: MutexGuard<'a, HashMap<String, Container>>,
    id: String,
}

impl std::ops::Deref for Locked<'_> {
    type Target = Container;
    fn deref(&self) -> &Container {
        &self.map[&self.id]
    }
}

impl std::ops::DerefMut for Locked<'_> {
    fn deref_mut(&mut self) -> &mut Container {
        self.map
            .get_mut(&self.id)
            .expect("looked up under this lock")
    }
}

#[async_trait]
impl Task for Service {
    async fn create(
        &self,
        _ctx: &TtrpcContext,
        req: CreateTaskRequest,
    ) -> TtrpcResult<CreateTaskResponse> {
        self.create_container(req).await
    }

    async fn start(&self, _ctx: &TtrpcContext, req: StartRequest) -> TtrpcResult<StartResponse> {
        if req.exec_id.is_empty() {
            self.start_init(req).await
        } else {
            self.start_exec(req).await
        }
    }

    async fn delete(&self, _ctx: &TtrpcContext, req: DeleteRequest) -> TtrpcResult<DeleteResponse> {
        if req.exec_id.is_empty() {
            self.delete_container(req).await
        } else {
            self.delete_exec(req).await
        }
    }

    async fn pids(&self, _ctx: &TtrpcContext, req: PidsRequest) -> TtrpcResult<PidsResponse> {
        self.container_pids(req).await
    }

    async fn kill(&self, _ctx: &TtrpcContext, req: KillRequest) -> TtrpcResult<Empty> {
        self.kill_process(req).await
    }

    async fn exec(&self, _ctx: &TtrpcContext, req: ExecProcessRequest) -> TtrpcResult<Empty> {
        self.add_exec(req).await
    }

    async fn resize_pty(&self, _ctx: &TtrpcContext, req: ResizePtyRequest) -> TtrpcResult<Empty> {
        self.resize_pty_of(req).await
    }

    async fn close_io(&self, _ctx: &TtrpcContext, req: CloseIORequest) -> TtrpcResult<Empty> {
        self.close_io_of(req).await
    }

    async fn update(&self, _ctx: &TtrpcContext, req: UpdateTaskRequest) -> TtrpcResult<Empty> {
        self.update_container(req).await
    }

    async fn wait(&self, _ctx: &TtrpcContext, req: WaitRequest) -> TtrpcResult<WaitResponse> {
        self.wait_process(req).await
    }

    async fn checkpoint(
        &self,
        _ctx: &TtrpcContext,
        req: CheckpointTaskRequest,
    ) -> TtrpcResult<Empty> {
        self.checkpoint_task(req).await?;
        Ok(Empty::new())
    }

    async fn state(&self, _ctx: &TtrpcContext, req: StateRequest) -> TtrpcResult<StateResponse> {
        self.process_state(req).await
    }

    async fn stats(&self, _ctx: &TtrpcContext, req: StatsRequest) -> TtrpcResult<StatsResponse> {
        self.container_stats(req).await
    }

    async fn connect(
        &self,
        _ctx: &TtrpcContext,
        req: ConnectRequest,
    ) -> TtrpcResult<ConnectResponse> {
        let task_pid = lock(&self.0.containers)
            .get(&req.id)
            .map(|c| c.init.pid)
            .unwrap_or(0);
        Ok(ConnectResponse {
            shim_pid: std::process::id(),
            task_pid,
            version: env!("CARGO_PKG_VERSION").to_string(),
            ..Default::default()
        })
    }

    async fn shutdown(&self, _ctx: &TtrpcContext, req: ShutdownRequest) -> TtrpcResult<Empty> {
        let n = lock(&self.0.containers).len();
        if n > 0 && !req.now {
            debug!("shutdown ignored: {n} containers left");
            return Ok(Empty::new());
        }
        info!("shutting down ({n} containers left)");
        self.0.exit.signal();
        Ok(Empty::new())
    }
}

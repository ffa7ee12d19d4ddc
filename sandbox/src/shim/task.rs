//! The ttrpc client of the shim task API, speaking the service name the shim serves.
//!
//! `containerd-shim-protos` generates a client for `containerd.task.v3.Task` (what crust-shim
//! serves, as containerd 2.x shims do). containerd 1.x shims such as Debian's
//! containerd-shim-runc-v2 serve only `containerd.task.v2.Task`, whose messages are the same:
//! this client sends the same messages under the name its [`ShimFlavour`] picks.

use containerd_shim_protos::{
    api::{
        CheckpointTaskRequest, CloseIORequest, ConnectRequest, ConnectResponse, CreateTaskRequest,
        CreateTaskResponse, DeleteRequest, DeleteResponse, Empty, ExecProcessRequest, KillRequest,
        PidsRequest, PidsResponse, ResizePtyRequest, ShutdownRequest, StartRequest, StartResponse,
        StateRequest, StateResponse, StatsRequest, StatsResponse, UpdateTaskRequest, WaitRequest,
        WaitResponse,
    },
    protobuf::Message,
    shim_async::Client,
    ttrpc::{self, context::Context},
};

use super::ShimFlavour;

impl ShimFlavour {
    /// The ttrpc service name of the task API the shim serves.
    pub fn task_service(self) -> &'static str {
        match self {
            ShimFlavour::Crust => "containerd.task.v3.Task",
            // containerd 2.x shims serve v2 as well as v3.
            ShimFlavour::Containerd => "containerd.task.v2.Task",
        }
    }
}

#[derive(Clone)]
pub(super) struct TaskClient {
    client: Client,
    service: &'static str,
}

macro_rules! calls {
    ($($name:ident($method:literal, $req:ty) -> $resp:ty;)*) => {
        $(
            pub async fn $name(&self, ctx: Context, req: &$req) -> ttrpc::Result<$resp> {
                self.call(ctx, $method, req).await
            }
        )*
    };
}

impl TaskClient {
    pub fn new(client: Client, flavour: ShimFlavour) -> Self {
        TaskClient {
            client,
            service: flavour.task_service(),
        }
    }

    async fn call<Req: Message, Resp: Message>(
        &self,
        ctx: Context,
        method: &str,
        req: &Req,
    ) -> ttrpc::Result<Resp> {
        let payload = req
            .write_to_bytes()
            .map_err(|e| ttrpc::Error::Others(format!("encoding {method} request: {e}")))?;
        let creq = ttrpc::Request {
            service: self.service.to_string(),
            method: method.to_string(),
            timeout_nano: ctx.timeout_nano,
            metadata: ttrpc::context::to_pb(ctx.metadata),
            payload,
            ..Default::default()
        };
        let res = self.client.request(creq).await?;
        Resp::parse_from_bytes(&res.payload)
            .map_err(|e| ttrpc::Error::Others(format!("decoding {method} response: {e}")))
    }

    calls! {
        state("State", StateRequest) -> StateResponse;
        create("Create", CreateTaskRequest) -> CreateTaskResponse;
        start("Start", StartRequest) -> StartResponse;
        delete("Delete", DeleteRequest) -> DeleteResponse;
        pids("Pids", PidsRequest) -> PidsResponse;
        kill("Kill", KillRequest) -> Empty;
        exec("Exec", ExecProcessRequest) -> Empty;
        resize_pty("ResizePty", ResizePtyRequest) -> Empty;
        close_io("CloseIO", CloseIORequest) -> Empty;
        update("Update", UpdateTaskRequest) -> Empty;
        checkpoint("Checkpoint", CheckpointTaskRequest) -> Empty;
        wait("Wait", WaitRequest) -> WaitResponse;
        stats("Stats", StatsRequest) -> StatsResponse;
        connect("Connect", ConnectRequest) -> ConnectResponse;
        shutdown("Shutdown", ShutdownRequest) -> Empty;
    }
}

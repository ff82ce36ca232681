//! The ttrpc face of the Task service: every method overridden (the generated defaults answer
//! NOT_FOUND, which containerd reads as "task gone"), each a thin call into its operation with
//! its error mapped to a ttrpc code in one place ([`ShimError`]).

use std::sync::Arc;

use async_trait::async_trait;
use containerd_shim_protos::api::{
    CheckpointTaskRequest, CloseIORequest, ConnectRequest, ConnectResponse, CreateTaskRequest,
    CreateTaskResponse, DeleteRequest, DeleteResponse, Empty, ExecProcessRequest, KillRequest,
    PauseRequest, PidsRequest, PidsResponse, ResizePtyRequest, ResumeRequest, ShutdownRequest,
    StartRequest, StartResponse, StateRequest, StateResponse, StatsRequest, StatsResponse,
    UpdateTaskRequest, WaitRequest, WaitResponse,
};
use containerd_shim_protos::shim_async::Task;
use containerd_shim_protos::ttrpc;
use containerd_shim_protos::ttrpc::asynchronous::TtrpcContext;

use crate::error::{reply, ShimError};
use crate::sandbox::Sandbox;

/// The task service of one shim.
#[derive(Debug, Clone)]
pub struct TaskService {
    /// The sandbox it serves.
    pub sandbox: Arc<Sandbox>,
}

fn empty(r: Result<(), ShimError>) -> Result<Empty, ShimError> {
    r.map(|()| Empty::new())
}

#[async_trait]
impl Task for TaskService {
    async fn state(&self, _: &TtrpcContext, req: StateRequest) -> ttrpc::Result<StateResponse> {
        let id = req.id.clone();
        reply("state", &id, super::state(&self.sandbox, req).await)
    }

    async fn create(
        &self,
        _: &TtrpcContext,
        req: CreateTaskRequest,
    ) -> ttrpc::Result<CreateTaskResponse> {
        let id = req.id.clone();
        reply("create", &id, super::create(&self.sandbox, req).await)
    }

    async fn start(&self, _: &TtrpcContext, req: StartRequest) -> ttrpc::Result<StartResponse> {
        let id = req.id.clone();
        reply("start", &id, super::start(&self.sandbox, req).await)
    }

    async fn delete(&self, _: &TtrpcContext, req: DeleteRequest) -> ttrpc::Result<DeleteResponse> {
        let id = req.id.clone();
        reply("delete", &id, super::delete(&self.sandbox, req).await)
    }

    async fn pids(&self, _: &TtrpcContext, req: PidsRequest) -> ttrpc::Result<PidsResponse> {
        let id = req.id.clone();
        reply("pids", &id, super::pids(&self.sandbox, req).await)
    }

    async fn pause(&self, _: &TtrpcContext, req: PauseRequest) -> ttrpc::Result<Empty> {
        let id = req.id.clone();
        reply("pause", &id, empty(super::pause(&self.sandbox, req).await))
    }

    async fn resume(&self, _: &TtrpcContext, req: ResumeRequest) -> ttrpc::Result<Empty> {
        let id = req.id.clone();
        reply(
            "resume",
            &id,
            empty(super::resume(&self.sandbox, req).await),
        )
    }

    async fn checkpoint(
        &self,
        _: &TtrpcContext,
        req: CheckpointTaskRequest,
    ) -> ttrpc::Result<Empty> {
        reply(
            "checkpoint",
            &req.id,
            Err(ShimError::Unimplemented(
                "husk does not support checkpoint/restore".into(),
            )),
        )
    }

    async fn kill(&self, _: &TtrpcContext, req: KillRequest) -> ttrpc::Result<Empty> {
        let id = req.id.clone();
        reply("kill", &id, empty(super::kill(&self.sandbox, req).await))
    }

    async fn exec(&self, _: &TtrpcContext, req: ExecProcessRequest) -> ttrpc::Result<Empty> {
        let id = req.id.clone();
        reply("exec", &id, empty(super::exec(&self.sandbox, req).await))
    }

    async fn resize_pty(&self, _: &TtrpcContext, req: ResizePtyRequest) -> ttrpc::Result<Empty> {
        let id = req.id.clone();
        reply(
            "resize_pty",
            &id,
            empty(super::resize_pty(&self.sandbox, req).await),
        )
    }

    async fn close_io(&self, _: &TtrpcContext, req: CloseIORequest) -> ttrpc::Result<Empty> {
        let id = req.id.clone();
        reply(
            "close_io",
            &id,
            empty(super::close_io(&self.sandbox, req).await),
        )
    }

    async fn update(&self, _: &TtrpcContext, req: UpdateTaskRequest) -> ttrpc::Result<Empty> {
        let id = req.id.clone();
        reply(
            "update",
            &id,
            empty(super::update(&self.sandbox, req).await),
        )
    }

    async fn wait(&self, _: &TtrpcContext, req: WaitRequest) -> ttrpc::Result<WaitResponse> {
        let id = req.id.clone();
        reply("wait", &id, super::wait(&self.sandbox, req).await)
    }

    async fn stats(&self, _: &TtrpcContext, req: StatsRequest) -> ttrpc::Result<StatsResponse> {
        let id = req.id.clone();
        reply("stats", &id, super::stats(&self.sandbox, req).await)
    }

    async fn connect(
        &self,
        _: &TtrpcContext,
        req: ConnectRequest,
    ) -> ttrpc::Result<ConnectResponse> {
        let id = req.id.clone();
        reply("connect", &id, super::connect(&self.sandbox, req).await)
    }

    async fn shutdown(&self, _: &TtrpcContext, req: ShutdownRequest) -> ttrpc::Result<Empty> {
        let id = req.id.clone();
        reply(
            "shutdown",
            &id,
            empty(super::shutdown(&self.sandbox, req).await),
        )
    }
}

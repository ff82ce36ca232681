//! containerd 2.x's sandbox API (`containerd.runtime.sandbox.v1.Sandbox`), served by the shim
//! next to the Task service when a CRI runtime handler has `sandboxer = "shim"`: the pod
//! sandbox is the VM itself, so no pause container is made. CreateSandbox carries CRI's
//! PodSandboxConfig ([`crate::pod_config`]); StartSandbox boots the VM ([`lifecycle`]); the pod's
//! containers then come through the Task service as usual, joining the pod's namespaces through
//! the agent's pod anchor, with the pod's hosts, hostname and resolv.conf ([`etc`]).

pub mod etc;
pub mod lifecycle;

use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim_protos::protobuf::MessageField;
use containerd_shim_protos::sandbox_api::{
    CreateSandboxRequest, CreateSandboxResponse, PingRequest, PingResponse, PlatformRequest,
    PlatformResponse, SandboxMetricsRequest, SandboxMetricsResponse, SandboxStatusRequest,
    SandboxStatusResponse, ShutdownSandboxRequest, ShutdownSandboxResponse, StartSandboxRequest,
    StartSandboxResponse, StopSandboxRequest, StopSandboxResponse, WaitSandboxRequest,
    WaitSandboxResponse,
};
use containerd_shim_protos::sandbox_async::Sandbox as SandboxApi;
use containerd_shim_protos::ttrpc;
use containerd_shim_protos::ttrpc::asynchronous::TtrpcContext;
use containerd_shim_protos::types::platform::Platform;

use crate::error::{reply, ShimError};
use crate::sandbox::pod::PodPhase;
use crate::sandbox::Sandbox;
use lifecycle::check_sandbox_id;

/// The Sandbox service of one shim.
#[derive(Debug, Clone)]
pub struct SandboxService {
    /// The sandbox it serves (the Task service's too).
    pub sandbox: Arc<Sandbox>,
}

fn timestamp(t: SystemTime) -> MessageField<Timestamp> {
    MessageField::some(crate::events::timestamp(t))
}

impl SandboxService {
    /// The sandbox, when `id` names this shim's (NOT_FOUND otherwise, logged under `call`).
    fn ours(&self, call: &'static str, id: &str) -> ttrpc::Result<&Arc<Sandbox>> {
        reply(call, id, check_sandbox_id(&self.sandbox, id)).map(|()| &self.sandbox)
    }
}

/// containerd's architecture names (GOARCH).
fn goarch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

#[async_trait]
impl SandboxApi for SandboxService {
    async fn create_sandbox(
        &self,
        _: &TtrpcContext,
        req: CreateSandboxRequest,
    ) -> ttrpc::Result<CreateSandboxResponse> {
        let sb = self.ours("create_sandbox", &req.sandbox_id)?;
        let r = lifecycle::create(sb, &req.bundle_path, req.options.as_ref(), &req.netns_path);
        reply("create_sandbox", &req.sandbox_id, r).map(|()| CreateSandboxResponse::new())
    }

    async fn start_sandbox(
        &self,
        _: &TtrpcContext,
        req: StartSandboxRequest,
    ) -> ttrpc::Result<StartSandboxResponse> {
        let sb = self.ours("start_sandbox", &req.sandbox_id)?;
        reply("start_sandbox", &req.sandbox_id, lifecycle::start(sb).await).map(|(pid, created)| {
            let mut resp = StartSandboxResponse::new();
            resp.pid = pid;
            resp.created_at = timestamp(created);
            resp
        })
    }

    async fn platform(
        &self,
        _: &TtrpcContext,
        req: PlatformRequest,
    ) -> ttrpc::Result<PlatformResponse> {
        self.ours("platform", &req.sandbox_id)?;
        let mut p = Platform::new();
        p.os = "linux".into();
        p.architecture = goarch().into();
        let mut resp = PlatformResponse::new();
        resp.platform = MessageField::some(p);
        Ok(resp)
    }

    async fn stop_sandbox(
        &self,
        _: &TtrpcContext,
        req: StopSandboxRequest,
    ) -> ttrpc::Result<StopSandboxResponse> {
        let sb = self.ours("stop_sandbox", &req.sandbox_id)?;
        reply("stop_sandbox", &req.sandbox_id, lifecycle::stop(sb).await)
            .map(|()| StopSandboxResponse::new())
    }

    async fn wait_sandbox(
        &self,
        _: &TtrpcContext,
        req: WaitSandboxRequest,
    ) -> ttrpc::Result<WaitSandboxResponse> {
        let sb = self.ours("wait_sandbox", &req.sandbox_id)?;
        let (status, at) = sb.pod_ended().await;
        let mut resp = WaitSandboxResponse::new();
        resp.exit_status = status;
        resp.exited_at = timestamp(at);
        Ok(resp)
    }

    async fn sandbox_status(
        &self,
        _: &TtrpcContext,
        req: SandboxStatusRequest,
    ) -> ttrpc::Result<SandboxStatusResponse> {
        let sb = self.ours("sandbox_status", &req.sandbox_id)?;
        let pod = sb.pod().clone();
        let mut resp = SandboxStatusResponse::new();
        resp.sandbox_id = sb.id.clone();
        resp.state = "SANDBOX_NOTREADY".into();
        if let Some(pod) = pod {
            resp.created_at = timestamp(pod.created_at);
            match pod.phase {
                PodPhase::Ready { pid } if sb.running_vm().is_some() => {
                    resp.pid = pid;
                    resp.state = "SANDBOX_READY".into();
                }
                PodPhase::Stopped { exited_at, .. } => resp.exited_at = timestamp(exited_at),
                _ => {}
            }
        }
        Ok(resp)
    }

    async fn ping_sandbox(
        &self,
        _: &TtrpcContext,
        req: PingRequest,
    ) -> ttrpc::Result<PingResponse> {
        self.ours("ping_sandbox", &req.sandbox_id)
            .map(|_| PingResponse::new())
    }

    async fn shutdown_sandbox(
        &self,
        _: &TtrpcContext,
        req: ShutdownSandboxRequest,
    ) -> ttrpc::Result<ShutdownSandboxResponse> {
        let sb = self.ours("shutdown_sandbox", &req.sandbox_id)?;
        lifecycle::shutdown(sb).await;
        Ok(ShutdownSandboxResponse::new())
    }

    async fn sandbox_metrics(
        &self,
        _: &TtrpcContext,
        req: SandboxMetricsRequest,
    ) -> ttrpc::Result<SandboxMetricsResponse> {
        reply(
            "sandbox_metrics",
            &req.sandbox_id,
            Err(ShimError::Unimplemented(
                "SandboxMetrics: husk reports metrics per container (the task API's Stats, \
                 CRI's ContainerStats), not for the whole VM yet"
                    .into(),
            )),
        )
    }
}

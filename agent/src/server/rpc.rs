//! The ttrpc service: decode, call the [`Sandbox`], map the error (the only place that does).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use async_trait::async_trait;
use husk_protocol::agent::api;
use husk_protocol::agent::service::Agent;
use ttrpc::r#async::TtrpcContext;

use crate::error::AgentError;
use crate::sandbox::{uptime_ms, Sandbox};
use crate::stdio::StdioRequest;

/// The `husk.agent.v1.Agent` service over a sandbox.
#[derive(Debug, Clone)]
pub struct AgentService {
    sb: Arc<Sandbox>,
}

impl AgentService {
    /// The service for `sb`.
    pub fn new(sb: Arc<Sandbox>) -> Self {
        AgentService { sb }
    }
}

/// Logs a failed call with its ids, then converts the error.
fn reply<T>(call: &str, cid: &str, eid: &str, r: Result<T, AgentError>) -> ttrpc::Result<T> {
    r.map_err(|e| {
        tracing::info!(container_id = cid, exec_id = eid, code = ?e.code(), "{call}: {e}");
        e.into()
    })
}

fn empty() -> api::Empty {
    api::Empty::default()
}

#[async_trait]
impl Agent for AgentService {
    async fn check(
        &self,
        _: &TtrpcContext,
        _: api::CheckRequest,
    ) -> ttrpc::Result<api::CheckResponse> {
        Ok(api::CheckResponse {
            agent_version: husk_protocol::VERSION.into(),
            api_version: husk_protocol::agent::API_VERSION,
            kernel_release: nix::sys::utsname::uname()
                .map(|u| u.release().to_string_lossy().into_owned())
                .unwrap_or_default(),
            boot_id: self.sb.identity.boot_id(),
            uptime_ms: uptime_ms(),
            ready_ms: self.sb.ready_ms.load(Ordering::Relaxed),
            ..Default::default()
        })
    }

    async fn restored(
        &self,
        _: &TtrpcContext,
        req: api::RestoredRequest,
    ) -> ttrpc::Result<api::RestoredResponse> {
        let r = self.sb.identity.restored(&req.entropy, req.realtime_ns);
        let boot_id = reply("Restored", "", "", r)?;
        crate::logging::reopen_host_log();
        tracing::info!(boot_id = boot_id.as_str(), "restored from a template");
        Ok(api::RestoredResponse {
            boot_id,
            ..Default::default()
        })
    }

    async fn setup_sandbox(
        &self,
        _: &TtrpcContext,
        req: api::SetupSandboxRequest,
    ) -> ttrpc::Result<api::Empty> {
        reply(
            "SetupSandbox",
            "",
            "",
            crate::network::setup_sandbox(&req, self.sb.rt.config.guest),
        )
        .map(|()| empty())
    }

    async fn create_container(
        &self,
        _: &TtrpcContext,
        req: api::CreateContainerRequest,
    ) -> ttrpc::Result<api::CreateContainerResponse> {
        let stdio = StdioRequest::from_api(req.stdio.as_ref());
        let r = self
            .sb
            .create_container(&req.container_id, &req.spec_json, stdio)
            .await;
        reply("CreateContainer", &req.container_id, "", r).map(|pid| api::CreateContainerResponse {
            pid: pid as u32,
            ..Default::default()
        })
    }

    async fn exec_process(
        &self,
        _: &TtrpcContext,
        req: api::ExecProcessRequest,
    ) -> ttrpc::Result<api::Empty> {
        let stdio = StdioRequest::from_api(req.stdio.as_ref());
        let r = self
            .sb
            .exec_process(&req.container_id, &req.exec_id, &req.process_json, stdio);
        reply("ExecProcess", &req.container_id, &req.exec_id, r).map(|()| empty())
    }

    async fn start_process(
        &self,
        _: &TtrpcContext,
        req: api::ProcessRef,
    ) -> ttrpc::Result<api::StartProcessResponse> {
        let r = self.sb.start_process(&req.container_id, &req.exec_id).await;
        reply("StartProcess", &req.container_id, &req.exec_id, r).map(|pid| {
            api::StartProcessResponse {
                pid: pid as u32,
                ..Default::default()
            }
        })
    }

    async fn signal_process(
        &self,
        _: &TtrpcContext,
        req: api::SignalRequest,
    ) -> ttrpc::Result<api::Empty> {
        let r = self
            .sb
            .signal_process(&req.container_id, &req.exec_id, req.signal, req.all);
        reply("SignalProcess", &req.container_id, &req.exec_id, r).map(|()| empty())
    }

    async fn wait_process(
        &self,
        _: &TtrpcContext,
        req: api::ProcessRef,
    ) -> ttrpc::Result<api::WaitResponse> {
        let r = self.sb.wait_process(&req.container_id, &req.exec_id).await;
        reply("WaitProcess", &req.container_id, &req.exec_id, r)
    }

    async fn delete_process(
        &self,
        _: &TtrpcContext,
        req: api::ProcessRef,
    ) -> ttrpc::Result<api::Empty> {
        let r = self.sb.delete_process(&req.container_id, &req.exec_id);
        reply("DeleteProcess", &req.container_id, &req.exec_id, r).map(|()| empty())
    }

    async fn remove_container(
        &self,
        _: &TtrpcContext,
        req: api::RemoveContainerRequest,
    ) -> ttrpc::Result<api::Empty> {
        let r = self.sb.remove_container(&req.container_id, req.force).await;
        reply("RemoveContainer", &req.container_id, "", r).map(|()| empty())
    }

    async fn resize_tty(
        &self,
        _: &TtrpcContext,
        req: api::ResizeTtyRequest,
    ) -> ttrpc::Result<api::Empty> {
        let r = self
            .sb
            .resize_tty(&req.container_id, &req.exec_id, req.width, req.height);
        reply("ResizeTty", &req.container_id, &req.exec_id, r).map(|()| empty())
    }

    async fn list_processes(
        &self,
        _: &TtrpcContext,
        req: api::ContainerRef,
    ) -> ttrpc::Result<api::ListProcessesResponse> {
        let r = self.sb.list_processes(&req.container_id);
        reply("ListProcesses", &req.container_id, "", r).map(|processes| {
            api::ListProcessesResponse {
                processes,
                ..Default::default()
            }
        })
    }

    async fn stats(
        &self,
        _: &TtrpcContext,
        req: api::ContainerRef,
    ) -> ttrpc::Result<api::StatsResponse> {
        reply(
            "Stats",
            &req.container_id,
            "",
            self.sb.stats(&req.container_id),
        )
    }

    async fn update_container(
        &self,
        _: &TtrpcContext,
        req: api::UpdateContainerRequest,
    ) -> ttrpc::Result<api::Empty> {
        let r = self
            .sb
            .update_container(&req.container_id, &req.resources_json)
            .await;
        reply("UpdateContainer", &req.container_id, "", r).map(|()| empty())
    }

    async fn pause_container(
        &self,
        _: &TtrpcContext,
        req: api::ContainerRef,
    ) -> ttrpc::Result<api::Empty> {
        let r = self.sb.set_paused(&req.container_id, true).await;
        reply("PauseContainer", &req.container_id, "", r).map(|()| empty())
    }

    async fn resume_container(
        &self,
        _: &TtrpcContext,
        req: api::ContainerRef,
    ) -> ttrpc::Result<api::Empty> {
        let r = self.sb.set_paused(&req.container_id, false).await;
        reply("ResumeContainer", &req.container_id, "", r).map(|()| empty())
    }

    async fn wait_oom_event(
        &self,
        _: &TtrpcContext,
        _: api::Empty,
    ) -> ttrpc::Result<api::OomEvent> {
        Ok(api::OomEvent {
            container_id: self.sb.rt.oom.next().await,
            ..Default::default()
        })
    }

    async fn shutdown(
        &self,
        _: &TtrpcContext,
        _: api::ShutdownRequest,
    ) -> ttrpc::Result<api::Empty> {
        tracing::info!("shutdown requested");
        self.sb.shutdown.notify_one();
        Ok(empty())
    }
}

//! Kill, Pause, Resume, Update, Stats, Pids, ResizePty, CloseIO, Connect and Shutdown.

use containerd_shim_protos::api::{
    CloseIORequest, ConnectRequest, ConnectResponse, KillRequest, PauseRequest, PidsRequest,
    PidsResponse, ProcessInfo, ResizePtyRequest, ResumeRequest, ShutdownRequest, StatsRequest,
    StatsResponse, UpdateTaskRequest,
};
use containerd_shim_protos::events::task::{TaskPaused, TaskResumed};
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::{Message, MessageField};
use containerd_shim_protos::shim::oci::ProcessDetails;
use containerd_shim_protos::ttrpc::Code;
use husk_protocol::agent::api;

use crate::agent::AgentError;
use crate::error::{Result, ShimError};
use crate::events::TaskEvent;
use crate::lifecycle::{agent_failure, explained};
use crate::metrics;
use crate::process::ProcStatus;
use crate::sandbox::Sandbox;

fn container_ref(id: &str) -> api::ContainerRef {
    let mut r = api::ContainerRef::new();
    r.container_id = id.to_string();
    r
}

fn finished(what: &str) -> ShimError {
    ShimError::NotFound(format!("{what}: process already finished"))
}

impl Sandbox {
    /// Kill: a signal to one process, or with `all` to every process of the container. A
    /// process that already exited is NotFound ("process already finished"), as with runc.
    pub async fn kill(&self, req: KillRequest) -> Result<()> {
        let c = self.container(&req.id)?;
        let p = c.process(&req.exec_id)?;
        if matches!(p.status(), ProcStatus::Stopped | ProcStatus::Deleted) {
            return Err(finished(p.event_id()));
        }
        let Ok(vm) = self.vm() else {
            return Err(finished(p.event_id()));
        };
        let mut s = api::SignalRequest::new();
        s.container_id = req.id.clone();
        s.exec_id = req.exec_id.clone();
        s.signal = req.signal;
        s.all = req.all;
        match vm.agent.signal_process(&s).await {
            Ok(_) => Ok(()),
            Err(AgentError::Rpc {
                code: Code::FAILED_PRECONDITION,
                message,
                ..
            }) => Err(ShimError::NotFound(format!(
                "{}: process already finished ({message})",
                p.event_id()
            ))),
            Err(e) => Err(agent_failure(&vm, "kill", e).await),
        }
    }

    fn running_container(&self, id: &str) -> Result<std::sync::Arc<crate::container::Container>> {
        let c = self.container(id)?;
        if c.init.status() != ProcStatus::Running {
            return Err(ShimError::FailedPrecondition(format!(
                "container {id} is not running"
            )));
        }
        Ok(c)
    }

    /// Pause: freezes every process of the container.
    pub async fn pause(&self, req: PauseRequest) -> Result<()> {
        let c = self.running_container(&req.id)?;
        if c.paused() {
            return Err(ShimError::FailedPrecondition(format!(
                "container {} is already paused",
                req.id
            )));
        }
        let vm = self.vm()?;
        let r = container_ref(&req.id);
        explained(&vm, "pause", vm.agent.pause_container(&r)).await?;
        c.set_paused(true);
        let mut e = TaskPaused::new();
        e.container_id = req.id.clone();
        self.events.send(TaskEvent::Paused(e));
        Ok(())
    }

    /// Resume: thaws the container.
    pub async fn resume(&self, req: ResumeRequest) -> Result<()> {
        let c = self.running_container(&req.id)?;
        if !c.paused() {
            return Err(ShimError::FailedPrecondition(format!(
                "container {} is not paused",
                req.id
            )));
        }
        let vm = self.vm()?;
        let r = container_ref(&req.id);
        explained(&vm, "resume", vm.agent.resume_container(&r)).await?;
        c.set_paused(false);
        let mut e = TaskResumed::new();
        e.container_id = req.id.clone();
        self.events.send(TaskEvent::Resumed(e));
        Ok(())
    }

    /// Update: new OCI LinuxResources (containerd sends them as JSON in the Any).
    pub async fn update(&self, req: UpdateTaskRequest) -> Result<()> {
        self.container(&req.id)?;
        let Some(resources) = req.resources.as_ref() else {
            return Ok(());
        };
        let mut u = api::UpdateContainerRequest::new();
        u.container_id = req.id.clone();
        u.resources_json = resources.value.clone();
        let vm = self.vm()?;
        explained(&vm, "update", vm.agent.update_container(&u)).await?;
        Ok(())
    }

    /// Stats: the container's cgroup v2 numbers as `io.containerd.cgroups.v2.Metrics`.
    pub async fn stats(&self, req: StatsRequest) -> Result<StatsResponse> {
        self.container(&req.id)?;
        let vm = self.vm()?;
        let r = container_ref(&req.id);
        let s = explained(&vm, "stats", vm.agent.stats(&r)).await?;
        let mut resp = StatsResponse::new();
        resp.stats = MessageField::some(metrics::to_any(&s));
        Ok(resp)
    }

    /// Pids: the container's processes, guest pids (an exec's main process carries its id).
    pub async fn pids(&self, req: PidsRequest) -> Result<PidsResponse> {
        self.container(&req.id)?;
        let vm = self.vm()?;
        let r = container_ref(&req.id);
        let list = explained(&vm, "pids", vm.agent.list_processes(&r)).await?;
        let mut resp = PidsResponse::new();
        for p in list.processes {
            let mut info = ProcessInfo::new();
            info.pid = p.pid;
            if !p.exec_id.is_empty() {
                let mut d = ProcessDetails::new();
                d.exec_id = p.exec_id.clone();
                let mut any = Any::new();
                any.type_url = "containerd.runc.v1.ProcessDetails".into();
                any.value = d.write_to_bytes().unwrap_or_default();
                info.info = MessageField::some(any);
            }
            resp.processes.push(info);
        }
        Ok(resp)
    }

    /// ResizePty.
    pub async fn resize_pty(&self, req: ResizePtyRequest) -> Result<()> {
        let c = self.container(&req.id)?;
        let p = c.process(&req.exec_id)?;
        if !p.stdio.terminal {
            return Err(ShimError::FailedPrecondition(format!(
                "{} has no terminal",
                p.event_id()
            )));
        }
        let mut r = api::ResizeTtyRequest::new();
        r.container_id = req.id.clone();
        r.exec_id = req.exec_id.clone();
        r.width = req.width;
        r.height = req.height;
        let vm = self.vm()?;
        explained(&vm, "resize_pty", vm.agent.resize_tty(&r)).await?;
        Ok(())
    }

    /// CloseIO: the process's stdin reaches end-of-file.
    pub async fn close_io(&self, req: CloseIORequest) -> Result<()> {
        let p = self.container(&req.id)?.process(&req.exec_id)?;
        if req.stdin {
            p.io.close_stdin();
        }
        Ok(())
    }

    /// Connect: the shim's and the task's pids.
    pub async fn connect(&self, req: ConnectRequest) -> Result<ConnectResponse> {
        self.container(&req.id)?;
        let mut resp = ConnectResponse::new();
        resp.shim_pid = std::process::id();
        resp.task_pid = self.task_pid();
        resp.version = husk_protocol::VERSION.to_string();
        Ok(resp)
    }

    /// Shutdown: ends the shim once no container is left (or at once with `now`, stopping
    /// the VM first).
    pub async fn shutdown(&self, req: ShutdownRequest) -> Result<()> {
        if !req.now && !self.containers().is_empty() {
            return Ok(());
        }
        self.teardown_vm().await;
        tracing::info!("shutting down");
        self.exit_shim();
        Ok(())
    }
}

//! The commands to running processes and the shim: Kill, Pause, Resume, Update, ResizePty,
//! CloseIO and Shutdown.

use std::sync::Arc;

use containerd_shim_protos::api::{
    CloseIORequest, KillRequest, PauseRequest, ResizePtyRequest, ResumeRequest, ShutdownRequest,
    UpdateTaskRequest,
};
use containerd_shim_protos::events::task::{TaskPaused, TaskResumed};
use containerd_shim_protos::ttrpc::Code;
use husk_protocol::agent::api;

use super::container_ref;
use crate::agent::AgentError;
use crate::container::Container;
use crate::error::{Result, ShimError};
use crate::events::TaskEvent;
use crate::failure::{ended_under, explained, while_running};
use crate::process::ProcStatus;
use crate::sandbox::Sandbox;

fn finished(what: &str) -> ShimError {
    ShimError::NotFound(format!("{what}: process already finished"))
}

/// Kill: a signal to one process, or with `all` to every process of the container. A
/// process that already exited is NotFound ("process already finished"), as with runc; so is
/// one whose VM ended under the call (every process in it ended too, and the VM's watcher
/// publishes their exits): containerd's stop paths, StopPodSandbox among them, then wait for
/// the exit instead of failing.
pub async fn kill(sb: &Sandbox, req: KillRequest) -> Result<()> {
    let c = sb.container(&req.id)?;
    let p = c.process(&req.exec_id)?;
    if matches!(p.status(), ProcStatus::Stopped | ProcStatus::Deleted) {
        return Err(finished(p.event_id()));
    }
    let Ok(vm) = sb.vm() else {
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
        Err(e) => match ended_under(&vm, &e).await {
            Some(detail) => Err(ShimError::NotFound(format!(
                "{}: process already finished (the sandbox VM ended: {detail})",
                p.event_id()
            ))),
            None => Err(while_running(&vm, "kill", e)),
        },
    }
}

fn running_container(sb: &Sandbox, id: &str) -> Result<Arc<Container>> {
    let c = sb.container(id)?;
    if c.init.status() != ProcStatus::Running {
        return Err(ShimError::FailedPrecondition(format!(
            "container {id} is not running"
        )));
    }
    Ok(c)
}

/// Pause: freezes every process of the container.
pub async fn pause(sb: &Sandbox, req: PauseRequest) -> Result<()> {
    let c = running_container(sb, &req.id)?;
    if c.paused() {
        return Err(ShimError::FailedPrecondition(format!(
            "container {} is already paused",
            req.id
        )));
    }
    let vm = sb.vm()?;
    let r = container_ref(&req.id);
    explained(&vm, "pause", vm.agent.pause_container(&r)).await?;
    c.set_paused(true);
    let mut e = TaskPaused::new();
    e.container_id = req.id.clone();
    sb.events.send(TaskEvent::Paused(e));
    Ok(())
}

/// Resume: thaws the container.
pub async fn resume(sb: &Sandbox, req: ResumeRequest) -> Result<()> {
    let c = running_container(sb, &req.id)?;
    if !c.paused() {
        return Err(ShimError::FailedPrecondition(format!(
            "container {} is not paused",
            req.id
        )));
    }
    let vm = sb.vm()?;
    let r = container_ref(&req.id);
    explained(&vm, "resume", vm.agent.resume_container(&r)).await?;
    c.set_paused(false);
    let mut e = TaskResumed::new();
    e.container_id = req.id.clone();
    sb.events.send(TaskEvent::Resumed(e));
    Ok(())
}

/// Update: new OCI LinuxResources (containerd sends them as JSON in the Any).
pub async fn update(sb: &Sandbox, req: UpdateTaskRequest) -> Result<()> {
    sb.container(&req.id)?;
    let Some(resources) = req.resources.as_ref() else {
        return Ok(());
    };
    let mut u = api::UpdateContainerRequest::new();
    u.container_id = req.id.clone();
    u.resources_json = resources.value.clone();
    let vm = sb.vm()?;
    explained(&vm, "update", vm.agent.update_container(&u)).await?;
    Ok(())
}

/// ResizePty.
pub async fn resize_pty(sb: &Sandbox, req: ResizePtyRequest) -> Result<()> {
    let c = sb.container(&req.id)?;
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
    let vm = sb.vm()?;
    explained(&vm, "resize_pty", vm.agent.resize_tty(&r)).await?;
    Ok(())
}

/// CloseIO: the process's stdin reaches end-of-file.
pub async fn close_io(sb: &Sandbox, req: CloseIORequest) -> Result<()> {
    let p = sb.container(&req.id)?.process(&req.exec_id)?;
    if req.stdin {
        p.io.close_stdin();
    }
    Ok(())
}

/// Shutdown: ends the shim once no container is left (or at once with `now`, stopping
/// the VM first). A sandbox API pod's shim ends only by ShutdownSandbox.
pub async fn shutdown(sb: &Sandbox, req: ShutdownRequest) -> Result<()> {
    if sb.is_api_pod() {
        tracing::debug!("task Shutdown ignored: the sandbox API owns this shim");
        return Ok(());
    }
    if !req.now && !sb.containers().is_empty() {
        return Ok(());
    }
    sb.teardown_vm().await;
    tracing::info!("shutting down");
    sb.exit_shim();
    Ok(())
}

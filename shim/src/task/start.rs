//! Start (the init process or a registered exec, whose exit is then watched) and Exec (a
//! process registered in a running container, not started).

use std::sync::Arc;

use containerd_shim_protos::api::{ExecProcessRequest, StartRequest, StartResponse};
use containerd_shim_protos::events::task::{TaskExecAdded, TaskExecStarted, TaskStart};
use containerd_shim_protos::protobuf::MessageField;
use husk_protocol::agent::api;

use super::{check_id, process_ref};
use crate::error::{Result, ShimError};
use crate::events::TaskEvent;
use crate::failure::{agent_failure, stdio_failure};
use crate::io::{ProcessIo, StdioSpec};
use crate::process::{ExitInfo, ProcStatus, Process};
use crate::sandbox::Sandbox;

/// Start: runs the init process or a registered exec; its exit is watched.
pub async fn start(sb: &Arc<Sandbox>, req: StartRequest) -> Result<StartResponse> {
    let c = sb.container(&req.id)?;
    let p = c.process(&req.exec_id)?;
    let vm = sb.vm()?;
    {
        let _started = p.start_lock.lock().await;
        if p.status() != ProcStatus::Created {
            return Err(ShimError::FailedPrecondition(format!(
                "process {} is {:?}, not created",
                p.event_id(),
                p.status()
            )));
        }
        let started = vm
            .agent
            .start_process(&process_ref(&req.id, &req.exec_id))
            .await;
        let resp = match started {
            Ok(resp) => resp,
            Err(e) => {
                // Nothing will ever exit: Wait must not block on it (containerd waits
                // for the exit of an exec whose start failed before it deletes it).
                p.set_exited(ExitInfo::never_started());
                p.io.close();
                let what = format!("starting {}", p.event_id());
                return Err(agent_failure(&vm, &what, e).await);
            }
        };
        p.set_running(resp.pid)?;
        if req.exec_id.is_empty() {
            let mut e = TaskStart::new();
            e.container_id = req.id.clone();
            e.pid = vm.pid;
            sb.events.send(TaskEvent::Start(e));
        } else {
            let mut e = TaskExecStarted::new();
            e.container_id = req.id.clone();
            e.exec_id = req.exec_id.clone();
            e.pid = vm.pid;
            sb.events.send(TaskEvent::ExecStarted(e));
        }
        tracing::info!(
            container = req.id.as_str(),
            exec = req.exec_id.as_str(),
            guest_pid = resp.pid,
            "started"
        );
    }
    sb.watch_exit(vm.clone(), p);
    let mut resp = StartResponse::new();
    resp.pid = vm.pid;
    Ok(resp)
}

/// Exec: registers a process in a running container (not started).
pub async fn exec(sb: &Arc<Sandbox>, req: ExecProcessRequest) -> Result<()> {
    check_id("exec id", &req.exec_id)?;
    let c = sb.container(&req.id)?;
    if c.has_exec(&req.exec_id) {
        return Err(ShimError::AlreadyExists(format!(
            "exec {} already exists in container {}",
            req.exec_id, req.id
        )));
    }
    if c.init.status() != ProcStatus::Running {
        return Err(ShimError::FailedPrecondition(format!(
            "container {} is not running",
            req.id
        )));
    }
    let vm = sb.vm()?;
    let stdio = StdioSpec::checked(&req.stdin, &req.stdout, &req.stderr, req.terminal)?;
    let mut ereq = api::ExecProcessRequest::new();
    ereq.container_id = req.id.clone();
    ereq.exec_id = req.exec_id.clone();
    ereq.process_json = req
        .spec
        .as_ref()
        .map(|a| a.value.clone())
        .unwrap_or_default();
    ereq.stdio = MessageField::some(stdio.agent_stdio());
    if let Err(e) = vm.agent.exec_process(&ereq).await {
        let what = format!("exec {} in {}", req.exec_id, req.id);
        return Err(agent_failure(&vm, &what, e).await);
    }
    let io = match ProcessIo::attach(&vm.agent, &req.id, &req.exec_id, &stdio, &sb.namespace).await
    {
        Ok(io) => io,
        Err(e) => {
            let _ = vm
                .agent
                .delete_process(&process_ref(&req.id, &req.exec_id))
                .await;
            return Err(stdio_failure(&vm, e).await);
        }
    };
    c.add_exec(Process::new(&req.id, &req.exec_id, stdio, io))?;
    let mut e = TaskExecAdded::new();
    e.container_id = req.id.clone();
    e.exec_id = req.exec_id.clone();
    sb.events.send(TaskEvent::ExecAdded(e));
    Ok(())
}

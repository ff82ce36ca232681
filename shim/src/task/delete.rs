//! Delete: forgets an exited exec, or removes an exited (or never started) container and
//! unmounts its filesystems; the last container's Delete stops the VM.

use std::sync::Arc;

use containerd_shim_protos::api::{DeleteRequest, DeleteResponse};
use containerd_shim_protos::events::task::TaskDelete;
use containerd_shim_protos::protobuf::MessageField;
use husk_protocol::agent::api;

use super::process_ref;
use crate::error::{Result, ShimError};
use crate::events::{timestamp, TaskEvent};
use crate::process::{ExitInfo, ProcStatus};
use crate::sandbox::Sandbox;
use crate::share;

/// Delete: forgets an exited exec, or removes an exited (or never started) container,
/// unmounting its filesystems; the last container's Delete stops the VM.
pub async fn delete(sb: &Arc<Sandbox>, req: DeleteRequest) -> Result<DeleteResponse> {
    let c = sb.container(&req.id)?;
    let p = c.process(&req.exec_id)?;
    let pid = sb.task_pid();
    let vm = sb.running_vm();
    if p.status() == ProcStatus::Running {
        return Err(ShimError::FailedPrecondition(format!(
            "cannot delete {}: it is still running",
            p.event_id()
        )));
    }
    if !req.exec_id.is_empty() {
        if let Some(vm) = &vm {
            if let Err(e) = vm
                .agent
                .delete_process(&process_ref(&req.id, &req.exec_id))
                .await
            {
                tracing::warn!("agent DeleteProcess {}/{}: {e}", req.id, req.exec_id);
            }
        }
        p.set_exited(ExitInfo::killed());
        p.io.close();
        let exit = p.exit().unwrap_or_else(ExitInfo::killed);
        c.remove_exec(&req.exec_id);
        let _ = p.transition(ProcStatus::Deleted);
        return Ok(delete_response(pid, exit));
    }

    let never_started = p.status() == ProcStatus::Created;
    if let Some(vm) = &vm {
        let mut r = api::RemoveContainerRequest::new();
        r.container_id = req.id.clone();
        r.force = never_started;
        match vm.agent.remove_container(&r).await {
            Ok(_) => {}
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e.into()),
        }
    }
    p.set_exited(ExitInfo::killed());
    let exit = p.exit().unwrap_or_else(ExitInfo::killed);
    for proc_ in c.processes() {
        proc_.set_exited(ExitInfo::killed());
        proc_.io.close();
        let _ = proc_.transition(ProcStatus::Deleted);
    }
    if let Some(paths) = sb.paths() {
        let cid = req.id.clone();
        tokio::task::spawn_blocking(move || share::remove_container(&paths, &cid))
            .await
            .map_err(|e| ShimError::Host {
                context: "unmounting the container".into(),
                source: std::io::Error::other(e),
            })??;
    }
    let remaining = sb.remove_container(&req.id);
    let mut e = TaskDelete::new();
    e.container_id = req.id.clone();
    e.id = req.id.clone();
    e.pid = pid;
    e.exit_status = exit.status;
    e.exited_at = MessageField::some(timestamp(exit.at));
    sb.events.send(TaskEvent::Delete(e));
    tracing::info!(container = req.id.as_str(), remaining, "deleted");
    if remaining == 0 && !sb.is_api_pod() {
        sb.teardown_vm().await;
    }
    Ok(delete_response(pid, exit))
}

fn delete_response(pid: u32, exit: ExitInfo) -> DeleteResponse {
    let mut r = DeleteResponse::new();
    r.pid = pid;
    r.exit_status = exit.status;
    r.exited_at = MessageField::some(timestamp(exit.at));
    r
}

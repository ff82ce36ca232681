//! The questions: Wait, State, Stats, Pids and Connect.

use containerd_shim_protos::api::{
    ConnectRequest, ConnectResponse, PidsRequest, PidsResponse, ProcessInfo, StateRequest,
    StateResponse, StatsRequest, StatsResponse, WaitRequest, WaitResponse,
};
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::{Message, MessageField};
use containerd_shim_protos::shim::oci::ProcessDetails;

use super::container_ref;
use crate::error::Result;
use crate::events::timestamp;
use crate::failure::explained;
use crate::metrics;
use crate::sandbox::Sandbox;

/// Wait: blocks until the process exited.
pub async fn wait(sb: &Sandbox, req: WaitRequest) -> Result<WaitResponse> {
    let p = sb.container(&req.id)?.process(&req.exec_id)?;
    let exit = p.wait().await;
    let mut resp = WaitResponse::new();
    resp.exit_status = exit.status;
    resp.exited_at = MessageField::some(timestamp(exit.at));
    Ok(resp)
}

/// State of the init process or an exec.
pub async fn state(sb: &Sandbox, req: StateRequest) -> Result<StateResponse> {
    let c = sb.container(&req.id)?;
    let p = c.process(&req.exec_id)?;
    let mut resp = StateResponse::new();
    resp.id = req.id.clone();
    resp.exec_id = req.exec_id.clone();
    resp.bundle = c.bundle.display().to_string();
    resp.pid = sb.task_pid();
    resp.status = p.status().to_proto(c.paused()).into();
    resp.stdin = p.stdio.stdin.clone();
    resp.stdout = p.stdio.stdout.clone();
    resp.stderr = p.stdio.stderr.clone();
    resp.terminal = p.stdio.terminal;
    if let Some(exit) = p.exit() {
        resp.exit_status = exit.status;
        resp.exited_at = MessageField::some(timestamp(exit.at));
    }
    Ok(resp)
}

/// Stats: the container's cgroup v2 numbers as `io.containerd.cgroups.v2.Metrics`.
pub async fn stats(sb: &Sandbox, req: StatsRequest) -> Result<StatsResponse> {
    sb.container(&req.id)?;
    let vm = sb.vm()?;
    let r = container_ref(&req.id);
    let s = explained(&vm, "stats", vm.agent.stats(&r)).await?;
    let mut resp = StatsResponse::new();
    resp.stats = MessageField::some(metrics::to_any(&s));
    Ok(resp)
}

/// Pids: the container's processes, guest pids (an exec's main process carries its id).
pub async fn pids(sb: &Sandbox, req: PidsRequest) -> Result<PidsResponse> {
    sb.container(&req.id)?;
    let vm = sb.vm()?;
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

/// Connect: the shim's and the task's pids.
pub async fn connect(sb: &Sandbox, req: ConnectRequest) -> Result<ConnectResponse> {
    sb.container(&req.id)?;
    let mut resp = ConnectResponse::new();
    resp.shim_pid = std::process::id();
    resp.task_pid = sb.task_pid();
    resp.version = husk_protocol::VERSION.to_string();
    Ok(resp)
}

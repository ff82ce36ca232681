//! What the sandbox watches: its VM's end, each started process's exit and the guest's OOM
//! events, each turned into containerd's events.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use containerd_shim_protos::events::task::{TaskExit, TaskOOM};
use containerd_shim_protos::protobuf::MessageField;
use containerd_shim_protos::ttrpc::Code;
use husk_protocol::agent::api;

use super::state::VmSlot;
use super::{time_from_ns, Sandbox};
use crate::agent::AgentError;
use crate::events::{timestamp, TaskEvent};
use crate::process::{ExitInfo, ProcStatus, Process};
use crate::vm::{self, Vm, VmGone};

impl Sandbox {
    /// Watches the VM: its end on its own stops every task ([`Sandbox::on_vm_gone`]).
    pub(super) fn watch_vm(self: &Arc<Self>, vm: Arc<Vm>) {
        let sb = self.clone();
        tokio::spawn(async move {
            let mut rx = vm.gone.clone();
            let gone = async move {
                rx.wait_for(Option::is_some)
                    .await
                    .ok()
                    .and_then(|g| g.clone())
            }
            .await;
            if let Some(gone) = gone {
                sb.on_vm_gone(&vm, gone).await;
            }
        });
    }

    async fn on_vm_gone(&self, vm: &Arc<Vm>, gone: VmGone) {
        {
            let mut inner = self.lock();
            let VmSlot::Running { vm: current, paths } = &inner.slot else {
                return;
            };
            if !Arc::ptr_eq(current, vm) {
                return;
            }
            let paths = paths.clone();
            let _ = inner.slot.advance(VmSlot::Gone {
                vm: vm.clone(),
                paths,
                gone: gone.clone(),
            });
        }
        tracing::error!(
            pid = vm.pid,
            "the sandbox VM ended unexpectedly: {}",
            gone.detail
        );
        for c in self.containers() {
            for p in c.processes() {
                let _started = p.start_lock.lock().await;
                match p.status() {
                    ProcStatus::Running => {
                        let _ = tokio::time::timeout(Duration::from_secs(2), p.io.drained()).await;
                        self.publish_exit(&p, vm.pid, ExitInfo::killed());
                    }
                    ProcStatus::Created => {
                        p.set_exited(ExitInfo::killed());
                    }
                    ProcStatus::Stopped | ProcStatus::Deleted => {}
                }
            }
        }
        // A sandbox API pod ends with its VM (as a pod whose pause container was killed).
        self.end_pod(ExitInfo::killed().status);
    }

    /// Records `exit` and publishes /tasks/exit, once per process.
    pub fn publish_exit(&self, p: &Process, pid: u32, exit: ExitInfo) {
        if !p.set_exited(exit) {
            return;
        }
        let mut e = TaskExit::new();
        e.container_id = p.container_id.clone();
        e.id = p.event_id().to_string();
        e.pid = pid;
        e.exit_status = exit.status;
        e.exited_at = MessageField::some(timestamp(exit.at));
        self.events.send(TaskEvent::Exit(e));
    }

    /// Watches a started process: its exit (after its output drained) becomes /tasks/exit.
    pub fn watch_exit(self: &Arc<Self>, vm: Arc<Vm>, p: Arc<Process>) {
        let sb = self.clone();
        tokio::spawn(async move {
            let mut req = api::ProcessRef::new();
            req.container_id = p.container_id.clone();
            req.exec_id = p.exec_id.clone();
            match vm.agent.wait_process(&req).await {
                Ok(w) => {
                    p.io.drained().await;
                    let exit = ExitInfo {
                        status: w.exit_status,
                        at: time_from_ns(w.exited_at_ns),
                    };
                    sb.publish_exit(&p, vm.pid, exit);
                }
                Err(e) => {
                    // A VM that ended is handled by on_vm_gone; wait for it to say so.
                    if vm::wait_gone(&vm.gone, Duration::from_secs(10))
                        .await
                        .is_some()
                    {
                        return;
                    }
                    tracing::error!(
                        container = p.container_id.as_str(),
                        exec = p.exec_id.as_str(),
                        "waiting for the process failed: {e}"
                    );
                    let _ = tokio::time::timeout(Duration::from_secs(2), p.io.drained()).await;
                    sb.publish_exit(
                        &p,
                        vm.pid,
                        ExitInfo {
                            status: 255,
                            at: SystemTime::now(),
                        },
                    );
                }
            }
        });
    }

    pub(super) fn watch_oom(self: &Arc<Self>, vm: Arc<Vm>) {
        let events = self.events.clone();
        tokio::spawn(async move {
            loop {
                match vm.agent.wait_oom_event().await {
                    Ok(ev) => {
                        let mut e = TaskOOM::new();
                        e.container_id = ev.container_id;
                        events.send(TaskEvent::Oom(e));
                    }
                    Err(AgentError::Rpc {
                        code: Code::UNIMPLEMENTED,
                        ..
                    }) => {
                        tracing::info!("the agent does not report OOM events");
                        return;
                    }
                    Err(e) => {
                        tracing::debug!("OOM watch ended: {e}");
                        return;
                    }
                }
            }
        });
    }
}

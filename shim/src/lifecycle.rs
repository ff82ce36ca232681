//! Create, Start, Exec, Delete, Wait and State: the task lifecycle and its events
//! (create → start → exit → delete; exec-added → exec-started → exit).

use std::path::PathBuf;
use std::sync::Arc;

use containerd_shim_protos::api::{
    CreateTaskRequest, CreateTaskResponse, DeleteRequest, DeleteResponse, ExecProcessRequest,
    StartRequest, StartResponse, StateRequest, StateResponse, WaitRequest, WaitResponse,
};
use containerd_shim_protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskIO, TaskStart,
};
use containerd_shim_protos::protobuf::MessageField;
use husk_protocol::agent::api;

use crate::container::Container;
use crate::error::{Result, ShimError};
use crate::events::{timestamp, TaskEvent};
use crate::io::{ProcessIo, StdioSpec};
use crate::paths::{SandboxPaths, BUNDLE_STATE_LINK};
use crate::process::{ExitInfo, ProcStatus, Process};
use crate::sandbox::Sandbox;
use crate::spec::Spec;
use crate::vm::Vm;
use crate::{options, rootfs, share};

/// How long a failed agent call waits for the VM's exit to be seen (the connection's end can
/// come first), so that the error names the VM's end rather than the connection's.
const VM_END_GRACE: std::time::Duration = std::time::Duration::from_secs(3);

/// The error of agent call `what` that failed with `e`: when the connection failed because the
/// VM ended under the call, the VM's end (husk-vmm's exit and the console tail) is the cause
/// the user sees, not the connection's early EOF.
pub(crate) async fn agent_failure(vm: &Vm, what: &str, e: crate::agent::AgentError) -> ShimError {
    if e.is_transport() {
        if let Some(gone) = crate::vm::wait_gone(&vm.gone, VM_END_GRACE).await {
            return ShimError::FailedPrecondition(format!(
                "{what}: the sandbox VM ended: {}",
                gone.detail
            ));
        }
        // The VM runs but its agent connection failed: husk-vmm's log says which side ended it.
        tracing::error!(
            pid = vm.pid,
            call = what,
            "the agent connection failed while the VM still runs: {e}"
        );
    }
    e.into()
}

/// Agent call `what` on `vm`, its failure explained by [`agent_failure`].
pub(crate) async fn explained<T>(
    vm: &Vm,
    what: &str,
    call: impl std::future::Future<Output = std::result::Result<T, crate::agent::AgentError>>,
) -> Result<T> {
    match call.await {
        Ok(v) => Ok(v),
        Err(e) => Err(agent_failure(vm, what, e).await),
    }
}

fn check_id(what: &str, id: &str) -> Result<()> {
    husk_protocol::ids::validate(id).map_err(|e| ShimError::InvalidArgument(format!("{what}: {e}")))
}

fn process_ref(cid: &str, eid: &str) -> api::ProcessRef {
    let mut r = api::ProcessRef::new();
    r.container_id = cid.to_string();
    r.exec_id = eid.to_string();
    r
}

/// Mounts the container's filesystems into the share and rewrites the spec for the guest.
fn prepare_filesystems(
    req: &CreateTaskRequest,
    spec: &mut Spec,
    bundle: &std::path::Path,
    paths: &SandboxPaths,
) -> Result<()> {
    let binds = spec.host_binds()?;
    let root = spec.root_path(bundle);
    let cid = req.id.as_str();
    if let Err(e) = rootfs::mount_container(paths, cid, &req.rootfs, root.as_deref(), &binds) {
        if let Err(c) = share::remove_container(paths, cid) {
            tracing::warn!("removing {cid} from the share after a failed mount: {c}");
        }
        return Err(e.into());
    }
    spec.rewrite_for_guest(cid, &binds);
    Ok(())
}

impl Sandbox {
    /// Create: boots the VM for the sandbox's first container, mounts the rootfs into the
    /// share, creates the container in the guest and attaches its stdio. On failure nothing
    /// is left (and the VM is stopped again if no other container uses it).
    pub async fn create(self: &Arc<Self>, req: CreateTaskRequest) -> Result<CreateTaskResponse> {
        check_id("container id", &req.id)?;
        if self.has_container(&req.id) {
            return Err(ShimError::AlreadyExists(format!(
                "container {} already exists",
                req.id
            )));
        }
        if !req.checkpoint.is_empty() || !req.parent_checkpoint.is_empty() {
            return Err(ShimError::Unimplemented(
                "husk does not support checkpoint/restore".into(),
            ));
        }
        let bundle = PathBuf::from(&req.bundle);
        let mut spec = Spec::load(&bundle)?;
        spec.check_host_namespaces()?;
        let stdio = StdioSpec {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        stdio.validate()?;
        let config_path = options::config_path(req.options.as_ref())?;
        let (vm, paths) = self
            .ensure_vm(
                config_path.as_deref(),
                &spec.annotations(),
                spec.hostname(),
                spec.network_namespace(),
                spec.cgroups_path(),
            )
            .await?;
        let result = self
            .create_in_vm(&req, &mut spec, &bundle, &paths, &vm, stdio)
            .await;
        match result {
            Ok(resp) => Ok(resp),
            Err(e) => {
                if self.containers().is_empty() {
                    self.teardown_vm().await;
                }
                Err(e)
            }
        }
    }

    async fn create_in_vm(
        self: &Arc<Self>,
        req: &CreateTaskRequest,
        spec: &mut Spec,
        bundle: &std::path::Path,
        paths: &SandboxPaths,
        vm: &Arc<Vm>,
        stdio: StdioSpec,
    ) -> Result<CreateTaskResponse> {
        let cid = req.id.as_str();
        // Lets the `delete` action find the sandbox state whatever config the daemon used.
        let _ = std::fs::write(
            bundle.join(BUNDLE_STATE_LINK),
            paths.root().as_os_str().as_encoded_bytes(),
        );
        prepare_filesystems(req, spec, bundle, paths)?;
        let mut creq = api::CreateContainerRequest::new();
        creq.container_id = cid.to_string();
        creq.spec_json = spec.to_json();
        creq.stdio = MessageField::some(stdio.agent_stdio());
        let undo_mounts = || {
            if let Err(e) = share::remove_container(paths, cid) {
                tracing::warn!("unmounting {cid}: {e}");
            }
        };
        if let Err(e) = vm.agent.create_container(&creq).await {
            // Why the guest could not set the container up, when the pod's writes are full.
            let full = crate::writable::full_hint(paths);
            let e = agent_failure(vm, &format!("creating container {cid}"), e).await;
            undo_mounts();
            if let Some(full) = full {
                return Err(ShimError::FailedPrecondition(format!("{e}; {full}")));
            }
            return Err(e);
        }
        let io = match ProcessIo::attach(&vm.agent, cid, "", &stdio, &self.namespace).await {
            Ok(io) => io,
            Err(e) => {
                let mut r = api::RemoveContainerRequest::new();
                r.container_id = cid.to_string();
                r.force = true;
                let _ = vm.agent.remove_container(&r).await;
                undo_mounts();
                return Err(e.into());
            }
        };
        let init = Process::new(cid, "", stdio.clone(), io);
        self.insert_container(Arc::new(Container::new(cid, bundle.to_path_buf(), init)))?;
        tracing::info!(container = cid, "created");

        let mut e = TaskCreate::new();
        e.container_id = cid.to_string();
        e.bundle = req.bundle.clone();
        e.rootfs = req.rootfs.clone();
        let mut tio = TaskIO::new();
        tio.stdin = stdio.stdin;
        tio.stdout = stdio.stdout;
        tio.stderr = stdio.stderr;
        tio.terminal = stdio.terminal;
        e.io = MessageField::some(tio);
        e.checkpoint = req.checkpoint.clone();
        e.pid = vm.pid;
        self.events.send(TaskEvent::Create(e));

        let mut resp = CreateTaskResponse::new();
        resp.pid = vm.pid;
        Ok(resp)
    }

    /// Start: runs the init process or a registered exec; its exit is watched.
    pub async fn start(self: &Arc<Self>, req: StartRequest) -> Result<StartResponse> {
        let c = self.container(&req.id)?;
        let p = c.process(&req.exec_id)?;
        let vm = self.vm()?;
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
                self.events.send(TaskEvent::Start(e));
            } else {
                let mut e = TaskExecStarted::new();
                e.container_id = req.id.clone();
                e.exec_id = req.exec_id.clone();
                e.pid = vm.pid;
                self.events.send(TaskEvent::ExecStarted(e));
            }
            tracing::info!(
                container = req.id.as_str(),
                exec = req.exec_id.as_str(),
                guest_pid = resp.pid,
                "started"
            );
        }
        self.watch_exit(vm.clone(), p);
        let mut resp = StartResponse::new();
        resp.pid = vm.pid;
        Ok(resp)
    }

    /// Exec: registers a process in a running container (not started).
    pub async fn exec(self: &Arc<Self>, req: ExecProcessRequest) -> Result<()> {
        check_id("exec id", &req.exec_id)?;
        let c = self.container(&req.id)?;
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
        let vm = self.vm()?;
        let stdio = StdioSpec {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        stdio.validate()?;
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
        let io = match ProcessIo::attach(&vm.agent, &req.id, &req.exec_id, &stdio, &self.namespace)
            .await
        {
            Ok(io) => io,
            Err(e) => {
                let _ = vm
                    .agent
                    .delete_process(&process_ref(&req.id, &req.exec_id))
                    .await;
                return Err(e.into());
            }
        };
        c.add_exec(Process::new(&req.id, &req.exec_id, stdio, io))?;
        let mut e = TaskExecAdded::new();
        e.container_id = req.id.clone();
        e.exec_id = req.exec_id.clone();
        self.events.send(TaskEvent::ExecAdded(e));
        Ok(())
    }

    /// Delete: forgets an exited exec, or removes an exited (or never started) container,
    /// unmounting its filesystems; the last container's Delete stops the VM.
    pub async fn delete(self: &Arc<Self>, req: DeleteRequest) -> Result<DeleteResponse> {
        let c = self.container(&req.id)?;
        let p = c.process(&req.exec_id)?;
        let pid = self.task_pid();
        let vm = self.running_vm();
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
        if let Some(paths) = self.paths() {
            let cid = req.id.clone();
            tokio::task::spawn_blocking(move || share::remove_container(&paths, &cid))
                .await
                .map_err(|e| ShimError::Host {
                    context: "unmounting the container".into(),
                    source: std::io::Error::other(e),
                })??;
        }
        let remaining = self.remove_container(&req.id);
        let mut e = TaskDelete::new();
        e.container_id = req.id.clone();
        e.id = req.id.clone();
        e.pid = pid;
        e.exit_status = exit.status;
        e.exited_at = MessageField::some(timestamp(exit.at));
        self.events.send(TaskEvent::Delete(e));
        tracing::info!(container = req.id.as_str(), remaining, "deleted");
        if remaining == 0 {
            self.teardown_vm().await;
        }
        Ok(delete_response(pid, exit))
    }

    /// Wait: blocks until the process exited.
    pub async fn wait(&self, req: WaitRequest) -> Result<WaitResponse> {
        let p = self.container(&req.id)?.process(&req.exec_id)?;
        let exit = p.wait().await;
        let mut resp = WaitResponse::new();
        resp.exit_status = exit.status;
        resp.exited_at = MessageField::some(timestamp(exit.at));
        Ok(resp)
    }

    /// State of the init process or an exec.
    pub async fn state(&self, req: StateRequest) -> Result<StateResponse> {
        let c = self.container(&req.id)?;
        let p = c.process(&req.exec_id)?;
        let mut resp = StateResponse::new();
        resp.id = req.id.clone();
        resp.exec_id = req.exec_id.clone();
        resp.bundle = c.bundle.display().to_string();
        resp.pid = self.task_pid();
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
}

fn delete_response(pid: u32, exit: ExitInfo) -> DeleteResponse {
    let mut r = DeleteResponse::new();
    r.pid = pid;
    r.exit_status = exit.status;
    r.exited_at = MessageField::some(timestamp(exit.at));
    r
}

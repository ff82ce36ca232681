//! The sandbox: one shim, one VM, the containers in it.
//!
//! The first Create boots the VM; the last Delete stops it; Shutdown then ends the shim. The
//! VM's life is a checked state machine ([`SandboxState`]). If the VM ends on its own (husk-vmm
//! crashed, the guest panicked and rebooted, someone killed it), every started process exits
//! with 137 (as runc reports SIGKILL) and its exit event is published after whatever output
//! reached the host; created processes become stopped without an event.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use containerd_shim::ExitSignal;
use containerd_shim_protos::events::task::{TaskExit, TaskOOM};
use containerd_shim_protos::protobuf::MessageField;
use containerd_shim_protos::ttrpc::Code;
use husk_protocol::agent::api;

use crate::agent::AgentError;
use crate::config::{self, HuskConfig};
use crate::container::Container;
use crate::error::{Result, ShimError};
use crate::events::{timestamp, Events, TaskEvent};
use crate::network::{self, PodNetwork};
use crate::paths::{self, SandboxPaths};
use crate::process::{ExitInfo, ProcStatus, Process};
use crate::unmount;
use crate::vm::{self, BootRequest, Booter, Vm, VmGone};

/// The sandbox VM's life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SandboxState {
    /// No VM (before the first Create, after the last Delete).
    Empty,
    /// husk-vmm started, waiting for the agent.
    Booting,
    /// The agent answers.
    Running,
    /// Being stopped by the shim.
    Stopping,
    /// Ended on its own; tasks are stopped, waiting to be deleted.
    Gone,
}

impl SandboxState {
    /// Whether `self -> to` is legal.
    pub fn can_become(self, to: SandboxState) -> bool {
        use SandboxState::*;
        matches!(
            (self, to),
            (Empty, Booting)
                | (Booting, Running)
                | (Booting, Empty)
                | (Running, Stopping)
                | (Running, Gone)
                | (Gone, Stopping)
                | (Stopping, Empty)
        )
    }
}

#[derive(Debug)]
struct Inner {
    state: SandboxState,
    vm: Option<Arc<Vm>>,
    last_pid: u32,
    gone: Option<VmGone>,
    containers: HashMap<String, Arc<Container>>,
    config: Option<HuskConfig>,
    paths: Option<SandboxPaths>,
}

/// The sandbox served by this shim.
pub struct Sandbox {
    /// The sandbox id (the shim's `-id`).
    pub id: String,
    /// containerd namespace.
    pub namespace: String,
    /// The shim's own socket, removed when it shuts down.
    pub socket: Option<PathBuf>,
    /// Events to containerd.
    pub events: Events,
    booter: Arc<dyn Booter>,
    exit: Arc<ExitSignal>,
    boot_lock: tokio::sync::Mutex<()>,
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox")
            .field("id", &self.id)
            .field("namespace", &self.namespace)
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

/// Converts the agent's nanoseconds to a time (0 means "now").
pub fn time_from_ns(ns: u64) -> SystemTime {
    if ns == 0 {
        SystemTime::now()
    } else {
        UNIX_EPOCH + Duration::from_nanos(ns)
    }
}

impl Sandbox {
    /// A sandbox without a VM yet.
    pub fn new(
        id: &str,
        namespace: &str,
        socket: Option<PathBuf>,
        events: Events,
        booter: Arc<dyn Booter>,
        exit: Arc<ExitSignal>,
    ) -> Sandbox {
        Sandbox {
            id: id.to_string(),
            namespace: namespace.to_string(),
            socket,
            events,
            booter,
            exit,
            boot_lock: tokio::sync::Mutex::new(()),
            inner: Mutex::new(Inner {
                state: SandboxState::Empty,
                vm: None,
                last_pid: 0,
                gone: None,
                containers: HashMap::new(),
                config: None,
                paths: None,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set_state(inner: &mut Inner, to: SandboxState) -> Result<()> {
        if !inner.state.can_become(to) {
            return Err(ShimError::FailedPrecondition(format!(
                "the sandbox VM is {:?} and cannot become {:?}",
                inner.state, to
            )));
        }
        tracing::debug!("sandbox state {:?} -> {:?}", inner.state, to);
        inner.state = to;
        Ok(())
    }

    /// The VM state.
    pub fn vm_state(&self) -> SandboxState {
        self.lock().state
    }

    /// The container `id`.
    pub fn container(&self, id: &str) -> Result<Arc<Container>> {
        self.lock()
            .containers
            .get(id)
            .cloned()
            .ok_or_else(|| ShimError::NotFound(format!("container {id} not found")))
    }

    /// Whether a container with `id` exists.
    pub fn has_container(&self, id: &str) -> bool {
        self.lock().containers.contains_key(id)
    }

    /// Every container.
    pub fn containers(&self) -> Vec<Arc<Container>> {
        self.lock().containers.values().cloned().collect()
    }

    /// Registers a created container.
    pub fn insert_container(&self, c: Arc<Container>) -> Result<()> {
        let mut inner = self.lock();
        if inner.containers.contains_key(&c.id) {
            return Err(ShimError::AlreadyExists(format!(
                "container {} already exists",
                c.id
            )));
        }
        inner.containers.insert(c.id.clone(), c);
        Ok(())
    }

    /// Forgets a container; returns how many remain.
    pub fn remove_container(&self, id: &str) -> usize {
        let mut inner = self.lock();
        inner.containers.remove(id);
        inner.containers.len()
    }

    /// The pid containerd sees for every task: husk-vmm's (the last one, once it ended).
    pub fn task_pid(&self) -> u32 {
        let inner = self.lock();
        inner.vm.as_ref().map(|v| v.pid).unwrap_or(inner.last_pid)
    }

    /// The sandbox's paths (known once the config was loaded).
    pub fn paths(&self) -> Option<SandboxPaths> {
        self.lock().paths.clone()
    }

    /// The running VM, or why there is none.
    pub fn vm(&self) -> Result<Arc<Vm>> {
        let inner = self.lock();
        match (&inner.vm, inner.state) {
            (Some(vm), SandboxState::Running) => Ok(vm.clone()),
            (_, SandboxState::Gone) => Err(ShimError::FailedPrecondition(format!(
                "the sandbox VM is gone: {}",
                inner
                    .gone
                    .as_ref()
                    .map(|g| g.detail.as_str())
                    .unwrap_or("unknown")
            ))),
            (_, s) => Err(ShimError::FailedPrecondition(format!(
                "the sandbox VM is not running ({s:?})"
            ))),
        }
    }

    /// The running VM if any (no error when there is none).
    pub fn running_vm(&self) -> Option<Arc<Vm>> {
        self.vm().ok()
    }

    /// The VM, booting it first if this is the sandbox's first container.
    pub async fn ensure_vm(
        self: &Arc<Self>,
        config_path: Option<&Path>,
        annotations: &HashMap<String, String>,
        hostname: Option<String>,
        netns: Option<PathBuf>,
        cgroups_path: Option<String>,
    ) -> Result<(Arc<Vm>, SandboxPaths)> {
        let _boot = self.boot_lock.lock().await;
        let config = {
            let inner = self.lock();
            match inner.state {
                SandboxState::Running => {
                    if let (Some(vm), Some(p)) = (&inner.vm, &inner.paths) {
                        return Ok((vm.clone(), p.clone()));
                    }
                }
                SandboxState::Empty => {}
                _ => {
                    drop(inner);
                    return Err(self.vm().err().unwrap_or_else(|| {
                        ShimError::FailedPrecondition("the sandbox VM is not running".into())
                    }));
                }
            }
            inner.config.clone()
        };
        let config = match config {
            Some(c) => c,
            None => {
                let loaded = config::load(config_path)?;
                tracing::info!(source = ?loaded.source, "husk config loaded");
                loaded.config
            }
        };
        let size = vm::size::size(&config, annotations, &vm::size::HostLimits::probe())?;
        let cgroup = cgroups_path
            .as_deref()
            .map(crate::cgroup::path::parse)
            .transpose()
            .map_err(|e| ShimError::InvalidArgument(e.to_string()))?;
        let paths = SandboxPaths::new(&config.state_dir, &self.id);
        claim_state_dir(&paths)?;
        {
            let mut inner = self.lock();
            Self::set_state(&mut inner, SandboxState::Booting)?;
            inner.config = Some(config.clone());
            inner.paths = Some(paths.clone());
        }
        let booted = async {
            let pod_net = network::setup(netns.as_deref(), &paths).await?;
            let req = BootRequest {
                paths: paths.clone(),
                config: config.clone(),
                size,
                memory_annotated: annotations.contains_key(vm::size::ANNOTATION_MEMORY),
                cgroup,
                net: pod_net.net.clone(),
            };
            let vm = self.booter.boot(&req).await?;
            setup_sandbox(vm, hostname, pod_net).await
        }
        .await;
        match booted {
            Ok(vm) => {
                let vm = Arc::new(vm);
                {
                    let mut inner = self.lock();
                    Self::set_state(&mut inner, SandboxState::Running)?;
                    inner.vm = Some(vm.clone());
                    inner.last_pid = vm.pid;
                    inner.gone = None;
                }
                self.watch_vm(vm.clone());
                if let Some(ns) = netns {
                    network::forward::spawn(ns, paths.vsock(), vm.gone.clone());
                }
                tokio::spawn(vm::liveness::watch(vm.clone(), config.liveness_timeout()));
                self.watch_oom(vm.clone());
                Ok((vm, paths))
            }
            Err(e) => {
                tracing::error!("booting the sandbox VM failed: {e}");
                if let Err(c) = network::teardown(paths.root()).await {
                    tracing::warn!("removing the pod network: {c}");
                }
                vm::pod_cgroup::remove(paths.root()).await;
                if let Err(c) = unmount::unmount_and_remove(paths.root()) {
                    tracing::warn!("cleaning up {}: {c}", paths.root().display());
                }
                let mut inner = self.lock();
                Self::set_state(&mut inner, SandboxState::Empty)?;
                Err(e)
            }
        }
    }

    /// Stops the VM and removes the sandbox's state (the last container was deleted, or
    /// Shutdown asked for it now).
    pub async fn teardown_vm(&self) {
        let _boot = self.boot_lock.lock().await;
        let (vm, paths, limit) = {
            let mut inner = self.lock();
            if matches!(inner.state, SandboxState::Empty) {
                return;
            }
            if Self::set_state(&mut inner, SandboxState::Stopping).is_err() {
                return;
            }
            let limit = inner
                .config
                .as_ref()
                .map(HuskConfig::shutdown_timeout)
                .unwrap_or(Duration::from_secs(10));
            (inner.vm.take(), inner.paths.clone(), limit)
        };
        if let Some(vm) = vm {
            let end = vm.stop(limit).await;
            tracing::info!(
                pid = vm.pid,
                "the sandbox VM stopped: {:?}",
                end.map(|e| e.exit)
            );
        }
        for c in self.containers() {
            for p in c.processes() {
                p.io.close();
            }
        }
        if let Some(p) = &paths {
            if let Err(e) = network::teardown(p.root()).await {
                tracing::error!("removing the pod network: {e}");
            }
            vm::pod_cgroup::remove(p.root()).await;
            if let Err(e) = unmount::unmount_and_remove(p.root()) {
                tracing::error!("removing the sandbox state {}: {e}", p.root().display());
            }
        }
        let mut inner = self.lock();
        let _ = Self::set_state(&mut inner, SandboxState::Empty);
    }

    /// Ends the shim: its socket goes away at once (so a new `start` for the same id cannot
    /// reach this exiting process), then the server stops.
    pub fn exit_shim(&self) {
        if let Some(s) = &self.socket {
            let _ = std::fs::remove_file(s);
        }
        self.exit.signal();
    }

    fn watch_vm(self: &Arc<Self>, vm: Arc<Vm>) {
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
            let current = inner.vm.as_ref().is_some_and(|v| Arc::ptr_eq(v, vm));
            if !current || inner.state != SandboxState::Running {
                return;
            }
            let _ = Self::set_state(&mut inner, SandboxState::Gone);
            inner.gone = Some(gone.clone());
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

    fn watch_oom(self: &Arc<Self>, vm: Arc<Vm>) {
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

/// Makes sure `<state_dir>/<id>` is ours: a leftover from a crashed shim is cleaned, one in use
/// by a live husk-vmm (the same id in another containerd namespace) is refused.
fn claim_state_dir(paths: &SandboxPaths) -> Result<()> {
    if !paths.root().exists() {
        return Ok(());
    }
    if let Some(pid) = crate::cleanup::live_vmm(paths) {
        return Err(ShimError::AlreadyExists(format!(
            "sandbox state {} is in use by husk-vmm pid {pid} (a sandbox with the same id in \
             another containerd namespace?)",
            paths.root().display()
        )));
    }
    tracing::warn!("removing stale sandbox state {}", paths.root().display());
    if let Err(e) = network::teardown_blocking(paths.root()) {
        tracing::warn!("removing the stale pod network: {e}");
    }
    unmount::unmount_and_remove(paths.root())?;
    Ok(())
}

/// Pod-wide guest setup: the hostname, the shared directory and the pod's NICs and routes.
/// Without a hostname in the spec the guest takes the host's, as a runc container's new UTS
/// namespace starts with it.
async fn setup_sandbox(vm: Vm, hostname: Option<String>, net: PodNetwork) -> Result<Vm> {
    let mut req = api::SetupSandboxRequest::new();
    req.hostname = hostname
        .or_else(|| {
            nix::unistd::gethostname()
                .ok()
                .and_then(|h| h.into_string().ok())
        })
        .unwrap_or_default();
    let mut share = api::GuestMount::new();
    share.source = paths::FS_TAG.to_string();
    share.fstype = "virtiofs".to_string();
    share.target = paths::GUEST_SHARED.to_string();
    req.mounts.push(share);
    req.interfaces = net.interfaces;
    req.routes = net.routes;
    if let Err(e) = vm.agent.setup_sandbox(&req).await {
        // A VM that died under the call is the cause, not the connection's early EOF.
        let err = crate::lifecycle::agent_failure(&vm, "setting up the sandbox", e).await;
        vm.kill().await;
        return Err(err);
    }
    Ok(vm)
}

#[cfg(test)]
mod tests {
    use super::SandboxState::*;
    use super::*;

    #[test]
    fn vm_states_only_move_forward() {
        assert!(Empty.can_become(Booting));
        assert!(Booting.can_become(Empty));
        assert!(Running.can_become(Gone));
        assert!(Gone.can_become(Stopping));
        assert!(Stopping.can_become(Empty));
        assert!(!Empty.can_become(Running));
        assert!(!Gone.can_become(Running));
        assert!(!Stopping.can_become(Running));
    }

    #[test]
    fn agent_time_zero_means_now() {
        let t = time_from_ns(0);
        assert!(t.elapsed().unwrap() < Duration::from_secs(5));
        assert_eq!(
            time_from_ns(1_000_000_000),
            UNIX_EPOCH + Duration::from_secs(1)
        );
    }
}

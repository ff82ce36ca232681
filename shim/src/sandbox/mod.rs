//! The sandbox: one shim, one VM, the containers in it.
//!
//! The sandbox owns only the VM (its life, [`state::VmSlot`]) and the container registry; the
//! requests that act on them are the Task service's ([`crate::task`]). The first Create boots
//! the VM ([`boot`]); the last Delete stops it; Shutdown then ends the shim. If the VM ends on
//! its own (husk-vmm crashed, the guest panicked and rebooted, someone killed it), every started
//! process exits with 137 (as runc reports SIGKILL) and its exit event is published after
//! whatever output reached the host; created processes become stopped without an event
//! ([`watch`]).

mod boot;
pub use boot::node_hostname;
pub mod pod;
mod state;
mod watch;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use containerd_shim::ExitSignal;

use crate::config::HuskConfig;
use crate::container::Container;
use crate::error::{Result, ShimError};
use crate::events::Events;
use crate::paths::SandboxPaths;
use crate::vm::{Booter, Vm};

pub use state::SandboxState;
use state::VmSlot;

#[derive(Debug)]
struct Inner {
    /// The VM's life and what each stage has.
    slot: VmSlot,
    /// husk-vmm's pid, kept after the VM is gone (containerd's pid for every task).
    last_pid: u32,
    /// The husk config, loaded by the first Create and kept for the shim's life.
    config: Option<HuskConfig>,
    containers: HashMap<String, Arc<Container>>,
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
    /// The sandbox API's pod, when containerd drives the sandbox through it.
    pod: Mutex<Option<pod::Pod>>,
    /// The pod's end, for WaitSandbox.
    pod_end: tokio::sync::watch::Sender<Option<(u32, SystemTime)>>,
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
                slot: VmSlot::Empty,
                last_pid: 0,
                config: None,
                containers: HashMap::new(),
            }),
            pod: Mutex::new(None),
            pod_end: tokio::sync::watch::channel(None).0,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The VM state.
    pub fn vm_state(&self) -> SandboxState {
        self.lock().slot.state()
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
        inner.slot.vm().map_or(inner.last_pid, |v| v.pid)
    }

    /// The sandbox's paths, while it has a state directory (from Booting to Stopping).
    pub fn paths(&self) -> Option<SandboxPaths> {
        self.lock().slot.paths().cloned()
    }

    /// The running VM, or why there is none.
    pub fn vm(&self) -> Result<Arc<Vm>> {
        let inner = self.lock();
        match &inner.slot {
            VmSlot::Running { vm, .. } => Ok(vm.clone()),
            other => Err(other.not_running()),
        }
    }

    /// The running VM if any (no error when there is none).
    pub fn running_vm(&self) -> Option<Arc<Vm>> {
        self.vm().ok()
    }

    /// The sandbox API's pod, locked.
    pub fn pod(&self) -> std::sync::MutexGuard<'_, Option<pod::Pod>> {
        self.pod.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the VM belongs to a sandbox API pod (and not to its containers).
    pub fn is_api_pod(&self) -> bool {
        self.pod().is_some()
    }

    /// Moves the sandbox API's pod to `next` (checked).
    pub fn advance_pod(&self, next: pod::PodPhase) -> Result<()> {
        match self.pod().as_mut() {
            Some(p) => p.phase.advance(next),
            None => Err(ShimError::FailedPrecondition(format!(
                "sandbox {} was not created",
                self.id
            ))),
        }
    }

    /// Records the pod's end (once) and wakes WaitSandbox.
    pub fn end_pod(&self, exit_status: u32) {
        let at = SystemTime::now();
        let stopped = pod::PodPhase::Stopped {
            exit_status,
            exited_at: at,
        };
        if self.advance_pod(stopped).is_ok() {
            self.pod_end.send_replace(Some((exit_status, at)));
        }
    }

    /// Waits for the pod's end: its exit status and time.
    pub async fn pod_ended(&self) -> (u32, SystemTime) {
        let mut rx = self.pod_end.subscribe();
        let end = rx.wait_for(Option::is_some).await.ok().and_then(|e| *e);
        end.unwrap_or((137, SystemTime::now()))
    }

    /// Ends the shim: its socket goes away at once (so a new `start` for the same id cannot
    /// reach this exiting process), then the server stops.
    pub fn exit_shim(&self) {
        self.remove_socket();
        self.exit.signal();
    }

    fn remove_socket(&self) {
        if let Some(s) = &self.socket {
            let _ = std::fs::remove_file(s);
        }
    }

    /// [`Sandbox::exit_shim`] from inside a handler whose reply must reach containerd: the
    /// socket goes at once, the server stops [`REPLY_GRACE`] later.
    pub fn exit_shim_after_reply(&self) {
        self.remove_socket();
        tokio::spawn(signal_after(Arc::clone(&self.exit), REPLY_GRACE));
    }
}

/// How long a shim ended by a request lives on after its handler returned. ttrpc writes a reply
/// after the handler returns, and a server shutdown cancels what it has not yet written;
/// containerd's sandbox controller fails RemovePodSandbox when ShutdownSandbox's connection
/// closes before the reply (its task Shutdown tolerates that). Seen 2 times in 10 in a nested
/// bench run with the exit signalled at once.
pub const REPLY_GRACE: Duration = Duration::from_millis(500);

async fn signal_after(exit: Arc<ExitSignal>, grace: Duration) {
    tokio::time::sleep(grace).await;
    exit.signal();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_exit_after_a_reply_waits_for_the_grace() {
        let exit = Arc::new(ExitSignal::default());
        let waiter = Arc::clone(&exit);
        let t0 = std::time::Instant::now();
        tokio::spawn(signal_after(Arc::clone(&exit), REPLY_GRACE));
        waiter.wait().await;
        assert!(t0.elapsed() >= REPLY_GRACE);
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

//! The agent's state: the containers and their runtime context (configuration, reaper, OOM
//! watcher), and every operation of the API as a method returning [`AgentError`]
//! (`server/rpc.rs` only translates).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use husk_protocol::agent::api;
use husk_protocol::ids;
use husk_protocol::stdio::StdioHello;
use oci_spec::runtime::LinuxResources;
use tokio::sync::Notify;

use crate::config::Config;
use crate::conn::Conn;
use crate::container::runtime::Runtime;
use crate::container::{cgroup, create, exec, Container};
use crate::error::{AgentError, Result};
use crate::reaper::Reaper;
use crate::status::{Action, Status};
use crate::stdio::StdioRequest;

/// How long RemoveContainer waits for killed processes to be reaped.
const KILL_WAIT: Duration = Duration::from_secs(10);

/// Milliseconds since the (guest) kernel started, from CLOCK_BOOTTIME (what /proc/uptime reads).
pub fn uptime_ms() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
        .map(|t| (t.tv_sec() as u64) * 1000 + (t.tv_nsec() as u64) / 1_000_000)
        .unwrap_or(0)
}

/// Everything the agent knows.
#[derive(Debug)]
pub struct Sandbox {
    /// What the containers run with: configuration, reaper, OOM events.
    pub rt: Runtime,
    containers: Mutex<HashMap<String, Arc<Container>>>,
    creating: Mutex<HashSet<String>>,
    /// Pod namespace anchors by sandbox id, for pods without a sandbox container
    /// ([`crate::container::anchor`]).
    anchors: tokio::sync::Mutex<HashMap<String, i32>>,
    /// Uptime (ms) when the agent began serving.
    pub ready_ms: AtomicU64,
    /// Signalled by Shutdown.
    pub shutdown: Notify,
    /// Whether this guest is a template's, and whether it was restored.
    pub identity: crate::identity::Identity,
}

impl Sandbox {
    /// A sandbox with no containers; creates the state directories.
    pub fn new(config: Config, reaper: Reaper) -> Result<Arc<Self>> {
        for d in [config.containers_root(), config.bundles(), config.sockets()] {
            std::fs::create_dir_all(&d)
                .map_err(AgentError::io(format!("mkdir {}", d.display())))?;
        }
        Ok(Arc::new(Sandbox {
            rt: Runtime::new(config, reaper),
            containers: Mutex::default(),
            creating: Mutex::default(),
            anchors: tokio::sync::Mutex::default(),
            ready_ms: AtomicU64::new(0),
            shutdown: Notify::new(),
            identity: crate::identity::Identity::from_cmdline(
                &std::fs::read_to_string("/proc/cmdline").unwrap_or_default(),
            ),
        }))
    }

    fn map(&self) -> MutexGuard<'_, HashMap<String, Arc<Container>>> {
        self.containers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A container by id.
    pub fn get(&self, id: &str) -> Result<Arc<Container>> {
        self.map()
            .get(id)
            .cloned()
            .ok_or_else(|| AgentError::ContainerNotFound(id.into()))
    }

    /// Every container.
    pub fn all(&self) -> Vec<Arc<Container>> {
        self.map().values().cloned().collect()
    }

    /// The init pid of a known container (for namespace joining).
    pub fn init_pid(&self, id: &str) -> Option<i32> {
        let c = self.map().get(id).cloned()?;
        (c.init.status() != Status::Stopped)
            .then(|| c.init.pid())
            .flatten()
    }

    /// The pod anchor for a container whose spec names a sandbox that is not a container here
    /// (the sandbox API's pods), started by the pod's first such container.
    async fn anchor_for(&self, id: &str, spec: &[u8]) -> Result<Option<(String, i32)>> {
        let Some(sandbox) = crate::container::spec::sandbox_id(spec) else {
            return Ok(None);
        };
        if sandbox == id || self.map().contains_key(&sandbox) {
            return Ok(None);
        }
        let mut anchors = self.anchors.lock().await;
        if let Some(pid) = anchors.get(&sandbox) {
            return Ok(Some((sandbox, *pid)));
        }
        let exe = self.rt.config.exe.clone();
        let namespaces = nix::sched::CloneFlags::CLONE_NEWIPC
            | nix::sched::CloneFlags::CLONE_NEWUTS
            | nix::sched::CloneFlags::CLONE_NEWPID;
        let pid = tokio::task::spawn_blocking(move || {
            crate::container::anchor::spawn(&exe, namespaces, crate::container::anchor::Role::Bare)
        })
        .await
        .map_err(|e| AgentError::Runner(format!("the pod anchor task: {e}")))??;
        tracing::info!(
            sandbox = sandbox.as_str(),
            pid,
            "pod namespace anchor started"
        );
        anchors.insert(sandbox.clone(), pid);
        Ok(Some((sandbox, pid)))
    }

    /// CreateContainer.
    pub async fn create_container(
        &self,
        id: &str,
        spec: &[u8],
        stdio: StdioRequest,
    ) -> Result<i32> {
        ids::validate(id)?;
        {
            let map = self.map();
            let mut creating = self.creating.lock().unwrap_or_else(|p| p.into_inner());
            if map.contains_key(id) || !creating.insert(id.into()) {
                return Err(AgentError::ContainerExists(id.into()));
            }
        }
        let anchor = match self.anchor_for(id, spec).await {
            Ok(a) => a,
            Err(e) => {
                self.creating
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(id);
                return Err(e);
            }
        };
        let result = create::create(&self.rt, id, spec, stdio, |sid| {
            self.init_pid(sid).or_else(|| {
                anchor
                    .as_ref()
                    .filter(|(a, _)| a == sid)
                    .map(|(_, pid)| *pid)
            })
        })
        .await;
        let mut map = self.map();
        self.creating
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
        let c = result?;
        let pid = c.init.pid().unwrap_or(0);
        map.insert(id.into(), c);
        Ok(pid)
    }

    /// ExecProcess.
    pub fn exec_process(
        &self,
        id: &str,
        exec_id: &str,
        process: &[u8],
        stdio: StdioRequest,
    ) -> Result<()> {
        let c = self.get(id)?;
        exec::register(&c, exec_id, process, stdio)
    }

    /// StartProcess.
    pub async fn start_process(&self, id: &str, exec_id: &str) -> Result<i32> {
        let c = self.get(id)?;
        if exec_id.is_empty() {
            create::start_init(&self.rt, &c).await
        } else {
            let p = c.process(exec_id)?;
            exec::start(&self.rt, &c, &p).await
        }
    }

    /// SignalProcess.
    pub fn signal_process(&self, id: &str, exec_id: &str, signal: u32, all: bool) -> Result<()> {
        let sig = i32::try_from(signal)
            .ok()
            .filter(|s| (1..=libc::SIGRTMAX()).contains(s))
            .ok_or_else(|| AgentError::InvalidArgument(format!("bad signal {signal}")))?;
        let c = self.get(id)?;
        let p = c.process(exec_id)?;
        if !all {
            return p.signal(sig);
        }
        p.status().check(Action::Signal)?;
        cgroup::kill_all(&c.cgroup, sig)
    }

    /// WaitProcess.
    pub async fn wait_process(&self, id: &str, exec_id: &str) -> Result<api::WaitResponse> {
        let p = self.get(id)?.process(exec_id)?;
        let f = p.wait().await;
        Ok(api::WaitResponse {
            exit_status: f.exit.status,
            exited_at_ns: f.exit.at_ns(),
            oom_killed: f.oom_killed,
            ..Default::default()
        })
    }

    /// DeleteProcess.
    pub fn delete_process(&self, id: &str, exec_id: &str) -> Result<()> {
        let c = self.get(id)?;
        if exec_id.is_empty() {
            return Err(AgentError::InvalidArgument(
                "DeleteProcess takes an exec id; remove the container for its init".into(),
            ));
        }
        let p = c.process(exec_id)?;
        let status = p.status();
        if status == Status::Running {
            return Err(AgentError::WrongState(crate::status::TransitionError {
                from: status,
                action: "delete",
            }));
        }
        if status == Status::Created && p.pid().is_some() {
            return Err(AgentError::Precondition("the exec is being started".into()));
        }
        c.remove_exec(exec_id);
        let _ = std::fs::remove_file(c.bundle.join(format!("exec-{exec_id}.json")));
        Ok(())
    }

    /// RemoveContainer.
    pub async fn remove_container(&self, id: &str, force: bool) -> Result<()> {
        let c = self.get(id)?;
        let status = c.status();
        if !force {
            status.check(Action::Remove)?;
            if c.execs().iter().any(|p| p.status() == Status::Running) {
                return Err(AgentError::Precondition(
                    "an exec of the container is still running".into(),
                ));
            }
        }
        self.kill_and_wait(&c).await;
        cgroup::remove(&c.cgroup).await?;
        let _ = std::fs::remove_dir_all(&c.state_dir);
        let _ = std::fs::remove_dir_all(&c.bundle);
        self.rt.oom.remove(id);
        self.map().remove(id);
        tracing::info!(container_id = id, "container removed");
        Ok(())
    }

    /// Kills everything in the container and waits (bounded) until its processes are reaped.
    async fn kill_and_wait(&self, c: &Container) {
        let started: Vec<_> = std::iter::once(Arc::clone(&c.init))
            .chain(c.execs())
            .filter(|p| p.pid().is_some())
            .collect();
        if started.iter().all(|p| p.finished().is_some()) && cgroup::pids(&c.cgroup).is_empty() {
            return;
        }
        if c.status() == Status::Paused {
            let _ = cgroup::freeze(&c.cgroup, false).await;
            c.set_paused(false);
        }
        if let Err(e) = cgroup::kill_all(&c.cgroup, libc::SIGKILL) {
            tracing::warn!(container_id = %c.id, error = %e, "kill");
        }
        if let Some(pid) = c.init.pid() {
            // The init may not be in the cgroup yet if it is stuck early in its setup.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let waits = futures::future::join_all(started.iter().map(|p| p.wait()));
        if tokio::time::timeout(KILL_WAIT, waits).await.is_err() {
            tracing::warn!(container_id = %c.id, "processes not reaped {KILL_WAIT:?} after SIGKILL");
        }
    }

    /// ResizeTty.
    pub fn resize_tty(&self, id: &str, exec_id: &str, width: u32, height: u32) -> Result<()> {
        let (w, h) = (
            u16::try_from(width).map_err(|_| AgentError::InvalidArgument("width".into()))?,
            u16::try_from(height).map_err(|_| AgentError::InvalidArgument("height".into()))?,
        );
        self.get(id)?.process(exec_id)?.resize(w, h)
    }

    /// ListProcesses.
    pub fn list_processes(&self, id: &str) -> Result<Vec<api::ProcessInfo>> {
        let c = self.get(id)?;
        let mut pids = cgroup::pids(&c.cgroup);
        pids.sort_unstable();
        Ok(pids
            .into_iter()
            .map(|pid| api::ProcessInfo {
                pid: pid as u32,
                exec_id: c.exec_of_pid(pid).unwrap_or_default(),
                ..Default::default()
            })
            .collect())
    }

    /// Stats.
    pub fn stats(&self, id: &str) -> Result<api::StatsResponse> {
        cgroup::stats(&self.get(id)?.cgroup)
    }

    /// UpdateContainer.
    pub async fn update_container(&self, id: &str, resources: &[u8]) -> Result<()> {
        let c = self.get(id)?;
        let r: LinuxResources = serde_json::from_slice(resources).map_err(|e| {
            AgentError::InvalidArgument(format!("resources are not OCI LinuxResources JSON: {e}"))
        })?;
        if c.status() == Status::Stopped {
            return Err(AgentError::WrongState(crate::status::TransitionError {
                from: Status::Stopped,
                action: "update",
            }));
        }
        let cid = c.id.clone();
        tokio::task::spawn_blocking(move || apply_resources(&cid, &r))
            .await
            .map_err(AgentError::task("applying resources"))?
    }

    /// PauseContainer / ResumeContainer.
    pub async fn set_paused(&self, id: &str, pause: bool) -> Result<()> {
        let c = self.get(id)?;
        c.status()
            .check(if pause { Action::Pause } else { Action::Resume })?;
        cgroup::freeze(&c.cgroup, pause).await?;
        c.set_paused(pause);
        Ok(())
    }

    /// Kills every container (Shutdown).
    pub async fn kill_all(&self) {
        for c in self.all() {
            self.kill_and_wait(&c).await;
        }
    }

    /// Checks a stdio hello and reserves its stream.
    pub fn reserve_stream(&self, h: &StdioHello) -> Result<()> {
        self.get(&h.container_id)?
            .process(&h.exec_id)?
            .reserve(h.kind)
    }

    /// Gives back a reservation.
    pub fn release_stream(&self, h: &StdioHello) {
        if let Ok(p) = self
            .get(&h.container_id)
            .and_then(|c| c.process(&h.exec_id))
        {
            p.release(h.kind);
        }
    }

    /// Attaches a reserved stream.
    pub fn attach_stream(&self, h: &StdioHello, conn: Conn) {
        if let Ok(p) = self
            .get(&h.container_id)
            .and_then(|c| c.process(&h.exec_id))
        {
            p.attach(h.kind, conn);
        }
    }
}

fn apply_resources(id: &str, r: &LinuxResources) -> Result<()> {
    use libcgroups::common::{CgroupManager, ControllerOpt};
    let manager = cgroup::manager(cgroup::spec_path(id).into(), id)?;
    manager
        .apply(&ControllerOpt {
            resources: r,
            disable_oom_killer: false,
            oom_score_adj: None,
            freezer_state: None,
        })
        .map_err(|e| AgentError::InvalidArgument(format!("applying resources: {e}")))
}

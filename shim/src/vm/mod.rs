//! The sandbox's VM: booting it (husk-vmm + the agent's health, bounded, with a cause named
//! when it fails and nothing left behind), watching it end, and stopping it.
//!
//! [`Booter`] is the seam between the sandbox logic and real processes: [`VmmBooter`] spawns
//! husk-vmm; unit tests plug in a fake that serves an in-process agent.

pub mod config;
pub mod control;
pub mod diagnose;
pub mod launch;
pub mod liveness;
pub mod pinning;
pub mod pod_cgroup;
pub mod size;
pub mod spawn;
pub mod template;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use husk_protocol::agent::api::CheckResponse;
use husk_protocol::{ports, VmConfigError, VmmExit};
use nix::sys::signal::Signal;
use tokio::sync::watch;

use crate::agent::{self, Agent, AgentError};
use crate::config::HuskConfig;
use crate::lines::{BoundedLines, RateLimit, MAX_LINE};

use crate::paths::SandboxPaths;
use crate::share;
use diagnose::diagnose;
use size::VmSize;
use spawn::{SharedTail, VmmEnd, VmmProcess};

/// Why a VM could not be started. Every variant names the cause.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// An artifact is missing.
    #[error("{what} {path} does not exist ({hint})")]
    Missing {
        /// Which artifact.
        what: &'static str,
        /// Where it was looked for.
        path: PathBuf,
        /// How to fix it.
        hint: &'static str,
    },
    /// The state directory is unusable.
    #[error("{0}")]
    Paths(String),
    /// The VM configuration is invalid.
    #[error("VM configuration: {0}")]
    Config(#[from] VmConfigError),
    /// The sandbox's virtio-fs share could not be made.
    #[error(transparent)]
    Share(#[from] crate::share::ShareError),
    /// The sandbox's writable-layer file system could not be made.
    #[error(transparent)]
    Writable(#[from] crate::writable::WritableError),
    /// A host operation failed.
    #[error("{context}: {source}")]
    Host {
        /// What was being done.
        context: String,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// husk-vmm ended before the agent answered.
    #[error("husk-vmm exited during boot: {end}: {cause}\nhusk-vmm stderr:\n{stderr}\nguest console tail:\n{console}")]
    VmmExited {
        /// How it ended.
        end: VmmEnd,
        /// The diagnosis.
        cause: String,
        /// Its stderr tail.
        stderr: String,
        /// The console tail.
        console: String,
    },
    /// The agent did not answer in time.
    #[error("the guest agent was not ready after {secs} s: {cause} (last error: {last_error})\nguest console tail:\n{console}")]
    AgentTimeout {
        /// The boot timeout.
        secs: u64,
        /// The diagnosis.
        cause: String,
        /// The last connect/check error.
        last_error: String,
        /// The console tail.
        console: String,
    },
    /// The agent answered but cannot be used.
    #[error("the guest agent cannot be used: {0}")]
    Agent(#[from] AgentError),
    /// The pod's cgroup could not be made or joined.
    #[error("the pod's cgroup: {0}")]
    Cgroup(#[from] crate::cgroup::CgroupError),
    /// The VM does not fit the pod's memory limit.
    #[error("{0}")]
    PodMemory(String),
}

fn host(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> BootError {
    let context = context.into();
    move |source| BootError::Host { context, source }
}

/// What to boot.
#[derive(Debug, Clone)]
pub struct BootRequest {
    /// The sandbox's files.
    pub paths: SandboxPaths,
    /// The husk configuration.
    pub config: HuskConfig,
    /// The VM's size (before it is fitted to the pod's cgroup).
    pub size: VmSize,
    /// Whether `io.husk.memory` set the memory (refused, not shrunk, when it does not fit).
    pub memory_annotated: bool,
    /// The pod's cgroup, relative to each hierarchy's root (`linux.cgroupsPath`).
    pub cgroup: Option<PathBuf>,
    /// The pod's NICs (taps in the sandbox's network namespace; `crate::network`).
    pub net: Vec<husk_protocol::NetConfig>,
}

/// How a VM ended, as the sandbox sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmGone {
    /// husk-vmm's exit.
    pub exit: VmmExit,
    /// Words for logs and errors (exit and console tail).
    pub detail: String,
}

/// A booted VM with a connected agent.
#[derive(Debug)]
pub struct Vm {
    /// husk-vmm's host pid: the pid containerd sees for every task.
    pub pid: u32,
    /// The agent.
    pub agent: Agent,
    /// What the agent reported at boot.
    pub info: CheckResponse,
    /// `Some` once the VM ended.
    pub gone: watch::Receiver<Option<VmGone>>,
    /// Restored from a template: its NICs have the template's MACs
    /// (`husk_protocol::template::nic_mac`) until SetupSandbox gives them the pod's.
    pub from_template: bool,
    process: Option<VmmProcess>,
    gone_tx: Option<watch::Sender<Option<VmGone>>>,
}

impl Vm {
    /// A VM around an agent and an end signal, without a process (tests, host mode).
    pub fn detached(
        pid: u32,
        agent: Agent,
        info: CheckResponse,
        gone: watch::Receiver<Option<VmGone>>,
    ) -> Vm {
        Vm {
            pid,
            agent,
            info,
            gone,
            from_template: false,
            process: None,
            gone_tx: None,
        }
    }

    /// Stops the VM: asks the agent to shut down, then SIGTERM and SIGKILL to husk-vmm if it
    /// does not end within `limit`. Returns how it ended.
    pub async fn stop(&self, limit: Duration) -> Option<VmGone> {
        if let Some(gone) = self.gone.borrow().clone() {
            return Some(gone);
        }
        let _ = self.agent.shutdown(Duration::from_secs(2)).await;
        if let Some(gone) = wait_gone(&self.gone, limit).await {
            return Some(gone);
        }
        if let Some(p) = &self.process {
            tracing::warn!(
                pid = p.pid,
                "the VM did not stop within {limit:?}; terminating husk-vmm"
            );
            p.terminate(Duration::from_secs(3)).await;
        } else if let Some(tx) = &self.gone_tx {
            let _ = tx.send(Some(VmGone {
                exit: VmmExit::Signal(9),
                detail: "stopped".into(),
            }));
        }
        wait_gone(&self.gone, Duration::from_secs(5)).await
    }

    /// Kills husk-vmm outright (used when the agent cannot be trusted to answer).
    pub async fn kill(&self) {
        if let Some(p) = &self.process {
            p.signal(Signal::SIGKILL);
            p.wait(Duration::from_secs(10)).await;
        }
    }
}

/// Waits at most `limit` for a VM's end.
pub async fn wait_gone(gone: &watch::Receiver<Option<VmGone>>, limit: Duration) -> Option<VmGone> {
    let mut rx = gone.clone();
    let done = async move {
        rx.wait_for(Option::is_some)
            .await
            .ok()
            .and_then(|g| g.clone())
    };
    tokio::time::timeout(limit, done).await.ok().flatten()
}

/// Boots VMs.
#[async_trait]
pub trait Booter: Send + Sync + std::fmt::Debug {
    /// Boots a VM for `req` and waits for its agent; on failure nothing is left running.
    async fn boot(&self, req: &BootRequest) -> Result<Vm, BootError>;
}

/// The real thing: husk-vmm processes.
#[derive(Debug, Clone)]
pub struct VmmBooter {
    /// The shim binary's directory (artifact defaults).
    pub bindir: PathBuf,
}

fn require(what: &'static str, path: &Path, hint: &'static str) -> Result<(), BootError> {
    if path.is_file() {
        Ok(())
    } else {
        Err(BootError::Missing {
            what,
            path: path.to_path_buf(),
            hint,
        })
    }
}

/// Agent log lines logged per second before the rest is dropped (and counted).
const AGENT_LOG_LINES_PER_SEC: u32 = 200;

/// Forwards the agent's log lines (guest-initiated vsock port 1026) to the shim's log. Exactly
/// one connection is taken: the one the agent opens at its start, before any container can
/// run. Then the socket is removed, so that a later connection to the port from the guest
/// (a container's, or anything else) finds nobody listening and is reset by husk-vmm.
pub(crate) fn listen_agent_log(path: &Path) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let _ = std::fs::remove_file(path);
    let listener = tokio::net::UnixListener::bind(path)?;
    let path = path.to_path_buf();
    Ok(tokio::spawn(async move {
        let accepted = listener.accept().await;
        drop(listener);
        let _ = std::fs::remove_file(&path);
        let Ok((stream, _)) = accepted else { return };
        let mut lines = BoundedLines::new(stream, MAX_LINE);
        let mut limit = RateLimit::new(AGENT_LOG_LINES_PER_SEC);
        while let Ok(Some(line)) = lines.next_line().await {
            if limit.allow(Instant::now(), |n| {
                tracing::warn!(
                    lines = n,
                    cut = lines.cut,
                    "agent log: lines not logged (rate limit)"
                )
            }) {
                tracing::debug!("agent: {line}");
            }
        }
    }))
}

fn tail_text(t: &SharedTail) -> String {
    t.lock().map(|t| t.text()).unwrap_or_default()
}

/// Why the agent did not come up, from what the VM printed.
fn cause(process: &VmmProcess, not_ready: &agent::NotReady) -> String {
    match (process.console.lock(), process.stderr.lock()) {
        (Ok(console), Ok(stderr)) => diagnose(&console, &stderr, not_ready),
        _ => "unknown".into(),
    }
}

impl VmmBooter {
    async fn prepare(
        &self,
        req: &BootRequest,
    ) -> Result<
        (
            crate::config::Artifacts,
            Option<crate::cgroup::PodCgroup>,
            VmSize,
        ),
        BootError,
    > {
        let a = req.config.artifacts(&self.bindir);
        require(
            "husk-vmm",
            &a.vmm,
            "set `vmm` in the husk config or install husk-vmm next to the shim",
        )?;
        require(
            "the guest kernel",
            &a.kernel,
            "set `kernel` in the husk config or run `make install`",
        )?;
        require(
            "the guest image (initramfs)",
            &a.initramfs,
            "set `initramfs` in the husk config or run `make install`",
        )?;
        req.paths.check_socket_lengths().map_err(BootError::Paths)?;
        let root = req.paths.root();
        std::fs::create_dir_all(root).map_err(host(format!("creating {}", root.display())))?;
        std::fs::set_permissions(root, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .map_err(host(format!("setting the mode of {}", root.display())))?;
        let sockets = req.paths.sockets();
        std::fs::create_dir(&sockets).map_err(host(format!("creating {}", sockets.display())))?;
        share::create(&req.paths)?;
        if req.config.writable_limit_mib > 0 {
            // mkfs.ext4 and the mount block: off the runtime's worker threads.
            let (paths, dir) = (req.paths.clone(), req.config.writable_dir.clone());
            let mib = req.config.writable_limit_mib;
            tokio::task::spawn_blocking(move || crate::writable::create(&paths, &dir, mib))
                .await
                .map_err(|e| host("making the pod's writable layer")(std::io::Error::other(e)))??;
        }
        // From here on a failure leaves the cgroup to the sandbox's failure path, which
        // removes what `<state>/cgroup` records with the rest of the state.
        let (cgroup, size) = pod_cgroup::place(req)?;
        Ok((a, cgroup, size))
    }

    /// Writes `vm.json` (restoring `restore` when given) and listens on the agent's log port.
    fn write_config(
        &self,
        req: &BootRequest,
        a: &crate::config::Artifacts,
        size: VmSize,
        restore: Option<&Path>,
    ) -> Result<tokio::task::JoinHandle<()>, BootError> {
        let affinity = if req.config.pin_vcpus {
            let allowed = pinning::allowed_cpus()
                .map_err(|e| host("reading the shim's CPU affinity")(e.into()))?;
            let sandbox = req.paths.root().file_name().unwrap_or_default();
            pinning::choose(&allowed, size.vcpus, &sandbox.to_string_lossy())
        } else {
            Vec::new()
        };
        let mut vm = config::vm_config(
            a,
            size,
            &req.config.extra_cmdline,
            &req.paths,
            req.net.clone(),
            affinity,
            req.config.free_page_reporting,
        );
        vm.restore = restore.map(Path::to_path_buf);
        vm.validate()?;
        std::fs::write(req.paths.vm_config(), vm.to_json())
            .map_err(host(format!("writing {}", req.paths.vm_config().display())))?;
        listen_agent_log(&req.paths.vsock_port(ports::LOG_PORT)).map_err(host(format!(
            "listening on {}",
            req.paths.vsock_port(ports::LOG_PORT).display()
        )))
    }
}

#[async_trait]
impl Booter for VmmBooter {
    async fn boot(&self, req: &BootRequest) -> Result<Vm, BootError> {
        let (a, cgroup, size) = self.prepare(req).await?;
        // PID 1 of a PID namespace of its own (the first part of its jail), in the pod's
        // cgroup. The cgroup itself goes with the state directory (`cgroup::remove_recorded`).
        let join = cgroup.as_ref().map(|c| c.join()).transpose()?;
        let shape = template::restore::shape_for(req, &a, size);
        let planned = shape
            .as_ref()
            .and_then(|s| template::plan(&req.config.template_dir, s));
        if let Some(dir) = planned {
            let restored = async {
                let limit = template::restore::limit(req.config.boot_timeout());
                let vm = self
                    .start(req, &a, size, Some(&dir), join.as_ref(), limit)
                    .await?;
                template::restore::make_own(vm).await
            };
            match restored.await {
                Ok(vm) => return Ok(vm),
                Err(e) => template::restore::failed(&dir, &e),
            }
        }
        let vm = self
            .start(
                req,
                &a,
                size,
                None,
                join.as_ref(),
                req.config.boot_timeout(),
            )
            .await?;
        if let Some(shape) = shape {
            template::restore::after_cold_boot(&self.bindir, &req.config, size, shape);
        }
        Ok(vm)
    }
}

impl VmmBooter {
    /// Writes `vm.json`, starts husk-vmm and waits (at most `limit`) for its agent; on failure
    /// husk-vmm is gone.
    async fn start(
        &self,
        req: &BootRequest,
        a: &crate::config::Artifacts,
        size: VmSize,
        restore: Option<&Path>,
        join: Option<&crate::cgroup::Join>,
        limit: Duration,
    ) -> Result<Vm, BootError> {
        let started = Instant::now();
        let log = self.write_config(req, a, size, restore)?;
        let vmm = &a.vmm;
        let process = spawn::spawn(
            vmm,
            &req.paths.vm_config(),
            true,
            join,
            launch::Lifetime::Own,
        )
        .map_err(host(format!("starting {}", vmm.display())))?;
        let _ = std::fs::write(req.paths.vmm_pid(), process.pid.to_string());
        tracing::info!(
            pid = process.pid,
            vcpus = size.vcpus,
            memory_mib = size.memory_mib,
            restore = restore.map(|d| d.display().to_string()),
            "husk-vmm started"
        );
        let deadline = started + limit;
        let vsock = req.paths.vsock();
        let outcome = tokio::select! {
            r = agent::wait_ready(&vsock, deadline) => Ok(r),
            end = process.end() => Err(end),
        };
        let failure = match outcome {
            Ok(Ok((agent, info))) => {
                tracing::info!(
                    pid = process.pid,
                    agent = info.agent_version.as_str(),
                    kernel = info.kernel_release.as_str(),
                    guest_ready_ms = info.ready_ms,
                    guest_uptime_ms = info.uptime_ms,
                    ms = started.elapsed().as_millis() as u64,
                    "the guest agent is ready"
                );
                let (gone_tx, gone) = watch::channel(None);
                let end = process.end();
                let (console, stderr) = (process.console.clone(), process.stderr.clone());
                let tx = gone_tx.clone();
                tokio::spawn(async move {
                    let exit = end.await.map(|e| e.exit).unwrap_or(VmmExit::Error);
                    // husk-vmm's last words name a reset's vCPU state or a fault's cause.
                    let said = stderr.lock().map(|t| t.last_words(3)).unwrap_or_default();
                    let detail = format!(
                        "{} (husk-vmm: {said}); guest console tail:\n{}",
                        VmmEnd { exit },
                        tail_text(&console)
                    );
                    let _ = tx.send(Some(VmGone { exit, detail }));
                });
                return Ok(Vm {
                    pid: process.pid,
                    agent,
                    info,
                    gone,
                    from_template: false,
                    process: Some(process),
                    gone_tx: Some(gone_tx),
                });
            }
            Ok(Err(not_ready)) => {
                process.signal(Signal::SIGKILL);
                process.wait(Duration::from_secs(10)).await;
                BootError::AgentTimeout {
                    secs: req.config.boot_timeout_secs,
                    cause: cause(&process, &not_ready),
                    last_error: not_ready.last_error,
                    console: tail_text(&process.console),
                }
            }
            Err(end) => {
                // Let the readers drain what the VMM printed last.
                tokio::time::sleep(Duration::from_millis(50)).await;
                let not_ready = agent::NotReady {
                    last_error: String::new(),
                    socket_seen: req.paths.vsock().exists(),
                    connected: false,
                };
                BootError::VmmExited {
                    end: end.unwrap_or(VmmEnd {
                        exit: VmmExit::Error,
                    }),
                    cause: cause(&process, &not_ready),
                    stderr: tail_text(&process.stderr),
                    console: tail_text(&process.console),
                }
            }
        };
        log.abort();
        Err(failure)
    }
}

//! Making a template: a VM of the shape, booted with `husk.template` on its command line to an
//! agent that answered its health check, paused and snapshotted by husk-vmm into a temporary
//! directory next to the templates, then renamed into place with its `template.json`.
//!
//! The builder VM is a sandbox of its own (`<state_dir>/template-<key>`: sockets, an empty
//! share, `vm.json`; its taps are in a network namespace that ends with the build,
//! [`super::nics`]), outside any pod's cgroup, and it dies with the thread that built it
//! ([`Lifetime::EndsWithLauncher`]): a shim that exits mid-build leaves no VM behind, and its
//! temporary directory, sandbox directory and lock are cleaned by the next build of the key.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use husk_protocol::template::{
    install, lookup, Lookup, TemplateMeta, TemplateShape, META_FILE, TEMPLATE_CMDLINE,
};
use husk_protocol::{ports, ControlRequest};

use super::lock::BuildLock;
use crate::agent;
use crate::config::HuskConfig;
use crate::paths::SandboxPaths;
use crate::vm::control;
use crate::vm::launch::Lifetime;
use crate::vm::size::VmSize;
use crate::vm::spawn::{self, VmmEnd};

/// Why a template could not be made.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A file or directory operation.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// Another builder is making this template now.
    #[error("template {0} is being made by another shim")]
    Busy(String),
    /// The builder VM's configuration.
    #[error("the template VM's configuration: {0}")]
    Config(#[from] husk_protocol::VmConfigError),
    /// The builder VM's share.
    #[error(transparent)]
    Share(#[from] crate::share::ShareError),
    /// The builder VM did not come up.
    #[error("the template VM did not boot: {0}")]
    Boot(String),
    /// husk-vmm did not pause or snapshot it.
    #[error(transparent)]
    Control(#[from] control::ControlError),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> BuildError {
    let what = what.into();
    move |source| BuildError::Io { what, source }
}

/// What [`build`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Built {
    /// The template's directory.
    pub dir: PathBuf,
    /// Whether this call made it (false: it was there already).
    pub made: bool,
    /// Bytes of guest RAM in its memory file.
    pub memory_bytes: u64,
    /// How long it took.
    pub ms: u64,
}

/// Removes the builder's sandbox and temporary directory however the build ends.
struct Leftovers {
    sandbox: PathBuf,
    tmp: PathBuf,
}

impl Leftovers {
    fn remove(&self) {
        if let Err(e) = crate::unmount::unmount_and_remove(&self.sandbox) {
            tracing::warn!("removing the template VM's sandbox: {e}");
        }
        let _ = std::fs::remove_dir_all(&self.tmp);
    }
}

impl Drop for Leftovers {
    fn drop(&mut self) {
        self.remove();
    }
}

/// Makes the template of `shape` (a VM of `size`, as the shim with `config` starts it) under
/// `config.template_dir`, unless it is there already.
pub async fn build(
    bindir: &Path,
    config: &HuskConfig,
    size: VmSize,
    shape: &TemplateShape,
) -> Result<Built, BuildError> {
    let started = Instant::now();
    let root = &config.template_dir;
    std::fs::create_dir_all(root).map_err(io(format!("creating {}", root.display())))?;
    // Guest RAM lies there: root's alone.
    std::fs::set_permissions(root, std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .map_err(io(format!("setting the mode of {}", root.display())))?;
    let key = shape.key();
    if let Lookup::Ready(dir) = lookup(root, shape) {
        return Ok(Built {
            dir,
            made: false,
            memory_bytes: 0,
            ms: 0,
        });
    }
    let _lock = BuildLock::take(root, &key)
        .map_err(io(format!("locking template {key}")))?
        .ok_or_else(|| BuildError::Busy(key.clone()))?;
    // Under the lock: whatever is in the way is a broken template or a dead builder's.
    if let Lookup::Unusable(dir, _) = lookup(root, shape) {
        std::fs::remove_dir_all(&dir).map_err(io(format!("removing {}", dir.display())))?;
    }
    let tmp = root.join(format!(".building-{key}"));
    let paths = SandboxPaths::new(&config.state_dir, &format!("template-{key}"));
    let leftovers = Leftovers {
        sandbox: paths.root().to_path_buf(),
        tmp: tmp.clone(),
    };
    // A builder that died left these; under the lock they are nobody's.
    leftovers.remove();
    std::fs::create_dir(&tmp).map_err(io(format!("creating {}", tmp.display())))?;
    let memory_bytes = snapshot_vm(bindir, config, size, shape.nics, &paths, &tmp).await?;
    let meta = TemplateMeta {
        shape: shape.clone(),
        created_unix: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        memory_bytes,
        build_ms: started.elapsed().as_millis() as u64,
    };
    let meta_path = tmp.join(META_FILE);
    let text = serde_json::to_vec_pretty(&meta).unwrap_or_default();
    let file = std::fs::File::create(&meta_path).and_then(|mut f| {
        std::io::Write::write_all(&mut f, &text)?;
        f.sync_all()
    });
    file.map_err(io(format!("writing {}", meta_path.display())))?;
    install(root, &tmp, &key).map_err(io(format!("installing template {key}")))?;
    drop(leftovers);
    Ok(Built {
        dir: root.join(&key),
        made: true,
        memory_bytes,
        ms: meta.build_ms,
    })
}

/// Boots the builder VM (with `nics` NICs) in `paths`, snapshots it into `into` and stops it;
/// returns the bytes of RAM written.
async fn snapshot_vm(
    bindir: &Path,
    config: &HuskConfig,
    size: VmSize,
    nics: u8,
    paths: &SandboxPaths,
    into: &Path,
) -> Result<u64, BuildError> {
    let started = Instant::now();
    paths.check_socket_lengths().map_err(BuildError::Boot)?;
    let root = paths.root();
    std::fs::create_dir_all(root).map_err(io(format!("creating {}", root.display())))?;
    std::fs::set_permissions(root, std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .map_err(io(format!("setting the mode of {}", root.display())))?;
    let sockets = paths.sockets();
    std::fs::create_dir(&sockets).map_err(io(format!("creating {}", sockets.display())))?;
    crate::share::create(paths)?;
    // Held until the builder VM is gone: its NICs' namespace.
    let (_netns, net) = super::nics::create(nics).map_err(io("making the template VM's NICs"))?;
    let a = config.artifacts(bindir);
    let cmdline = format!("{} {TEMPLATE_CMDLINE}", config.extra_cmdline);
    let mut vm = crate::vm::config::vm_config(
        &a,
        size,
        cmdline.trim(),
        paths,
        net,
        Vec::new(),
        config.free_page_reporting,
    );
    vm.snapshot_dir = Some(into.to_path_buf());
    vm.validate()?;
    std::fs::write(paths.vm_config(), vm.to_json())
        .map_err(io(format!("writing {}", paths.vm_config().display())))?;
    let log = crate::vm::listen_agent_log(&paths.vsock_port(ports::LOG_PORT))
        .map_err(io("listening for the template agent's log"))?;
    let process = spawn::spawn(
        &a.vmm,
        &paths.vm_config(),
        true,
        None,
        Lifetime::EndsWithLauncher,
    )
    .map_err(io(format!("starting {}", a.vmm.display())))?;
    let deadline = started + config.boot_timeout();
    let vsock = paths.vsock();
    let ready = tokio::select! {
        r = agent::wait_ready(&vsock, deadline) => r.map(drop).map_err(|n| n.last_error),
        end = process.end() => Err(format!(
            "{}",
            end.unwrap_or(VmmEnd { exit: husk_protocol::VmmExit::Error })
        )),
    };
    log.abort();
    let outcome = match ready {
        Ok(()) => {
            console_settled(&process.console, deadline).await;
            pause_and_snapshot(&paths.control()).await
        }
        Err(why) => {
            // One line: the warning that carries it is matched line by line (a triple fault
            // of the builder VM is the nested test host's known loss, tests/src/guest_loss.rs).
            let said = process
                .stderr
                .lock()
                .map(|t| t.last_words(SAID_LINES))
                .unwrap_or_default();
            Err(BuildError::Boot(format!("{why}; husk-vmm said: {said}")))
        }
    };
    process.terminate(Duration::from_secs(5)).await;
    outcome
}

/// Waits (until `deadline`, at most [`CONSOLE_SETTLE_LIMIT`]) until the guest console has
/// carried the agent's ready line whole. The agent writes it once it serves, so it can answer
/// while the line's tail still waits in the guest's serial buffer; snapshotted then, every VM
/// restored from the template would first send that tail, a port exit per register access (about
/// fifty nested, ~5 ms of each restore). A line that never comes only costs the wait.
async fn console_settled(console: &spawn::SharedTail, deadline: Instant) {
    let limit = deadline.min(Instant::now() + CONSOLE_SETTLE_LIMIT);
    let seen = || {
        console
            .lock()
            .map(|t| t.contains(husk_protocol::AGENT_READY_MARKER))
            .unwrap_or(true)
    };
    while !seen() {
        if Instant::now() >= limit {
            tracing::debug!(
                "the template guest's ready line did not reach the console; snapshotting anyway"
            );
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// How long a template build waits for the guest console's ready line.
const CONSOLE_SETTLE_LIMIT: Duration = Duration::from_secs(5);

/// husk-vmm's last stderr lines quoted when the builder VM did not boot: its setup timeline,
/// its warnings, and how the guest ended.
const SAID_LINES: usize = 4;

async fn pause_and_snapshot(control_socket: &Path) -> Result<u64, BuildError> {
    control::request(control_socket, ControlRequest::Pause).await?;
    let answer = control::request(control_socket, ControlRequest::Snapshot).await?;
    Ok(answer
        .split_whitespace()
        .find_map(|w| w.strip_prefix("memory_bytes="))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0))
}

/// Builds started by [`in_background`] in this process, for [`wait_background`].
static BACKGROUND: std::sync::Mutex<Vec<std::thread::JoinHandle<()>>> =
    std::sync::Mutex::new(Vec::new());

/// How long an exiting shim waits for its background builds: a boot, a snapshot of the
/// guest's RAM, with room for a slow host.
pub const BACKGROUND_LIMIT: Duration = Duration::from_secs(300);

/// Waits, at most `limit`, for the builds [`in_background`] started: a shim whose pod is gone
/// stays until its template is made, since its builder VM dies with it.
pub async fn wait_background(limit: Duration) {
    let running: Vec<_> = BACKGROUND
        .lock()
        .map(|mut v| std::mem::take(&mut *v))
        .unwrap_or_default();
    if running.iter().all(|h| h.is_finished()) {
        return;
    }
    tracing::info!("waiting for a template build to finish before exiting");
    let deadline = Instant::now() + limit;
    while running.iter().any(|h| !h.is_finished()) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Makes the template of `shape` on a thread of its own (its builder VM dies with that
/// thread), logging the outcome; returns at once. [`wait_background`] waits for it.
pub fn in_background(bindir: PathBuf, config: HuskConfig, size: VmSize, shape: TemplateShape) {
    let spawned = std::thread::Builder::new()
        .name("husk-template".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::warn!("making a template: starting its runtime: {e}");
                    return;
                }
            };
            let key = shape.key();
            match rt.block_on(build(&bindir, &config, size, &shape)) {
                Ok(b) if b.made => tracing::info!(
                    template = %b.dir.display(),
                    ms = b.ms,
                    memory_bytes = b.memory_bytes,
                    "template made"
                ),
                Ok(_) => {}
                Err(BuildError::Busy(_)) => {
                    tracing::debug!(template = key.as_str(), "another shim makes the template")
                }
                Err(e) => tracing::warn!(template = key.as_str(), "making the template: {e}"),
            }
        });
    match spawned {
        Ok(handle) => {
            if let Ok(mut v) = BACKGROUND.lock() {
                v.push(handle);
            }
        }
        Err(e) => tracing::warn!("making a template: starting its thread: {e}"),
    }
}

//! Booting the sandbox VM for the first container and stopping it after the last: the pod
//! network, the pod cgroup and the state directory come and go with it, and a failed boot
//! leaves none of them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use husk_protocol::agent::api;

use super::state::VmSlot;
use super::Sandbox;
use crate::config::{self, HuskConfig};
use crate::error::{Result, ShimError};
use crate::network::{self, PodNetwork};
use crate::paths::{self, SandboxPaths};
use crate::unmount;
use crate::vm::{self, BootRequest, Vm};

impl Sandbox {
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
            match &inner.slot {
                VmSlot::Running { vm, paths } => return Ok((vm.clone(), paths.clone())),
                VmSlot::Empty => {}
                other => return Err(other.not_running()),
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
            inner.slot.advance(VmSlot::Booting {
                paths: paths.clone(),
            })?;
            inner.config = Some(config.clone());
        }
        let booted = async {
            // Where a pod's start goes, phase by phase (`make bench BENCH=cri` reads it).
            let started = std::time::Instant::now();
            let pod_net = network::setup(netns.as_deref(), &paths).await?;
            let network_ms = started.elapsed().as_millis() as u64;
            let req = BootRequest {
                paths: paths.clone(),
                config: config.clone(),
                size,
                memory_annotated: annotations.contains_key(vm::size::ANNOTATION_MEMORY),
                cgroup,
                net: pod_net.net.clone(),
            };
            let vm = self.booter.boot(&req).await?;
            let vm_ms = started.elapsed().as_millis() as u64 - network_ms;
            let vm = setup_sandbox(vm, hostname, pod_net).await?;
            tracing::info!(
                pid = vm.pid,
                restored = vm.from_template,
                network_ms,
                vm_ms,
                setup_ms = started.elapsed().as_millis() as u64 - network_ms - vm_ms,
                "the sandbox VM is ready"
            );
            Ok(vm)
        }
        .await;
        match booted {
            Ok(vm) => {
                let vm = Arc::new(vm);
                {
                    let mut inner = self.lock();
                    inner.slot.advance(VmSlot::Running {
                        vm: vm.clone(),
                        paths: paths.clone(),
                    })?;
                    inner.last_pid = vm.pid;
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
                self.lock().slot.advance(VmSlot::Empty)?;
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
            // Only a VM that runs or ended on its own is stopped here: a boot holds the boot
            // lock until it ran or failed, and Empty has nothing to stop.
            let (vm, paths) = match &inner.slot {
                VmSlot::Running { vm, paths } | VmSlot::Gone { vm, paths, .. } => {
                    (vm.clone(), paths.clone())
                }
                _ => return,
            };
            if inner
                .slot
                .advance(VmSlot::Stopping {
                    paths: paths.clone(),
                })
                .is_err()
            {
                return;
            }
            let limit = inner
                .config
                .as_ref()
                .map_or(Duration::from_secs(10), HuskConfig::shutdown_timeout);
            (vm, paths, limit)
        };
        let end = vm.stop(limit).await;
        tracing::info!(
            pid = vm.pid,
            "the sandbox VM stopped: {:?}",
            end.map(|e| e.exit)
        );
        for c in self.containers() {
            for p in c.processes() {
                p.io.close();
            }
        }
        if let Err(e) = network::teardown(paths.root()).await {
            tracing::error!("removing the pod network: {e}");
        }
        vm::pod_cgroup::remove(paths.root()).await;
        if let Err(e) = unmount::unmount_and_remove(paths.root()) {
            tracing::error!("removing the sandbox state {}: {e}", paths.root().display());
        }
        let _ = self.lock().slot.advance(VmSlot::Empty);
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

/// The node's hostname: a pod's when its spec or config names none, as a runc container's new
/// UTS namespace starts with the host's.
pub fn node_hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_default()
}

/// Pod-wide guest setup: the hostname, the shared directory and the pod's NICs and routes.
/// Without a hostname in the spec the guest takes the host's, as a runc container's new UTS
/// namespace starts with it.
async fn setup_sandbox(vm: Vm, hostname: Option<String>, net: PodNetwork) -> Result<Vm> {
    let mut req = api::SetupSandboxRequest::new();
    req.hostname = hostname.unwrap_or_else(node_hostname);
    let mut share = api::GuestMount::new();
    share.source = paths::FS_TAG.to_string();
    share.fstype = "virtiofs".to_string();
    share.target = paths::GUEST_SHARED.to_string();
    req.mounts.push(share);
    req.interfaces = net.interfaces;
    if vm.from_template {
        // The NICs have the template's MACs, in the order the pod's were given to husk-vmm.
        for (n, i) in req.interfaces.iter_mut().enumerate() {
            i.current_mac = husk_protocol::template::nic_mac(u8::try_from(n).unwrap_or(u8::MAX));
        }
    }
    req.routes = net.routes;
    if let Err(e) = vm.agent.setup_sandbox(&req).await {
        // A VM that died under the call is the cause, not the connection's early EOF.
        let err = crate::failure::agent_failure(&vm, "setting up the sandbox", e).await;
        vm.kill().await;
        return Err(err);
    }
    Ok(vm)
}

//! The sandbox API's operations on the shim's [`Sandbox`]: CreateSandbox takes the pod's
//! config, StartSandbox boots the VM (the pod's network, cgroup and state as for a first
//! container), StopSandbox stops it, ShutdownSandbox ends the shim.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use containerd_shim_protos::protobuf::well_known_types::any::Any;

use super::etc;
use crate::error::{Result, ShimError};
use crate::pod_config::{PodConfig, PodConfigError};
use crate::sandbox::pod::{Pod, PodPhase};
use crate::sandbox::Sandbox;

impl From<PodConfigError> for ShimError {
    fn from(e: PodConfigError) -> ShimError {
        ShimError::InvalidArgument(e.to_string())
    }
}

/// Checks that a request names this shim's sandbox.
pub fn check_sandbox_id(sb: &Sandbox, id: &str) -> Result<()> {
    if id != sb.id {
        return Err(ShimError::NotFound(format!(
            "sandbox {id} is not served by this shim (it serves {})",
            sb.id
        )));
    }
    Ok(())
}

/// CreateSandbox: checks and keeps the pod's config; the VM boots at StartSandbox.
pub fn create(sb: &Sandbox, bundle: &str, options: Option<&Any>, netns: &str) -> Result<()> {
    let config = match options {
        Some(any) => PodConfig::decode(&any.type_url, &any.value)?,
        None => PodConfig::default(),
    };
    config.check()?;
    let mut pod = sb.pod();
    if pod.is_some() {
        return Err(ShimError::AlreadyExists(format!(
            "sandbox {} was already created",
            sb.id
        )));
    }
    if sb.vm_state() != crate::sandbox::SandboxState::Empty || !sb.containers().is_empty() {
        return Err(ShimError::FailedPrecondition(format!(
            "sandbox {} already runs containers through the task API",
            sb.id
        )));
    }
    tracing::info!(
        pod = config.name.as_str(),
        pod_namespace = config.namespace.as_str(),
        "sandbox created"
    );
    *pod = Some(Pod {
        config,
        netns: (!netns.is_empty()).then(|| PathBuf::from(netns)),
        bundle: PathBuf::from(bundle),
        created_at: SystemTime::now(),
        phase: PodPhase::Created,
    });
    Ok(())
}

/// StartSandbox: boots the VM; returns husk-vmm's pid and the pod's creation time.
pub async fn start(sb: &Arc<Sandbox>) -> Result<(u32, SystemTime)> {
    let pod = sb
        .pod()
        .clone()
        .ok_or_else(|| ShimError::FailedPrecondition("the sandbox was not created".into()))?;
    if pod.phase != PodPhase::Created {
        return Err(ShimError::FailedPrecondition(format!(
            "the sandbox cannot start: it is {:?}",
            pod.phase
        )));
    }
    let hostname = (!pod.config.hostname.is_empty()).then(|| pod.config.hostname.clone());
    let (vm, paths) = sb
        .ensure_vm(
            None,
            &pod.config.sizing_annotations(),
            hostname.clone(),
            pod.netns.clone(),
            pod.config.cgroups_path(&sb.id),
        )
        .await?;
    let hostname = hostname.unwrap_or_else(crate::sandbox::node_hostname);
    let ready = etc::write(paths.root(), &pod.config, &hostname)
        .map_err(|e| ShimError::Host {
            context: "writing the pod's hosts, hostname and resolv.conf".into(),
            source: e,
        })
        .and_then(|()| {
            paths.record_in_bundle(&pod.bundle);
            sb.advance_pod(PodPhase::Ready { pid: vm.pid })
        });
    if let Err(e) = ready {
        sb.teardown_vm().await;
        return Err(e);
    }
    tracing::info!(pid = vm.pid, "sandbox started");
    Ok((vm.pid, pod.created_at))
}

/// Whether containers may be created: the pod (if this is one) is ready.
pub fn check_ready(sb: &Sandbox) -> Result<()> {
    match sb.pod().as_ref().map(|p| p.phase) {
        None | Some(PodPhase::Ready { .. }) => Ok(()),
        Some(other) => Err(ShimError::FailedPrecondition(format!(
            "sandbox {} is not ready ({other:?}): start it before creating containers",
            sb.id
        ))),
    }
}

/// StopSandbox: stops the VM (idempotent). Its containers were stopped by CRI first; any left
/// end with the VM.
pub async fn stop(sb: &Sandbox) -> Result<()> {
    if sb.pod().is_none() {
        return Err(ShimError::NotFound(format!(
            "sandbox {} was not created",
            sb.id
        )));
    }
    sb.teardown_vm().await;
    sb.end_pod(0);
    Ok(())
}

/// ShutdownSandbox: stops whatever still runs and ends the shim after the reply.
pub async fn shutdown(sb: &Sandbox) {
    sb.teardown_vm().await;
    sb.end_pod(0);
    tracing::info!("sandbox shut down");
    sb.exit_shim_after_reply();
}

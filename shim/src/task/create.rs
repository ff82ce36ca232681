//! Create: boots the VM for the sandbox's first container, mounts the container's filesystems
//! into the share, creates the container in the guest and attaches its stdio. On failure
//! nothing is left (and the VM is stopped again if no other container uses it).

use std::path::PathBuf;
use std::sync::Arc;

use containerd_shim_protos::api::{CreateTaskRequest, CreateTaskResponse};
use containerd_shim_protos::events::task::{TaskCreate, TaskIO};
use containerd_shim_protos::protobuf::MessageField;
use husk_protocol::agent::api;

use super::check_id;
use crate::container::Container;
use crate::error::{Result, ShimError};
use crate::events::TaskEvent;
use crate::failure::{agent_failure, stdio_failure};
use crate::io::{ProcessIo, StdioSpec};
use crate::paths::SandboxPaths;
use crate::process::Process;
use crate::sandbox::Sandbox;
use crate::spec::Spec;
use crate::vm::Vm;
use crate::{options, rootfs, share};

/// Create: boots the VM for the sandbox's first container, mounts the rootfs into the
/// share, creates the container in the guest and attaches its stdio. On failure nothing
/// is left (and the VM is stopped again if no other container uses it).
pub async fn create(sb: &Arc<Sandbox>, req: CreateTaskRequest) -> Result<CreateTaskResponse> {
    check_id("container id", &req.id)?;
    if sb.has_container(&req.id) {
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
    crate::sandbox_api::lifecycle::check_ready(sb)?;
    let bundle = PathBuf::from(&req.bundle);
    let mut spec = Spec::load(&bundle)?;
    spec.check_host_namespaces()?;
    let stdio = StdioSpec::checked(&req.stdin, &req.stdout, &req.stderr, req.terminal)?;
    let config_path = options::config_path(req.options.as_ref())?;
    let (vm, paths) = sb
        .ensure_vm(
            config_path.as_deref(),
            &spec.annotations(),
            spec.hostname(),
            spec.network_namespace(),
            spec.cgroups_path(),
        )
        .await?;
    if sb.is_api_pod() {
        // CRI leaves the pod's hosts, hostname and resolv.conf to the sandbox (sandbox_api::etc).
        let etc = crate::sandbox_api::etc::dir(paths.root());
        for (dest, file) in crate::sandbox_api::etc::FILES {
            spec.bind_unless_mounted(dest, &etc.join(file));
        }
    }
    let result = create_in_vm(sb, &req, &mut spec, &bundle, &paths, &vm, stdio).await;
    match result {
        Ok(resp) => Ok(resp),
        Err(e) => {
            if sb.containers().is_empty() && !sb.is_api_pod() {
                sb.teardown_vm().await;
            }
            Err(e)
        }
    }
}

async fn create_in_vm(
    sb: &Arc<Sandbox>,
    req: &CreateTaskRequest,
    spec: &mut Spec,
    bundle: &std::path::Path,
    paths: &SandboxPaths,
    vm: &Arc<Vm>,
    stdio: StdioSpec,
) -> Result<CreateTaskResponse> {
    let cid = req.id.as_str();
    let started = std::time::Instant::now();
    paths.record_in_bundle(bundle);
    prepare_filesystems(req, spec, bundle, paths)?;
    let mounted = started.elapsed();
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
    let in_guest = started.elapsed();
    let io = match ProcessIo::attach(&vm.agent, cid, "", &stdio, &sb.namespace).await {
        Ok(io) => io,
        Err(e) => {
            let mut r = api::RemoveContainerRequest::new();
            r.container_id = cid.to_string();
            r.force = true;
            let _ = vm.agent.remove_container(&r).await;
            undo_mounts();
            return Err(stdio_failure(vm, e).await);
        }
    };
    let init = Process::new(cid, "", stdio.clone(), io);
    sb.insert_container(Arc::new(Container::new(cid, bundle.to_path_buf(), init)))?;
    let ms = |d: std::time::Duration| d.as_millis() as u64;
    tracing::info!(
        container = cid,
        ms = ms(started.elapsed()),
        mounts_ms = ms(mounted),
        guest_ms = ms(in_guest - mounted),
        "created"
    );

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
    sb.events.send(TaskEvent::Create(e));

    let mut resp = CreateTaskResponse::new();
    resp.pid = vm.pid;
    Ok(resp)
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

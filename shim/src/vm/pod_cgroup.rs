//! The boot step that places the VM in the pod's cgroup ([`crate::cgroup`]): make it, record
//! it in the sandbox's state, and size the VM to fit the pod's memory limit; and its undoing
//! when the sandbox goes.

use std::path::Path;

use husk_protocol::vm_config::MIN_MEMORY_MIB;

use super::{BootError, BootRequest, VmSize};
use crate::cgroup::{self, Hierarchy, PodCgroup};

/// Makes the pod's cgroup `req.cgroup` names (nothing without one) and fits the VM's memory
/// to its limit. On failure nothing is left made.
pub fn place(req: &BootRequest) -> Result<(Option<PodCgroup>, VmSize), BootError> {
    let Some(rel) = &req.cgroup else {
        return Ok((None, req.size));
    };
    let h = Hierarchy::detect().map_err(cgroup::CgroupError::from)?;
    let cg = PodCgroup::create(&h, rel)?;
    let undo = |e: BootError| {
        for left in cg.remove(std::time::Duration::from_secs(1)) {
            tracing::warn!("removing the pod's cgroup after a failed boot: {left}");
        }
        e
    };
    cg.record(&req.paths.root().join(cgroup::RECORD))
        .map_err(|e| undo(e.into()))?;
    let limit = cg.memory_limit();
    let explicit = req
        .memory_annotated
        .then_some(super::size::ANNOTATION_MEMORY);
    let memory_mib = cgroup::fit_memory(req.size.memory_mib, limit, explicit, MIN_MEMORY_MIB)
        .map_err(|e| undo(BootError::PodMemory(e)))?;
    if memory_mib != req.size.memory_mib {
        tracing::info!(
            from_mib = req.size.memory_mib,
            to_mib = memory_mib,
            pod_limit_mib = limit.unwrap_or(0) >> 20,
            "the VM's memory is fitted to the pod's memory limit"
        );
    }
    tracing::info!(
        cgroup = %rel.display(),
        hierarchy = h.describe(),
        "husk-vmm goes into the pod's cgroup"
    );
    Ok((
        Some(cg),
        VmSize {
            memory_mib,
            ..req.size
        },
    ))
}

/// Removes the pod's cgroup recorded in the sandbox's state root (the VM is gone by now), off
/// the runtime's threads: an exiting husk-vmm may hold it for a few milliseconds more.
pub async fn remove(root: &Path) {
    let root = root.to_path_buf();
    let left = tokio::task::spawn_blocking(move || cgroup::remove_recorded(&root))
        .await
        .unwrap_or_else(|e| vec![e.to_string()]);
    for l in left {
        tracing::error!("removing the pod's cgroup: {l}");
    }
}

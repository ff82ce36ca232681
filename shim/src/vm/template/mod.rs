//! VM templates (issue 17): a pod whose VM has the shape of a template restores the template's
//! snapshot instead of booting its guest, then becomes its own (the agent's `Restored`: fresh
//! entropy and a CRNG reseed, the wall clock, a boot id made after both, its log stream).
//!
//! - [`build`]: makes a template: a VM of the shape, booted with `husk.template` on its
//!   command line to an agent that answered its health check and nothing else, paused,
//!   snapshotted into a temporary directory and renamed into place
//!   (`husk_protocol::template`). The first pod of a shape boots and starts one in the
//!   background; `containerd-shim-husk-v2 template build` makes one ahead of time.
//! - [`restore`]: the pod's side: which template fits ([`plan`]), and making a restored guest
//!   the pod's own.
//!
//! How pods map onto templates: the shape is everything that decides what the guest is
//! (husk-vmm, kernel and image files, vCPUs, memory after fitting the pod's limit, the extra
//! command line, the devices), so each distinct pod size gets its own template on first use.
//! The number of NICs is part of the shape: a template's NICs have the template's MACs
//! ([`nics`]) until SetupSandbox gives each the pod's, its taps are the pod's own after the
//! restore (husk-vmm opens the ones the pod's `vm.json` names). A template that is
//! missing, stale, corrupt or refused by husk-vmm means a cold boot with a warning, never a
//! failed pod; one that cannot be used is removed so the next pod makes a fresh one.

pub mod build;
pub mod cli;
mod lock;
pub mod nics;
pub mod restore;

use std::path::Path;

use crate::config::Artifacts;
use husk_protocol::template::{FileId, Lookup, TemplateShape};

use super::size::VmSize;

/// The shape of a VM the shim would start with `artifacts` at `size`.
pub fn shape(
    artifacts: &Artifacts,
    size: VmSize,
    extra_cmdline: &str,
    nics: usize,
    balloon: bool,
) -> std::io::Result<TemplateShape> {
    Ok(TemplateShape {
        husk_version: format!("husk {}", husk_protocol::VERSION),
        vmm: FileId::of(&artifacts.vmm)?,
        kernel: FileId::of(&artifacts.kernel)?,
        initramfs: FileId::of(&artifacts.initramfs)?,
        vcpus: size.vcpus,
        memory_mib: size.memory_mib,
        extra_cmdline: extra_cmdline.to_string(),
        nics: u8::try_from(nics).unwrap_or(u8::MAX),
        balloon,
    })
}

/// The template to restore for `shape` under `root`, if one is ready; an unusable one is
/// removed (with a warning) so that the next build replaces it.
pub fn plan(root: &Path, shape: &TemplateShape) -> Option<std::path::PathBuf> {
    match husk_protocol::template::lookup(root, shape) {
        Lookup::Ready(dir) => Some(dir),
        Lookup::Missing => None,
        Lookup::Unusable(dir, why) => {
            tracing::warn!(
                template = %dir.display(),
                "template cannot be used ({why}); removing it, the pod boots"
            );
            if let Err(e) = std::fs::remove_dir_all(&dir) {
                tracing::warn!(template = %dir.display(), "removing the template: {e}");
            }
            None
        }
    }
}

//! husk's virtual machine monitor, as a library; the `husk-vmm` binary is a thin edge over it.
//!
//! One process runs one micro-VM: KVM with the in-kernel irqchip and PIT, guest RAM in a memfd,
//! direct boot of an ELF vmlinux or bzImage, one thread per vCPU, an 8250 serial console and an
//! i8042 whose reset line ends the VM, virtio-mmio devices (hybrid vsock) each with a worker
//! thread of its own. The main thread runs one epoll loop for everything else.
//!
//! - [`arch`]: x86_64 layout, boot structures (zero page, e820, MP table, GDT), vCPU state.
//! - [`memory`], [`vm`]: guest RAM and the KVM VM.
//! - [`bus`], [`devices`]: port/MMIO dispatch and the devices behind it; [`device_manager`]
//!   places virtio-mmio devices (ioeventfds, irqfd, bus window, command line).
//! - [`logger`]: rate-limited warnings for anything the guest can trigger.
//! - [`timeline`]: where setup time went, printed once when the vCPUs start.
//! - [`vcpu`]: vCPU threads, their gate (run, park, stop) and the stop signal.
//! - [`vmm`]: building and running a VM from a [`VmConfig`]; [`control`]: the control socket.

pub mod affinity;
pub mod arch;
pub mod bus;
pub mod caps;
pub mod control;
pub mod device_manager;
pub mod devices;
#[doc(hidden)]
pub mod fuzzing;
pub mod jail;
pub mod logger;
pub mod memory;
pub mod seccomp;
pub mod snapshot;
pub mod timeline;
pub mod vcpu;
pub mod vm;
pub mod vm_state;
pub mod vmm;

use std::path::Path;

pub use husk_protocol::{VmConfig, VmConfigError, VmmExit};

/// Errors of loading a VM configuration file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    /// The file could not be read.
    #[error("cannot read VM config {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    /// The file's contents are not a valid configuration.
    #[error("VM config {path}: {source}")]
    Invalid { path: String, source: VmConfigError },
}

/// Reads and validates a JSON VM configuration file.
pub fn load_config(path: &Path) -> Result<VmConfig, ConfigFileError> {
    let display = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ConfigFileError::Read {
        path: display.clone(),
        source,
    })?;
    VmConfig::from_json(&text).map_err(|source| ConfigFileError::Invalid {
        path: display,
        source,
    })
}

//! The one crate shared by husk's processes (shim, VMM, agent).
//!
//! It holds the types that cross a process boundary: the VM configuration the shim hands to
//! `husk-vmm`, and (in a later step) the agent API spoken over vsock.

pub mod vm_config;
pub mod vmm;

pub use vm_config::{VmConfig, VmConfigError};
pub use vmm::{ControlRequest, VmmExit};

/// husk's version, shared so every process reports the same string.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

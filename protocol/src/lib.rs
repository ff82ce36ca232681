//! The one crate shared by husk's processes (shim, VMM, agent).
//!
//! It holds what crosses a process boundary:
//! - [`vm_config`]: the VM configuration the shim hands to `husk-vmm`;
//! - [`vmm`]: `husk-vmm`'s exit codes and control-socket requests;
//! - [`ports`], [`stdio`], [`ids`]: vsock ports, the stdio stream hello, container/exec ids;
//! - [`forward`]: CRI port forwarding's request to the agent;
//! - `template` (feature `node`): VM templates on a node, shared by the shim and `husk`;
//! - `agent` (feature `agent-api`): the agent API, protobuf + ttrpc, generated from
//!   `protos/husk/agent/v1/agent.proto`;

#[cfg(feature = "agent-api")]
pub mod agent;
#[cfg(feature = "node")]
pub mod cgroup_layout;
#[cfg(feature = "client")]
pub mod client;
#[cfg(feature = "node")]
pub mod config;
pub mod forward;
pub mod hybrid;
pub mod ids;
pub mod ports;
pub mod stdio;
#[cfg(feature = "node")]
pub mod template;
pub mod vm_config;
pub mod vmm;

pub use vm_config::{FsCache, FsShare, NetConfig, VmConfig, VmConfigError, VsockConfig};
pub use vmm::{ControlRequest, VmmExit};

/// The start of the line the agent writes to the guest console once it serves (then
/// `init_ms=.. ready_ms=.. pivot_root=..`): boot benchmarks read it, and a template build waits
/// for it whole before the snapshot, so that no console output is in flight in a template.
pub const AGENT_READY_MARKER: &str = "HUSK-AGENT ready";

/// husk's version, shared so every process reports the same string.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

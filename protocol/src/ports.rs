//! The vsock ports husk's processes use. The guest listens on 1024, 1025 and 1027; the agent connects
//! to the host on 1026 (husk-vmm forwards it to `<vsock socket>_<port>` only because the
//! shim lists it in the VM config's allowed guest ports).

/// The agent's ttrpc server (guest side).
pub const AGENT_PORT: u32 = 1024;
/// Process stdio streams (guest side); see the "Stdio streams" section of agent.proto.
pub const STDIO_PORT: u32 = 1025;
/// The agent's log stream to the host (guest-initiated), one log line per line.
pub const LOG_PORT: u32 = 1026;
/// CRI port forwarding (guest side): one connection per forwarded TCP stream; see
/// [`crate::forward`].
pub const FORWARD_PORT: u32 = 1027;

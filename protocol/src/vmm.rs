//! The contract between the shim and a `husk-vmm` process: its exit codes, the milestone
//! lines of its stderr, and the line protocol of its control socket.

/// The stderr line husk-vmm prints once its vCPUs run (followed by its setup timeline).
pub const VCPUS_RUNNING: &str = "husk-vmm: vCPUs running";

/// The stderr line husk-vmm prints, once per device, when the guest's driver first sets
/// DRIVER_OK, followed by the device's name (`virtio-vsock`, `virtio-fs`, `virtio-net`): how
/// far the guest's boot got.
pub const DRIVER_READY: &str = "husk-vmm: guest driver ready:";

/// The stderr line husk-vmm prints when it restored a snapshot instead of loading a kernel,
/// before its vCPUs run (followed by the snapshot's directory). A restored guest's drivers set
/// up its devices before the snapshot, so no [`DRIVER_READY`] line follows: a restored guest
/// that never answers did not die in early kernel setup.
pub const RESTORED: &str = "husk-vmm: restored a snapshot:";

/// How the shim describes a boot that stopped before the guest kernel set up any of its virtio
/// devices (no [`DRIVER_READY`] line): a guest that died or hung in early kernel setup. The
/// end-to-end harness recognises the nested test host's known early-boot loss by this text
/// (the ten-pods test's retry, scripts/e2e-failure.py): keep them the same.
pub const EARLY_BOOT: &str = "the guest died or hung in early kernel setup";

/// How a `husk-vmm` process ended, as its exit code says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmmExit {
    /// The guest shut itself down (reboot, power-off, triple fault). Exit code 0.
    GuestShutdown,
    /// The VMM failed (bad configuration, KVM error, a device or vCPU fault). Exit code 1.
    Error,
    /// Bad command-line usage. Exit code 2.
    Usage,
    /// Stopped cleanly on signal N (SIGTERM, SIGINT). Exit code 128 + N.
    Signal(i32),
}

impl VmmExit {
    /// The process exit code.
    pub fn code(self) -> i32 {
        match self {
            VmmExit::GuestShutdown => 0,
            VmmExit::Error => 1,
            VmmExit::Usage => 2,
            VmmExit::Signal(n) => 128 + n,
        }
    }

    /// Reads an exit code back (a process killed outright, with no code, is `Signal`).
    pub fn from_code(code: i32) -> Self {
        match code {
            0 => VmmExit::GuestShutdown,
            2 => VmmExit::Usage,
            c if c > 128 => VmmExit::Signal(c - 128),
            _ => VmmExit::Error,
        }
    }
}

/// A request on the control socket: one line, one word.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlRequest {
    /// Is the VMM alive? Answers with the VM state.
    Ping,
    /// Stop running the vCPUs (the guest's clock stops too).
    Pause,
    /// Run the vCPUs again.
    Resume,
    /// Stop the VM now and exit (as on SIGTERM).
    Shutdown,
    /// Each virtio device's status, InterruptStatus and ring indices, on one line: who holds
    /// the ball when a guest stalls on a device.
    Queues,
    /// Write the paused VM into the configured `snapshot_dir` (see [`crate::VmConfig`]). The
    /// devices stop; the VM can only be shut down afterwards.
    Snapshot,
}

impl ControlRequest {
    /// Parses one request line (without its newline).
    pub fn parse(line: &str) -> Result<Self, String> {
        match line.trim() {
            "ping" => Ok(ControlRequest::Ping),
            "pause" => Ok(ControlRequest::Pause),
            "resume" => Ok(ControlRequest::Resume),
            "shutdown" => Ok(ControlRequest::Shutdown),
            "queues" => Ok(ControlRequest::Queues),
            "snapshot" => Ok(ControlRequest::Snapshot),
            other => Err(format!(
                "unknown control request {other:?} (ping, pause, resume, shutdown, queues, snapshot)"
            )),
        }
    }

    /// The request's line, newline included.
    pub fn line(self) -> &'static str {
        match self {
            ControlRequest::Ping => "ping\n",
            ControlRequest::Pause => "pause\n",
            ControlRequest::Resume => "resume\n",
            ControlRequest::Shutdown => "shutdown\n",
            ControlRequest::Queues => "queues\n",
            ControlRequest::Snapshot => "snapshot\n",
        }
    }
}

/// Longest request line the VMM reads before giving up on a connection.
pub const MAX_CONTROL_LINE: usize = 64;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_round_trip() {
        for e in [
            VmmExit::GuestShutdown,
            VmmExit::Error,
            VmmExit::Usage,
            VmmExit::Signal(15),
        ] {
            assert_eq!(VmmExit::from_code(e.code()), e);
        }
        assert_eq!(VmmExit::Signal(15).code(), 143);
    }

    #[test]
    fn requests_round_trip_and_unknown_ones_are_named() {
        for r in [
            ControlRequest::Ping,
            ControlRequest::Pause,
            ControlRequest::Resume,
            ControlRequest::Shutdown,
            ControlRequest::Queues,
            ControlRequest::Snapshot,
        ] {
            assert_eq!(ControlRequest::parse(r.line()), Ok(r));
        }
        assert!(ControlRequest::parse("reboot")
            .unwrap_err()
            .contains("\"reboot\""));
    }
}

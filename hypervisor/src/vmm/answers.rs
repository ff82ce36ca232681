//! The main loop's answers to control requests: the VM state machine's pause and resume,
//! the `queues` diagnosis, and `snapshot`.

use std::time::{Duration, Instant};

use husk_protocol::ControlRequest;

use super::Machine;
use crate::device_manager::VirtioMmioDevices;
use crate::vcpu::Vcpus;
use crate::vm::Vm;
use crate::vm_state::VmState;

impl Machine {
    /// The control socket's `snapshot`: the paused VM into the configured directory.
    pub(super) fn answer_snapshot(&self, state: VmState, vcpus: &Vcpus) -> String {
        let Some(files) = &self.snapshot_files else {
            return "error snapshot needs a snapshot_dir in the VM configuration".into();
        };
        if state != VmState::Paused {
            return format!("error the VM must be paused to be snapshotted (it is {state})");
        }
        let started = Instant::now();
        let serial = self
            .serial
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .snapshot();
        let saved = match vcpus.save_states(PAUSE_TIMEOUT) {
            Ok(saved) => saved,
            Err(e) => return format!("error {e}"),
        };
        let parts = crate::snapshot::Parts {
            vm: &self.vm,
            vcpus: saved,
            virtio: &self.virtio,
            serial,
            host: &self.host,
            memory_mib: self.config.memory_mib,
        };
        match crate::snapshot::take(parts, files) {
            Ok(t) => format!(
                "ok snapshot memory_bytes={} state_bytes={} ms={}",
                t.memory_bytes,
                t.state_bytes,
                started.elapsed().as_millis()
            ),
            Err(e) => format!("error {e}"),
        }
    }
}

/// How long a pause waits for every vCPU to park. Natively that takes microseconds; a host
/// under CPU pressure (or the nested test host at emulation speed) can keep a vCPU thread off
/// the CPU for seconds, and a pause that gives up early is an error to its client for nothing.
/// Below the control socket's answer bound ([`crate::control::ANSWER_TIMEOUT`]).
pub(super) const PAUSE_TIMEOUT: Duration = Duration::from_secs(10);

pub(super) fn answer_control(
    request: ControlRequest,
    state: &mut VmState,
    vcpus: &Vcpus,
    vm: &Vm,
    virtio: &VirtioMmioDevices,
) -> (String, bool) {
    let target = match request {
        ControlRequest::Ping => return (format!("ok {state}"), false),
        ControlRequest::Queues => return (format!("ok {}", describe_devices(vm, virtio)), false),
        ControlRequest::Shutdown => return ("ok stopping".into(), true),
        ControlRequest::Pause => VmState::Paused,
        ControlRequest::Resume => VmState::Running,
        // Served by `Machine::answer_snapshot`, which needs the whole machine.
        ControlRequest::Snapshot => return ("error snapshot is not served here".into(), false),
    };
    let next = match state.transition(target) {
        Ok(next) => next,
        Err(e) => return (format!("error {e}"), false),
    };
    if target == VmState::Paused {
        if let Err(e) = vcpus.pause(PAUSE_TIMEOUT) {
            vcpus.resume();
            return (format!("error {e}"), false);
        }
    } else {
        vcpus.resume();
    }
    *state = next;
    (format!("ok {state}"), false)
}

/// The `queues` answer: every device's transport, then the IOAPIC pins their lines go to.
fn describe_devices(vm: &Vm, virtio: &VirtioMmioDevices) -> String {
    let irqs: Vec<u32> = virtio.slots().iter().map(|s| s.irq).collect();
    let pins = match vm.ioapic_pins(&irqs) {
        Ok(pins) => pins
            .iter()
            .map(|p| format!("[{p}]"))
            .collect::<Vec<_>>()
            .join(" "),
        Err(e) => format!("[{e}]"),
    };
    format!("{} {pins}", virtio.describe())
}

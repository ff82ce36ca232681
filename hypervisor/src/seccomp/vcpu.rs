//! A vCPU thread: KVM_RUN, and the devices it dispatches exits to. The serial port writes the
//! console log and raises its interrupt line; a virtio-mmio register write may start or stop a
//! device's run (a message to the device's worker, which exists already); the i8042's reset
//! and a fault write the stop eventfd.

use kvm_bindings::{kvm_irq_level, kvm_regs, kvm_sregs, KVMIO};
use vmm_sys_util::{ioctl_io_nr, ioctl_ior_nr, ioctl_iow_nr};

use super::rules::{Always, Arg, RuleError, RuleSet};

ioctl_io_nr!(KVM_RUN, KVMIO, 0x80);
ioctl_iow_nr!(KVM_IRQ_LINE, KVMIO, 0x61, kvm_irq_level);
ioctl_ior_nr!(KVM_GET_REGS, KVMIO, 0x81, kvm_regs);
ioctl_ior_nr!(KVM_GET_SREGS, KVMIO, 0x83, kvm_sregs);

const ALWAYS: Always = &[(
    libc::SYS_read,
    "draining an eventfd on a device's status change",
)];

/// The ioctl requests a vCPU thread makes.
pub fn ioctls() -> [u64; 5] {
    [
        // Running the guest.
        KVM_RUN(),
        // The serial port's edge-triggered interrupt, raised from the vCPU that wrote it.
        KVM_IRQ_LINE(),
        // Where the vCPU was, for the message of a triple fault.
        KVM_GET_REGS(),
        KVM_GET_SREGS(),
        // virtio-net: the offloads the driver accepted, set when it resets the device.
        libc::TUNSETOFFLOAD,
    ]
}

/// Adds a vCPU thread's part.
pub fn add(set: &mut RuleSet) -> Result<(), RuleError> {
    set.always(ALWAYS);
    set.when_one_of(libc::SYS_ioctl, 1, &ioctls())?;
    // Activation hands the worker its own copies of the queue eventfds (EventFd::try_clone).
    set.when(libc::SYS_fcntl, &[Arg::Eq(1, libc::F_DUPFD_CLOEXEC as u64)])
}

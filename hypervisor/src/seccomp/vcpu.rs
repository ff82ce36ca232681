//! A vCPU thread: KVM_RUN, and the devices it dispatches exits to. The serial port writes the
//! console log and raises its interrupt line; a virtio-mmio register write may start or stop a
//! device's run (a message to the device's worker, which exists already); the i8042's reset
//! and a fault write the stop eventfd.

use kvm_bindings::{
    kvm_cpuid2, kvm_debugregs, kvm_irq_level, kvm_lapic_state, kvm_mp_state, kvm_msrs, kvm_regs,
    kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave, KVMIO,
};
use vmm_sys_util::{ioctl_io_nr, ioctl_ior_nr, ioctl_iow_nr, ioctl_iowr_nr};

use super::rules::{Always, Arg, RuleError, RuleSet};

ioctl_io_nr!(KVM_RUN, KVMIO, 0x80);
ioctl_iow_nr!(KVM_IRQ_LINE, KVMIO, 0x61, kvm_irq_level);
ioctl_ior_nr!(KVM_GET_REGS, KVMIO, 0x81, kvm_regs);
ioctl_ior_nr!(KVM_GET_SREGS, KVMIO, 0x83, kvm_sregs);
ioctl_iowr_nr!(KVM_GET_MSRS, KVMIO, 0x88, kvm_msrs);
ioctl_ior_nr!(KVM_GET_LAPIC, KVMIO, 0x8e, kvm_lapic_state);
ioctl_iowr_nr!(KVM_GET_CPUID2, KVMIO, 0x91, kvm_cpuid2);
ioctl_ior_nr!(KVM_GET_MP_STATE, KVMIO, 0x98, kvm_mp_state);
ioctl_ior_nr!(KVM_GET_VCPU_EVENTS, KVMIO, 0x9f, kvm_vcpu_events);
ioctl_ior_nr!(KVM_GET_DEBUGREGS, KVMIO, 0xa1, kvm_debugregs);
ioctl_io_nr!(KVM_GET_TSC_KHZ, KVMIO, 0xa3);
ioctl_ior_nr!(KVM_GET_XSAVE, KVMIO, 0xa4, kvm_xsave);
ioctl_ior_nr!(KVM_GET_XCRS, KVMIO, 0xa6, kvm_xcrs);

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

/// The reads a parked vCPU thread makes of its own vCPU when the VM is snapshotted.
pub fn snapshot_ioctls() -> [u64; 9] {
    [
        KVM_GET_MSRS(),
        KVM_GET_LAPIC(),
        KVM_GET_CPUID2(),
        KVM_GET_MP_STATE(),
        KVM_GET_VCPU_EVENTS(),
        KVM_GET_DEBUGREGS(),
        KVM_GET_TSC_KHZ(),
        KVM_GET_XSAVE(),
        KVM_GET_XCRS(),
    ]
}

/// Adds what a vCPU thread of a VM that can be snapshotted needs besides: reading its own
/// vCPU's state (never writing it).
pub fn add_snapshots(set: &mut RuleSet) -> Result<(), RuleError> {
    add(set)?;
    set.when_one_of(libc::SYS_ioctl, 1, &snapshot_ioctls())
}

/// Adds a vCPU thread's part.
pub fn add(set: &mut RuleSet) -> Result<(), RuleError> {
    set.always(ALWAYS);
    set.when_one_of(libc::SYS_ioctl, 1, &ioctls())?;
    // Activation hands the worker its own copies of the queue eventfds (EventFd::try_clone).
    set.when(libc::SYS_fcntl, &[Arg::Eq(1, libc::F_DUPFD_CLOEXEC as u64)])
}

//! The main thread: its epoll loop (stop eventfd, signalfd, control wake-ups, irqfd
//! resampling) and the shutdown, which kicks and joins the vCPUs, stops the device workers and
//! removes the sockets.

use kvm_bindings::{kvm_clock_data, kvm_irqchip, kvm_pit_state2, KVMIO};
use vmm_sys_util::{ioctl_ior_nr, ioctl_iowr_nr};

use super::rules::{Always, Arg, RuleError, RuleSet};

ioctl_iowr_nr!(KVM_GET_IRQCHIP, KVMIO, 0x62, kvm_irqchip);
ioctl_ior_nr!(KVM_GET_CLOCK, KVMIO, 0x7c, kvm_clock_data);
ioctl_ior_nr!(KVM_GET_PIT2, KVMIO, 0x9f, kvm_pit_state2);

const SNAPSHOT: Always = &[
    (
        libc::SYS_pwrite64,
        "writing a snapshot into the files opened at setup",
    ),
    (
        libc::SYS_ftruncate,
        "emptying and sizing the snapshot files",
    ),
    (libc::SYS_fsync, "making the snapshot files durable"),
];

const ALWAYS: Always = &[
    (libc::SYS_epoll_wait, "the main loop"),
    (
        libc::SYS_read,
        "the stop and control eventfds, the signalfd, resample eventfds",
    ),
    (
        libc::SYS_unlink,
        "removing the control and vsock sockets at exit",
    ),
    (
        libc::SYS_unlinkat,
        "removing the control and vsock sockets at exit",
    ),
];

/// The ioctl that reads the in-kernel IOAPIC (the control socket's `queues`).
pub fn get_irqchip_ioctl() -> u64 {
    KVM_GET_IRQCHIP()
}

/// Adds what the main thread of a VM with a `snapshot_dir` needs besides: reading the VM's
/// PIT and clock, writing the snapshot files it opened at setup, and resuming the devices
/// afterwards (an activation clones the queue eventfds).
pub fn add_snapshots(set: &mut RuleSet) -> Result<(), RuleError> {
    add(set)?;
    set.always(SNAPSHOT);
    set.when_one_of(libc::SYS_ioctl, 1, &[KVM_GET_CLOCK(), KVM_GET_PIT2()])?;
    set.when(libc::SYS_fcntl, &[Arg::Eq(1, libc::F_DUPFD_CLOEXEC as u64)])
}

/// Adds the main thread's part.
pub fn add(set: &mut RuleSet) -> Result<(), RuleError> {
    set.always(ALWAYS);
    // Kicking a vCPU out of KVM_RUN to pause or stop it (pthread_kill with SIGRTMIN).
    set.when(libc::SYS_tgkill, &[Arg::Eq(2, libc::SIGRTMIN() as u64)])?;
    // The shutdown resets every device (a virtio-net reset clears the tap's offloads); the
    // control socket's `queues` reads the devices' IOAPIC pins.
    set.when_one_of(
        libc::SYS_ioctl,
        1,
        &[libc::TUNSETOFFLOAD, get_irqchip_ioctl()],
    )
}

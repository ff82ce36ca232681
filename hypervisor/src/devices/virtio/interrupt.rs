//! How a virtio device interrupts its driver.
//!
//! virtio-mmio has one interrupt line per device and an InterruptStatus register saying why:
//! bit 0 "used buffer" (any queue) and bit 1 "configuration change". A device sets the bit,
//! then asserts the line. [`IrqfdInterrupt`] does that with an eventfd registered as a KVM
//! irqfd, so a device worker thread injects without a system call into the VMM's other threads.
//! Queue-processing code only sees the [`VirtioInterrupt`] trait, so tests use a fake.
//!
//! The line is level-triggered (the MP table says so) and the irqfd is a *resampling* one:
//! KVM keeps the line asserted until the guest's EOI, then lowers it and signals the resample
//! eventfd; [`IrqfdInterrupt::resample`] raises it again while InterruptStatus is not zero.
//! With edge-triggered lines an edge that arrives while the guest has the IOAPIC pin masked
//! (Linux masks edge pins while it moves an interrupt to another CPU) is simply lost, and a
//! device using VIRTIO_RING_F_EVENT_IDX then waits forever for a guest that never heard of
//! its last buffers: the vsock echo stalled that way under 2 vCPUs in the nested test host.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use vmm_sys_util::eventfd::EventFd;

/// InterruptStatus bit: the device used buffers in one of its queues.
pub const INT_USED_RING: u32 = 1;
/// InterruptStatus bit: the configuration (or the NEEDS_RESET status) changed.
pub const INT_CONFIG: u32 = 2;

/// Why a device interrupts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InterruptReason {
    /// Buffers were put in a used ring.
    UsedBuffer,
    /// The configuration space changed.
    ConfigChange,
    /// The device cannot go on: set DEVICE_NEEDS_RESET and tell the driver (a config change).
    NeedsReset,
}

/// Raises a device's interrupt.
pub trait VirtioInterrupt: Send + Sync + std::fmt::Debug {
    /// Records `reason` in the device's status and interrupts the driver.
    fn trigger(&self, reason: InterruptReason) -> std::io::Result<()>;
}

/// A device's InterruptStatus and NEEDS_RESET state, shared by the transport (which the driver
/// reads) and the device's worker (which sets them), and the irqfd that pulses the line.
#[derive(Debug)]
pub struct IrqfdInterrupt {
    status: AtomicU32,
    needs_reset: AtomicBool,
    irqfd: EventFd,
}

impl IrqfdInterrupt {
    /// Wraps `irqfd` (registered with KVM for the device's line by the caller).
    pub fn new(irqfd: EventFd) -> Self {
        IrqfdInterrupt {
            status: AtomicU32::new(0),
            needs_reset: AtomicBool::new(false),
            irqfd,
        }
    }

    /// The InterruptStatus register.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// The driver's InterruptACK write: clears the acknowledged bits.
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    /// Whether the device asked to be reset.
    pub fn needs_reset(&self) -> bool {
        self.needs_reset.load(Ordering::SeqCst)
    }

    /// Back to the reset state: no pending interrupt, no reset request.
    pub fn clear(&self) {
        self.status.store(0, Ordering::SeqCst);
        self.needs_reset.store(false, Ordering::SeqCst);
    }

    /// Sets InterruptStatus to a snapshot's value and, if an interrupt was pending, raises the
    /// line again (the restored IOAPIC expects it).
    pub fn restore_status(&self, bits: u32) {
        self.status.store(bits, Ordering::SeqCst);
        if bits != 0 {
            let _ = self.irqfd.write(1);
        }
    }

    /// The guest's EOI lowered the line: raise it again if an interrupt is still pending
    /// (set after the guest read the status, or never acknowledged).
    pub fn resample(&self) {
        if self.status() != 0 {
            let _ = self.irqfd.write(1);
        }
    }

    /// The irqfd (for registration with KVM).
    pub fn irqfd(&self) -> &EventFd {
        &self.irqfd
    }
}

impl VirtioInterrupt for IrqfdInterrupt {
    fn trigger(&self, reason: InterruptReason) -> std::io::Result<()> {
        let bit = match reason {
            InterruptReason::UsedBuffer => INT_USED_RING,
            InterruptReason::ConfigChange => INT_CONFIG,
            InterruptReason::NeedsReset => {
                self.needs_reset.store(true, Ordering::SeqCst);
                INT_CONFIG
            }
        };
        self.status.fetch_or(bit, Ordering::SeqCst);
        self.irqfd.write(1)
    }
}

/// A fake interrupt that records what was raised, for device tests.
#[cfg(test)]
#[derive(Debug, Default)]
pub struct FakeInterrupt {
    /// Every reason, in order.
    pub raised: std::sync::Mutex<Vec<InterruptReason>>,
}

#[cfg(test)]
impl FakeInterrupt {
    /// How many times `reason` was raised.
    pub fn count(&self, reason: InterruptReason) -> usize {
        self.raised
            .lock()
            .unwrap()
            .iter()
            .filter(|r| **r == reason)
            .count()
    }
}

#[cfg(test)]
impl VirtioInterrupt for FakeInterrupt {
    fn trigger(&self, reason: InterruptReason) -> std::io::Result<()> {
        self.raised.lock().unwrap().push(reason);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_bits_set_ack_and_pulse_the_line() {
        let irq = IrqfdInterrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
        irq.trigger(InterruptReason::UsedBuffer).unwrap();
        irq.trigger(InterruptReason::ConfigChange).unwrap();
        assert_eq!(irq.status(), INT_USED_RING | INT_CONFIG);
        assert_eq!(irq.irqfd().read().unwrap(), 2);
        irq.ack(INT_USED_RING);
        assert_eq!(irq.status(), INT_CONFIG);
        assert!(!irq.needs_reset());
        irq.trigger(InterruptReason::NeedsReset).unwrap();
        assert!(irq.needs_reset());
        irq.clear();
        assert_eq!((irq.status(), irq.needs_reset()), (0, false));
    }

    #[test]
    fn resampling_reasserts_only_while_status_is_pending() {
        let irq = IrqfdInterrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
        irq.resample();
        assert!(
            irq.irqfd().read().is_err(),
            "nothing pending: the line stays low"
        );
        irq.trigger(InterruptReason::UsedBuffer).unwrap();
        assert_eq!(irq.irqfd().read().unwrap(), 1);
        irq.resample();
        assert_eq!(
            irq.irqfd().read().unwrap(),
            1,
            "not acknowledged yet: raised again"
        );
        irq.ack(INT_USED_RING);
        irq.resample();
        assert!(irq.irqfd().read().is_err());
    }
}

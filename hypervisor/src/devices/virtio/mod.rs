//! Virtio devices and their transport.
//!
//! A device model implements [`VirtioDevice`]: what it is (type, queues, features, config
//! space) and what it does once the driver is ready ([`VirtioDevice::activate`]) until the
//! driver resets it ([`VirtioDevice::reset`]). The transport, [`mmio::MmioTransport`], is
//! device-agnostic: it serves the virtio-mmio version 2 registers, runs the driver's status
//! state machine ([`status::DeviceStatus`]), keeps the queue configuration and hands the device
//! everything it needs at activation in one [`Activation`].
//!
//! Threading (Cloud Hypervisor style): an activated device runs a worker thread with its own
//! epoll loop ([`worker::Worker`]) over its queue ioeventfds, its backend's descriptors and a
//! kill eventfd. The queue notifications reach that thread straight from KVM (an ioeventfd per
//! queue) and its interrupts go back through an irqfd ([`interrupt::IrqfdInterrupt`]), so the
//! vCPU threads never run device code for the data path. Queue processing itself only sees
//! guest memory, queues and the [`interrupt::VirtioInterrupt`] trait, so it is unit-tested on
//! fake guest memory with a fake interrupt.
//!
//! The guest is hostile: every descriptor chain goes through [`chain::GuestChain::parse`],
//! which refuses chains that loop, leave guest RAM or mix directions, before a device reads a
//! byte of it.
//!
//! Adding a device: implement [`VirtioDevice`] in a module of its own and attach it with
//! [`crate::device_manager::VirtioMmioDevices::attach`], which places the transport on the
//! MMIO bus, wires the ioeventfds and the irqfd and announces it on the kernel command line
//! (`virtio_mmio.device=4K@<base>:<irq>`).

pub mod balloon;
pub mod chain;
pub mod fs;
pub mod interrupt;
pub mod late_notify;
pub mod mmio;
pub mod net;
pub mod status;
pub mod vsock;
pub mod worker;

use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemory as _;
use vmm_sys_util::eventfd::EventFd;

use crate::memory::GuestMemory;
use interrupt::VirtioInterrupt;

/// Virtio device type of a network card (virtio-net) device.
pub const TYPE_NET: u32 = 1;
/// Virtio device type of a memory balloon (virtio-balloon) device.
pub const TYPE_BALLOON: u32 = 5;
/// Virtio device type of a socket (vsock) device.
pub const TYPE_VSOCK: u32 = 19;
/// Virtio device type of a file system (virtio-fs) device.
pub const TYPE_FS: u32 = 26;

/// Feature bit: the device conforms to virtio 1.0 or later (mandatory for virtio-mmio v2).
pub const VIRTIO_F_VERSION_1: u32 = 32;
/// Feature bit: the used/available event index fields suppress notifications.
pub const VIRTIO_RING_F_EVENT_IDX: u32 = 29;

/// Everything a device gets when the driver sets DRIVER_OK.
#[derive(Debug)]
pub struct Activation {
    /// Guest RAM.
    pub mem: GuestMemory,
    /// The queues as the driver configured them, in index order.
    pub queues: Vec<Queue>,
    /// One eventfd per queue, written by KVM when the driver notifies that queue.
    pub queue_evts: Vec<EventFd>,
    /// How the device interrupts the driver.
    pub interrupt: Arc<dyn VirtioInterrupt>,
    /// The features the driver accepted.
    pub acked_features: u64,
}

impl Activation {
    /// Checks that the driver set up exactly `count` queues (and eventfds), each ready and with
    /// its rings inside guest RAM: what every device needs before its worker starts.
    pub fn check_queues(&self, count: usize) -> Result<(), ActivateError> {
        if self.queues.len() != count || self.queue_evts.len() != count {
            return Err(ActivateError::QueueCount {
                expected: count,
                got: self.queues.len().min(self.queue_evts.len()),
            });
        }
        for (index, q) in self.queues.iter().enumerate() {
            if !q.ready() {
                return Err(ActivateError::BadQueue {
                    index,
                    why: "not ready",
                });
            }
            if !q.is_valid(&self.mem) || self.mem.num_regions() == 0 {
                return Err(ActivateError::BadQueue {
                    index,
                    why: "rings outside guest RAM",
                });
            }
        }
        Ok(())
    }
}

/// An [`Activation`] of exactly `N` checked queues, in index order, with their eventfds.
#[derive(Debug)]
pub struct ActiveQueues<const N: usize> {
    /// Guest RAM.
    pub mem: GuestMemory,
    /// The queues, in index order.
    pub queues: [Queue; N],
    /// Each queue's notification eventfd, in the same order.
    pub queue_evts: [EventFd; N],
    /// How the device interrupts the driver.
    pub interrupt: Arc<dyn VirtioInterrupt>,
    /// The features the driver accepted.
    pub acked_features: u64,
}

impl Activation {
    /// [`Activation::check_queues`] for `N` queues, then the queues and eventfds as arrays: the
    /// shape a device's worker takes them in.
    pub fn into_queues<const N: usize>(self) -> Result<ActiveQueues<N>, ActivateError> {
        self.check_queues(N)?;
        let got = self.queues.len().min(self.queue_evts.len());
        let count = || ActivateError::QueueCount { expected: N, got };
        Ok(ActiveQueues {
            queues: self.queues.try_into().map_err(|_| count())?,
            queue_evts: self.queue_evts.try_into().map_err(|_| count())?,
            mem: self.mem,
            interrupt: self.interrupt,
            acked_features: self.acked_features,
        })
    }
}

/// A config-space read of any width at any offset: the bytes of `config` from `offset`, zero
/// past its end (a driver reading beyond the structure gets zeros, never a fault).
pub fn read_config_window(config: &[u8], offset: u64, data: &mut [u8]) {
    for (i, b) in data.iter_mut().enumerate() {
        *b = usize::try_from(offset)
            .ok()
            .and_then(|o| o.checked_add(i))
            .and_then(|at| config.get(at))
            .copied()
            .unwrap_or(0);
    }
}

/// A device could not start.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    /// The driver did not make the queues the device needs ready, or they do not fit in RAM.
    #[error("queue {index} is not usable: {why}")]
    BadQueue {
        /// The queue's index.
        index: usize,
        /// What is wrong with it.
        why: &'static str,
    },
    /// The wrong number of queues or eventfds.
    #[error("expected {expected} queues, got {got}")]
    QueueCount {
        /// Queues the device has.
        expected: usize,
        /// Queues it was given.
        got: usize,
    },
    /// The device is already active (activate without a reset in between).
    #[error("the device is already active")]
    AlreadyActive,
    /// The worker or backend could not start.
    #[error("starting the device: {0}")]
    Start(#[source] std::io::Error),
}

/// A virtio device model, independent of the transport.
pub trait VirtioDevice: Send + std::fmt::Debug {
    /// The virtio device type (19 vsock, 26 fs, 1 net, 5 balloon).
    fn device_type(&self) -> u32;

    /// The maximum size of each queue; the slice's length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];

    /// The feature bits the device offers (VIRTIO_F_VERSION_1 among them).
    fn features(&self) -> u64;

    /// Reads the device's configuration space at `offset`; bytes past its end read as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]);

    /// Writes the configuration space (read-only spaces ignore it).
    fn write_config(&mut self, offset: u64, data: &[u8]);

    /// Starts the device's worker thread, if it has one, which confines itself (its seccomp
    /// filter among others) before it takes any work. Called once at setup, after husk-vmm
    /// entered its jail and before the guest runs, so that no thread is created later;
    /// activation calls it too, for users of the library that never did. Returns without
    /// waiting for the confinement: [`VirtioDevice::worker_confined`] does.
    fn start_worker(&mut self) -> std::io::Result<()> {
        Ok(())
    }

    /// Waits until the worker thread [`VirtioDevice::start_worker`] started is confined: the
    /// error if that failed. A device without a worker has nothing to wait for.
    fn worker_confined(&mut self) -> std::io::Result<()> {
        Ok(())
    }

    /// Starts the device with the queues the driver set up, and returns once it runs.
    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError> {
        self.begin_activation(activation)?;
        self.finish_activation()
    }

    /// Starts the device with the queues the driver set up; a device whose worker thread builds
    /// its backend may return before that is done, and [`VirtioDevice::finish_activation`]
    /// waits for it. A restore begins every device's activation before it finishes any.
    fn begin_activation(&mut self, activation: Activation) -> Result<(), ActivateError>;

    /// Waits until the activation begun last runs: the error of building its backend, if that
    /// failed. A device without a worker has nothing to wait for.
    fn finish_activation(&mut self) -> Result<(), ActivateError> {
        Ok(())
    }

    /// Asks the device to write its backend's state to husk-vmm's log, for diagnosis (the
    /// control socket's `queues` does). Must not block: a device with a worker signals it.
    fn log_state(&self) {}

    /// Says that the next [`VirtioDevice::activate`] resumes a snapshot: the driver's state in
    /// guest memory predates this device's backend (the vsock device tells the driver its
    /// connections are gone).
    fn resuming_snapshot(&mut self) {}

    /// Why the device cannot be snapshotted now, if it cannot: state in its backend that a
    /// restored VM would need and a snapshot does not carry.
    fn snapshot_blocker(&self) -> Option<String> {
        None
    }

    /// Stops the device (its worker exits and is joined, its backend state is dropped) and
    /// returns it to a state in which [`VirtioDevice::activate`] can be called again.
    fn reset(&mut self);
}

/// Test helpers shared by the devices' tests: an activation over given queues, and waiting for
/// a worker thread.
#[cfg(test)]
pub(crate) mod testing {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use virtio_queue::Queue;
    use vmm_sys_util::eventfd::EventFd;

    use super::interrupt::FakeInterrupt;
    use super::Activation;
    use crate::memory::GuestMemory;

    /// An activation of `queues` with features `acked`, and the test's ends of its eventfds.
    pub fn activation(
        mem: &GuestMemory,
        queues: Vec<Queue>,
        irq: &Arc<FakeInterrupt>,
        acked: u64,
    ) -> (Activation, Vec<EventFd>) {
        let evts: Vec<EventFd> = (0..queues.len())
            .map(|_| EventFd::new(libc::EFD_NONBLOCK).unwrap())
            .collect();
        let theirs = evts.iter().map(|e| e.try_clone().unwrap()).collect();
        let a = Activation {
            mem: mem.clone(),
            queues,
            queue_evts: theirs,
            interrupt: irq.clone(),
            acked_features: acked,
        };
        (a, evts)
    }

    /// Waits up to 10 s for `f`, failing the test with `what`.
    pub fn wait_for(what: &str, f: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

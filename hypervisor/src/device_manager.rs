//! Placing virtio-mmio devices in the machine.
//!
//! Device `i` gets the register window `VIRTIO_MMIO_START + i * 4 KiB` and legacy interrupt
//! line `IRQ_BASE + i` (5 to 23), as Firecracker lays them out. [`VirtioMmioDevices::attach`]
//! wires one device: an ioeventfd per queue on the QueueNotify register (datamatch = queue
//! index, so notifications never leave KVM), a resampling irqfd on its level-triggered line
//! (the main loop polls the resample eventfds and calls [`VirtioMmioDevices::resample`]), the
//! transport on the MMIO bus, and `virtio_mmio.device=4K@<base>:<irq>` on the kernel command
//! line, which is how the guest (no ACPI, no device tree) finds it.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};

use kvm_ioctls::{IoEventAddress, VmFd};
use linux_loader::cmdline::Cmdline;
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::EventFd;

use crate::arch::layout::{IRQ_BASE, IRQ_MAX, VIRTIO_MMIO_SIZE, VIRTIO_MMIO_START};
use crate::bus::{Bus, BusError};
use crate::devices::virtio::interrupt::IrqfdInterrupt;
use crate::devices::virtio::mmio::{reg, MmioTransport, PersistError, TransportState};
use crate::devices::virtio::VirtioDevice;
use crate::memory::GuestMemory;

/// Where a device landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MmioSlot {
    /// Base of its register window.
    pub base: u64,
    /// Its interrupt line (GSI).
    pub irq: u32,
}

/// Attaching a device failed.
#[derive(Debug, thiserror::Error)]
pub enum DeviceManagerError {
    /// All interrupt lines are taken.
    #[error("no interrupt line left for another virtio device (lines {IRQ_BASE}..={IRQ_MAX})")]
    NoSlot,
    /// An eventfd could not be created.
    #[error("creating an eventfd: {0}")]
    EventFd(std::io::Error),
    /// KVM refused an ioeventfd or irqfd.
    #[error("{0}: {1}")]
    Kvm(&'static str, kvm_ioctls::Error),
    /// The window overlaps another device.
    #[error(transparent)]
    Bus(#[from] BusError),
    /// The device's queue sizes are invalid.
    #[error("virtio device queues: {0}")]
    Queue(String),
    /// The command line has no room for the device.
    #[error("announcing the device on the kernel command line: {0}")]
    Cmdline(String),
}

fn lock(t: &Mutex<MmioTransport>) -> std::sync::MutexGuard<'_, MmioTransport> {
    t.lock().unwrap_or_else(|p| p.into_inner())
}

struct Attached {
    slot: MmioSlot,
    transport: Arc<Mutex<MmioTransport>>,
    interrupt: Arc<IrqfdInterrupt>,
    resample: EventFd,
}

/// The machine's virtio-mmio devices.
#[derive(Default)]
pub struct VirtioMmioDevices {
    devices: Vec<Attached>,
}

impl std::fmt::Debug for VirtioMmioDevices {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.devices.iter().map(|d| d.slot))
            .finish()
    }
}

impl VirtioMmioDevices {
    /// Attaches `device` to the next free slot.
    pub fn attach(
        &mut self,
        vm: &VmFd,
        mem: &GuestMemory,
        bus: &mut Bus,
        cmdline: &mut Cmdline,
        device: Box<dyn VirtioDevice>,
    ) -> Result<MmioSlot, DeviceManagerError> {
        let index = self.devices.len();
        let irq = IRQ_BASE + u32::try_from(index).map_err(|_| DeviceManagerError::NoSlot)?;
        if irq > IRQ_MAX {
            return Err(DeviceManagerError::NoSlot);
        }
        let base = VIRTIO_MMIO_START + index as u64 * VIRTIO_MMIO_SIZE;
        let slot = MmioSlot { base, irq };

        let mut evts = Vec::new();
        for queue in 0..device.queue_max_sizes().len() {
            let evt = EventFd::new(libc::EFD_NONBLOCK).map_err(DeviceManagerError::EventFd)?;
            vm.register_ioevent(
                &evt,
                &IoEventAddress::Mmio(base + reg::QUEUE_NOTIFY),
                queue as u32,
            )
            .map_err(|e| DeviceManagerError::Kvm("registering a queue ioeventfd", e))?;
            evts.push(evt);
        }
        let irqfd = EventFd::new(libc::EFD_NONBLOCK).map_err(DeviceManagerError::EventFd)?;
        let resample = EventFd::new(libc::EFD_NONBLOCK).map_err(DeviceManagerError::EventFd)?;
        vm.register_irqfd_with_resample(&irqfd, &resample, irq)
            .map_err(|e| DeviceManagerError::Kvm("registering the device irqfd", e))?;
        let interrupt = Arc::new(IrqfdInterrupt::new(irqfd));
        let transport = MmioTransport::new(device, mem.clone(), interrupt.clone(), evts)
            .map_err(|e| DeviceManagerError::Queue(e.to_string()))?;
        let shared = Arc::new(Mutex::new(transport));
        bus.insert(base, VIRTIO_MMIO_SIZE, shared.clone())?;
        cmdline
            .add_virtio_mmio_device(VIRTIO_MMIO_SIZE, GuestAddress(base), irq, None)
            .map_err(|e| DeviceManagerError::Cmdline(e.to_string()))?;
        self.devices.push(Attached {
            slot,
            transport: shared,
            interrupt,
            resample,
        });
        Ok(slot)
    }

    /// The slots in use.
    pub fn slots(&self) -> Vec<MmioSlot> {
        self.devices.iter().map(|d| d.slot).collect()
    }

    /// The resample eventfd of each device, by index, for the main loop to poll.
    pub fn resample_fds(&self) -> Vec<RawFd> {
        self.devices
            .iter()
            .map(|d| d.resample.as_raw_fd())
            .collect()
    }

    /// Every device's transport state, in attach order, on one line: the control socket's
    /// `queues` answer. Each device with a backend is also asked to log that backend's state
    /// (the vsock connections' credit, for one), which its worker does shortly after.
    pub fn describe(&self) -> String {
        let parts: Vec<String> = self
            .devices
            .iter()
            .map(|d| {
                let transport = d.transport.lock().unwrap_or_else(|p| p.into_inner());
                transport.log_state();
                let snapshot = transport.snapshot();
                format!("[irq {} {snapshot}]", d.slot.irq)
            })
            .collect();
        if parts.is_empty() {
            "no virtio devices".into()
        } else {
            parts.join(" ")
        }
    }

    /// Device `index`'s line was lowered by the guest's EOI: raise it again if needed.
    pub fn resample(&self, index: usize) {
        if let Some(d) = self.devices.get(index) {
            let _ = d.resample.read();
            d.interrupt.resample();
        }
    }

    /// Starts every device's worker thread: at setup, so no thread is created once the guest
    /// runs. The threads confine themselves side by side; [`Self::workers_confined`] waits for
    /// them, and a restore's activations may be handed to them meanwhile (a thread takes work
    /// only once confined).
    pub fn start_workers(&self) -> std::io::Result<()> {
        for d in &self.devices {
            lock(&d.transport).start_worker()?;
        }
        Ok(())
    }

    /// Waits until every device's worker thread is confined: the first failure.
    pub fn workers_confined(&self) -> std::io::Result<()> {
        for d in &self.devices {
            lock(&d.transport).worker_confined()?;
        }
        Ok(())
    }

    /// Why the devices cannot be snapshotted now: one line per device that cannot.
    pub fn snapshot_blockers(&self) -> Vec<String> {
        self.devices
            .iter()
            .filter_map(|d| lock(&d.transport).snapshot_blocker())
            .collect()
    }

    /// Stops every device's worker, keeping its registers, and returns each transport's state
    /// in attach order (see [`MmioTransport::quiesce`]). The vCPUs must be parked.
    pub fn quiesce(&self) -> Result<Vec<TransportState>, PersistError> {
        self.devices
            .iter()
            .map(|d| lock(&d.transport).quiesce())
            .collect()
    }

    /// Puts saved transport states back, in attach order, resuming the devices the driver had
    /// running (see [`MmioTransport::restore`]); the workers must have been started. Every
    /// device's worker builds its backend at once: each activation is begun before any is
    /// waited for.
    pub fn restore(&self, states: &[TransportState]) -> Result<(), PersistError> {
        if states.len() != self.devices.len() {
            return Err(PersistError::Device {
                expected: format!("{} virtio devices", self.devices.len()),
                found: format!("{} virtio devices", states.len()),
            });
        }
        for (d, state) in self.devices.iter().zip(states) {
            lock(&d.transport).begin_restore(state)?;
        }
        for (d, state) in self.devices.iter().zip(states) {
            lock(&d.transport).finish_restore(state)?;
        }
        Ok(())
    }

    /// Stops every device and drops its model (closing its host resources), even if a vCPU
    /// thread that failed to stop still holds the bus.
    pub fn shutdown(&self) {
        for d in &self.devices {
            d.transport
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .shutdown();
        }
    }
}

//! The virtio-mmio transport, version 2 (virtio 1.2 section 4.2.2).
//!
//! One [`MmioTransport`] per device sits on the MMIO bus. It answers the register window the
//! guest's `virtio_mmio` driver probes, runs the status state machine, records the queue
//! configuration, and on DRIVER_OK hands the device its queues; a status write of 0 resets the
//! device (its worker stops) so the driver can start over. The register window only sees the
//! slow path: queue notifications are caught by KVM ioeventfds before they reach it.
//!
//! Everything the driver writes is checked: unaligned or odd-sized register accesses, queue
//! settings outside the setup phase, invalid queue sizes, misaligned or out-of-RAM rings and
//! features the device did not offer are refused (the register keeps its value, a rate-limited
//! warning names the problem).

use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::EventFd;

use super::interrupt::IrqfdInterrupt;
use super::status::{self, DeviceStatus};
use super::{Activation, VirtioDevice, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX};
use crate::bus::BusDevice;
use crate::guest_warn;
use crate::memory::GuestMemory;

mod diagnosis;
mod persist;
pub use diagnosis::{QueueSnapshot, TransportSnapshot};
pub use persist::{PersistError, QueueState, TransportState};

/// "virt", little-endian.
pub const MAGIC: u32 = 0x7472_6976;
/// The modern (virtio 1.x) register layout.
pub const VERSION: u32 = 2;
/// Vendor id reported to the guest ("HUSK").
pub const VENDOR: u32 = 0x4b53_5548;

/// Register offsets.
pub mod reg {
    #![allow(missing_docs)]
    pub const MAGIC: u64 = 0x000;
    pub const VERSION: u64 = 0x004;
    pub const DEVICE_ID: u64 = 0x008;
    pub const VENDOR_ID: u64 = 0x00c;
    pub const DEVICE_FEATURES: u64 = 0x010;
    pub const DEVICE_FEATURES_SEL: u64 = 0x014;
    pub const DRIVER_FEATURES: u64 = 0x020;
    pub const DRIVER_FEATURES_SEL: u64 = 0x024;
    pub const QUEUE_SEL: u64 = 0x030;
    pub const QUEUE_NUM_MAX: u64 = 0x034;
    pub const QUEUE_NUM: u64 = 0x038;
    pub const QUEUE_READY: u64 = 0x044;
    pub const QUEUE_NOTIFY: u64 = 0x050;
    pub const INTERRUPT_STATUS: u64 = 0x060;
    pub const INTERRUPT_ACK: u64 = 0x064;
    pub const STATUS: u64 = 0x070;
    pub const QUEUE_DESC_LOW: u64 = 0x080;
    pub const QUEUE_DESC_HIGH: u64 = 0x084;
    pub const QUEUE_AVAIL_LOW: u64 = 0x090;
    pub const QUEUE_AVAIL_HIGH: u64 = 0x094;
    pub const QUEUE_USED_LOW: u64 = 0x0a0;
    pub const QUEUE_USED_HIGH: u64 = 0x0a4;
    pub const SHM_LEN_LOW: u64 = 0x0b0;
    pub const SHM_LEN_HIGH: u64 = 0x0b4;
    pub const SHM_BASE_LOW: u64 = 0x0b8;
    pub const SHM_BASE_HIGH: u64 = 0x0bc;
    pub const CONFIG_GENERATION: u64 = 0x0fc;
    pub const CONFIG: u64 = 0x100;
}

/// Why a driver access was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MmioError {
    /// Not a 32-bit aligned access to a register.
    #[error(
        "{len}-byte access at register offset {offset:#x} (registers take aligned 4-byte accesses)"
    )]
    Access {
        /// Offset in the window.
        offset: u64,
        /// Access width.
        len: usize,
    },
    /// A status write the state machine refuses.
    #[error(transparent)]
    Status(#[from] status::StatusError),
    /// A queue register written outside the setup phase or for a queue that is live.
    #[error("queue {queue} register {offset:#x} written while {why}")]
    QueueLocked {
        /// The selected queue.
        queue: u32,
        /// The register.
        offset: u64,
        /// What forbids it.
        why: &'static str,
    },
    /// A queue size that is zero, not a power of two or above the maximum.
    #[error("queue {queue}: size {size} is not a power of two up to {max}")]
    QueueSize {
        /// The selected queue.
        queue: u32,
        /// The size written.
        size: u32,
        /// The device's maximum.
        max: u16,
    },
    /// A ring address that breaks the ring's alignment.
    #[error("queue {queue}: register {offset:#x} would make the ring address {addr:#x}, not {align}-byte aligned")]
    RingAlign {
        /// The selected queue.
        queue: u32,
        /// The register.
        offset: u64,
        /// The resulting address.
        addr: u64,
        /// The alignment the ring needs.
        align: u64,
    },
    /// A queue that was made ready with rings outside guest RAM.
    #[error(
        "queue {queue}: rings outside guest RAM (desc {desc:#x}, avail {avail:#x}, used {used:#x})"
    )]
    QueueRings {
        /// The selected queue.
        queue: u32,
        /// Descriptor table address.
        desc: u64,
        /// Available ring address.
        avail: u64,
        /// Used ring address.
        used: u64,
    },
    /// The driver accepted features the device did not offer, or not VERSION_1.
    #[error("driver features {acked:#x} are not a subset of {offered:#x} including VERSION_1")]
    Features {
        /// What the driver wrote.
        acked: u64,
        /// What the device offers.
        offered: u64,
    },
    /// Features written outside negotiation.
    #[error("driver features written in state {0}")]
    FeaturesLocked(DeviceStatus),
    /// The device refused to start.
    #[error("activating the device failed: {0}")]
    Activate(String),
}

/// The transport of one device.
#[derive(Debug)]
pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    mem: GuestMemory,
    interrupt: Arc<IrqfdInterrupt>,
    queue_evts: Vec<EventFd>,
    queues: Vec<Queue>,
    status: DeviceStatus,
    active: bool,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_sel: u32,
    config_generation: u32,
    /// Whether the first activation was announced on stderr.
    announced: bool,
}

/// A device type's name for messages.
pub fn device_name(device_type: u32) -> String {
    match device_type {
        1 => "virtio-net".into(),
        19 => "virtio-vsock".into(),
        26 => "virtio-fs".into(),
        t => format!("virtio device type {t}"),
    }
}

impl MmioTransport {
    /// A transport for `device`; `queue_evts` (one per queue) are the eventfds KVM writes on
    /// queue notifications, `interrupt` raises the device's line.
    pub fn new(
        device: Box<dyn VirtioDevice>,
        mem: GuestMemory,
        interrupt: Arc<IrqfdInterrupt>,
        queue_evts: Vec<EventFd>,
    ) -> Result<Self, virtio_queue::Error> {
        let queues = device
            .queue_max_sizes()
            .iter()
            .map(|max| Queue::new(*max))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(MmioTransport {
            device,
            mem,
            interrupt,
            queue_evts,
            queues,
            status: DeviceStatus::Reset,
            active: false,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            queue_sel: 0,
            config_generation: 0,
            announced: false,
        })
    }

    /// The device status state.
    pub fn status(&self) -> DeviceStatus {
        self.status
    }

    /// Whether the device is running.
    pub fn is_active(&self) -> bool {
        self.active
    }

    /// Starts the device's worker thread (see [`VirtioDevice::start_worker`]).
    pub fn start_worker(&mut self) -> std::io::Result<()> {
        self.device.start_worker()
    }

    /// Waits for the device's worker thread's confinement (see
    /// [`VirtioDevice::worker_confined`]).
    pub fn worker_confined(&mut self) -> std::io::Result<()> {
        self.device.worker_confined()
    }

    /// Asks the device to log its backend's state (see [`VirtioDevice::log_state`]).
    pub fn log_state(&self) {
        self.device.log_state();
    }

    /// Stops the device and drops its model (the VM is going away): its host resources (a
    /// socket, connections) are released now, not when the last bus reference goes.
    pub fn shutdown(&mut self) {
        self.reset();
        self.device = Box::new(Removed);
    }

    fn selected(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    fn reset(&mut self) {
        if self.active {
            self.device.reset();
            self.active = false;
        }
        for q in &mut self.queues {
            q.reset();
        }
        self.interrupt.clear();
        self.status = DeviceStatus::Reset;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.driver_features = 0;
        self.queue_sel = 0;
    }

    /// Reads register `offset`.
    pub fn read_reg(&mut self, offset: u64) -> u32 {
        let features = self.device.features();
        match offset {
            reg::MAGIC => MAGIC,
            reg::VERSION => VERSION,
            reg::DEVICE_ID => self.device.device_type(),
            reg::VENDOR_ID => VENDOR,
            reg::DEVICE_FEATURES => match self.device_features_sel {
                0 => features as u32,
                1 => (features >> 32) as u32,
                _ => 0,
            },
            reg::QUEUE_NUM_MAX => self
                .selected()
                .map(|q| u32::from(q.max_size()))
                .unwrap_or(0),
            reg::QUEUE_READY => self.selected().map(|q| u32::from(q.ready())).unwrap_or(0),
            reg::INTERRUPT_STATUS => self.interrupt.status(),
            reg::STATUS => {
                let needs_reset = if self.interrupt.needs_reset() {
                    status::NEEDS_RESET
                } else {
                    0
                };
                self.status.bits() | needs_reset
            }
            // No shared memory regions: a length of all ones says so.
            reg::SHM_LEN_LOW | reg::SHM_LEN_HIGH => u32::MAX,
            reg::SHM_BASE_LOW | reg::SHM_BASE_HIGH => u32::MAX,
            reg::CONFIG_GENERATION => self.config_generation,
            _ => 0,
        }
    }

    /// Writes register `offset`.
    pub fn write_reg(&mut self, offset: u64, value: u32) -> Result<(), MmioError> {
        match offset {
            reg::DEVICE_FEATURES_SEL => self.device_features_sel = value,
            reg::DRIVER_FEATURES_SEL => self.driver_features_sel = value,
            reg::DRIVER_FEATURES => {
                if self.status != DeviceStatus::Driver {
                    return Err(MmioError::FeaturesLocked(self.status));
                }
                match self.driver_features_sel {
                    0 => {
                        self.driver_features =
                            (self.driver_features & !0xffff_ffff) | u64::from(value)
                    }
                    1 => {
                        self.driver_features =
                            (self.driver_features & 0xffff_ffff) | (u64::from(value) << 32)
                    }
                    // Feature words past the second: nothing is offered there.
                    _ if value != 0 => {
                        return Err(MmioError::Features {
                            acked: u64::from(value),
                            offered: self.device.features(),
                        })
                    }
                    _ => {}
                }
            }
            reg::QUEUE_SEL => self.queue_sel = value,
            reg::QUEUE_NUM
            | reg::QUEUE_READY
            | reg::QUEUE_DESC_LOW
            | reg::QUEUE_DESC_HIGH
            | reg::QUEUE_AVAIL_LOW
            | reg::QUEUE_AVAIL_HIGH
            | reg::QUEUE_USED_LOW
            | reg::QUEUE_USED_HIGH => self.write_queue_reg(offset, value)?,
            reg::QUEUE_NOTIFY => {
                // KVM's ioeventfd normally takes these; a notification for a queue the
                // datamatch does not cover (or a VMM without ioeventfds) lands here.
                if let Some(evt) = self.queue_evts.get(value as usize) {
                    let _ = evt.write(1);
                }
            }
            reg::INTERRUPT_ACK => self.interrupt.ack(value),
            reg::STATUS => self.write_status(value)?,
            _ => {}
        }
        Ok(())
    }

    fn write_queue_reg(&mut self, offset: u64, value: u32) -> Result<(), MmioError> {
        let queue = self.queue_sel;
        let locked = |why| MmioError::QueueLocked { queue, offset, why };
        if offset == reg::QUEUE_READY && value == 0 {
            // Always allowed (Linux clears it while tearing a device down); the live device
            // keeps its own copy of the queue until it is reset.
            if let Some(q) = self.selected() {
                q.set_ready(false);
            }
            return Ok(());
        }
        if self.status != DeviceStatus::FeaturesOk {
            return Err(locked("the device is not in the features-ok (setup) state"));
        }
        let mem = self.mem.clone();
        let q = self.selected().ok_or(locked("no such queue exists"))?;
        if q.ready() {
            return Err(locked("the queue is ready"));
        }
        match offset {
            reg::QUEUE_NUM => {
                let max = q.max_size();
                let size = u16::try_from(value).ok();
                match size.map(|s| q.try_set_size(s)) {
                    Some(Ok(())) => {}
                    _ => {
                        return Err(MmioError::QueueSize {
                            queue,
                            size: value,
                            max,
                        })
                    }
                }
            }
            reg::QUEUE_READY => {
                q.set_ready(true);
                if value != 1 || !q.is_valid(&mem) {
                    q.set_ready(false);
                    return Err(MmioError::QueueRings {
                        queue,
                        desc: q.desc_table(),
                        avail: q.avail_ring(),
                        used: q.used_ring(),
                    });
                }
            }
            _ => {
                let combine = |old: u64| {
                    if offset & 4 == 0 {
                        (old & !0xffff_ffff) | u64::from(value)
                    } else {
                        (old & 0xffff_ffff) | (u64::from(value) << 32)
                    }
                };
                let (addr, align) = match offset {
                    reg::QUEUE_DESC_LOW | reg::QUEUE_DESC_HIGH => (combine(q.desc_table()), 16),
                    reg::QUEUE_AVAIL_LOW | reg::QUEUE_AVAIL_HIGH => (combine(q.avail_ring()), 2),
                    _ => (combine(q.used_ring()), 4),
                };
                if addr % align != 0 {
                    return Err(MmioError::RingAlign {
                        queue,
                        offset,
                        addr,
                        align,
                    });
                }
                let (low, high) = (Some(addr as u32), Some((addr >> 32) as u32));
                match offset {
                    reg::QUEUE_DESC_LOW | reg::QUEUE_DESC_HIGH => {
                        q.set_desc_table_address(low, high)
                    }
                    reg::QUEUE_AVAIL_LOW | reg::QUEUE_AVAIL_HIGH => {
                        q.set_avail_ring_address(low, high)
                    }
                    _ => q.set_used_ring_address(low, high),
                }
            }
        }
        Ok(())
    }

    fn write_status(&mut self, value: u32) -> Result<(), MmioError> {
        let next = self.status.on_write(value)?;
        match next {
            DeviceStatus::Reset => {
                self.reset();
                return Ok(());
            }
            DeviceStatus::FeaturesOk if self.status == DeviceStatus::Driver => {
                let offered = self.device.features();
                let acked = self.driver_features;
                if acked & !offered != 0 || acked & (1 << VIRTIO_F_VERSION_1) == 0 {
                    // FEATURES_OK stays clear: the driver re-reads it and gives up.
                    return Err(MmioError::Features { acked, offered });
                }
            }
            DeviceStatus::DriverOk if self.status == DeviceStatus::FeaturesOk => {
                self.status = next;
                return self.activate();
            }
            _ => {}
        }
        self.status = next;
        Ok(())
    }

    fn activate(&mut self) -> Result<(), MmioError> {
        self.begin_activation()?;
        self.finish_activation()
    }

    /// Hands the driver's queues to the device; [`MmioTransport::finish_activation`] waits
    /// until it runs.
    pub(super) fn begin_activation(&mut self) -> Result<(), MmioError> {
        let event_idx = self.driver_features & (1 << VIRTIO_RING_F_EVENT_IDX) != 0;
        let mut queues = Vec::with_capacity(self.queues.len());
        for q in &self.queues {
            let mut copy =
                Queue::try_from(q.state()).map_err(|e| MmioError::Activate(e.to_string()))?;
            copy.set_event_idx(event_idx);
            queues.push(copy);
        }
        let evts = self
            .queue_evts
            .iter()
            .map(EventFd::try_clone)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| MmioError::Activate(e.to_string()))?;
        let activation = Activation {
            mem: self.mem.clone(),
            queues,
            queue_evts: evts,
            interrupt: self.interrupt.clone(),
            acked_features: self.driver_features,
        };
        let begun = self.device.begin_activation(activation);
        begun.map_err(|e| self.needs_reset(e))
    }

    /// Waits for the device whose activation began to run; then the transport is active.
    pub(super) fn finish_activation(&mut self) -> Result<(), MmioError> {
        self.device
            .finish_activation()
            .map_err(|e| self.needs_reset(e))?;
        self.active = true;
        // Once per device: a guest that resets and activates it again says nothing more.
        if !self.announced {
            self.announced = true;
            eprintln!(
                "{} {}",
                husk_protocol::vmm::DRIVER_READY,
                device_name(self.device.device_type())
            );
        }
        Ok(())
    }

    /// A failed activation: the driver sees DEVICE_NEEDS_RESET and a config interrupt.
    fn needs_reset(&self, e: super::ActivateError) -> MmioError {
        let _ = super::interrupt::VirtioInterrupt::trigger(
            self.interrupt.as_ref(),
            super::interrupt::InterruptReason::NeedsReset,
        );
        MmioError::Activate(e.to_string())
    }
}

/// What is left in a transport after [`MmioTransport::shutdown`]: device id 0, which the
/// virtio spec reserves for "no device".
#[derive(Debug)]
struct Removed;

impl VirtioDevice for Removed {
    fn device_type(&self) -> u32 {
        0
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[]
    }
    fn features(&self) -> u64 {
        0
    }
    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    fn begin_activation(&mut self, _activation: Activation) -> Result<(), super::ActivateError> {
        Err(super::ActivateError::QueueCount {
            expected: 0,
            got: 0,
        })
    }
    fn reset(&mut self) {}
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= reg::CONFIG {
            self.device.read_config(offset - reg::CONFIG, data);
            return;
        }
        if data.len() != 4 || offset % 4 != 0 {
            guest_warn!(
                "virtio-mmio: {}",
                MmioError::Access {
                    offset,
                    len: data.len()
                }
            );
            data.fill(0);
            return;
        }
        data.copy_from_slice(&self.read_reg(offset).to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= reg::CONFIG {
            self.device.write_config(offset - reg::CONFIG, data);
            self.config_generation = self.config_generation.wrapping_add(1);
            return;
        }
        let value = match <[u8; 4]>::try_from(data) {
            Ok(bytes) if offset % 4 == 0 => u32::from_le_bytes(bytes),
            _ => {
                guest_warn!(
                    "virtio-mmio: {}",
                    MmioError::Access {
                        offset,
                        len: data.len()
                    }
                );
                return;
            }
        };
        if let Err(e) = self.write_reg(offset, value) {
            guest_warn!("virtio-mmio device type {}: {e}", self.device.device_type());
        }
    }
}

#[cfg(test)]
mod tests;

//! A transport's state for a snapshot: the registers the driver wrote, each queue's rings and
//! position, and the pending interrupt; and putting it back into a fresh transport, whose
//! device then resumes the queues where they were.
//!
//! The position of a queue is read from guest memory once the device's worker has stopped:
//! a worker completes every chain it takes before it returns to its loop, so with the worker
//! stopped every chain taken is in the used ring and the used index is where both the device's
//! next available entry and its next used entry are.
//!
//! Restoring checks everything against the device model as a driver write would be checked:
//! the snapshot file is trusted no more than the guest (it may be stale, or another device's).

use serde::{Deserialize, Serialize};
use virtio_queue::QueueT;
use vm_memory::{Address, Bytes, GuestAddress};

use super::MmioTransport;
use crate::devices::virtio::status::DeviceStatus;
use crate::devices::virtio::VIRTIO_F_VERSION_1;

/// One queue as the driver configured it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueState {
    /// The size the driver chose.
    pub size: u16,
    /// Whether the driver made it ready.
    pub ready: bool,
    /// Descriptor table, available ring and used ring (guest physical).
    pub rings: [u64; 3],
    /// The next entry of the available ring the device takes and of the used ring it fills.
    pub next: u16,
}

/// One transport.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransportState {
    /// The device's virtio type.
    pub device_type: u32,
    /// The status register.
    pub status: u32,
    /// The features the driver accepted.
    pub driver_features: u64,
    /// The feature-word selectors and the queue selector.
    pub selectors: [u32; 3],
    /// ConfigGeneration.
    pub config_generation: u32,
    /// InterruptStatus.
    pub interrupt_status: u32,
    /// Whether the device was running (it may not be after a failed activation).
    pub active: bool,
    /// The queues, by index.
    pub queues: Vec<QueueState>,
}

/// A transport's snapshot state does not fit this device.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PersistError {
    /// Another device type, or another number of queues.
    #[error("the snapshot has a {found} here, the configuration a {expected}")]
    Device {
        /// What the configuration built.
        expected: String,
        /// What the snapshot holds.
        found: String,
    },
    /// A value no driver could have reached.
    #[error("{0}: {1}")]
    Invalid(String, String),
    /// The device did not start.
    #[error("{0}: resuming the device: {1}")]
    Activate(String, String),
    /// The used ring could not be read when saving.
    #[error("{0}: queue {1}: the used ring at {2:#x} is outside guest RAM")]
    UsedRing(String, usize, u64),
}

impl MmioTransport {
    /// Why this transport's device cannot be snapshotted now, if it cannot.
    pub fn snapshot_blocker(&self) -> Option<String> {
        self.device.snapshot_blocker()
    }

    /// Stops the device's worker, keeping every register, and returns the state to save. The
    /// vCPUs must be parked: nothing may notify the queues while this runs.
    pub fn quiesce(&mut self) -> Result<TransportState, PersistError> {
        let name = super::device_name(self.device.device_type());
        let active = self.active;
        if active {
            self.device.reset();
            self.active = false;
        }
        let mut queues = Vec::with_capacity(self.queues.len());
        for (i, q) in self.queues.iter().enumerate() {
            let next = if q.ready() && self.status == DeviceStatus::DriverOk {
                let at = GuestAddress(q.used_ring()).checked_add(2);
                at.and_then(|a| self.mem.read_obj::<u16>(a).ok())
                    .map(u16::from_le)
                    .ok_or_else(|| PersistError::UsedRing(name.clone(), i, q.used_ring()))?
            } else {
                0
            };
            queues.push(QueueState {
                size: q.size(),
                ready: q.ready(),
                rings: [q.desc_table(), q.avail_ring(), q.used_ring()],
                next,
            });
        }
        Ok(TransportState {
            device_type: self.device.device_type(),
            status: self.status.bits(),
            driver_features: self.driver_features,
            selectors: [
                self.device_features_sel,
                self.driver_features_sel,
                self.queue_sel,
            ],
            config_generation: self.config_generation,
            interrupt_status: self.interrupt.status(),
            active,
            queues,
        })
    }

    /// Puts `state` into this (fresh) transport and, if the driver had the device running,
    /// resumes the device on the saved queues.
    pub fn restore(&mut self, state: &TransportState) -> Result<(), PersistError> {
        self.begin_restore(state)?;
        self.finish_restore(state)
    }

    /// [`MmioTransport::restore`] up to the device's activation, which it begins and
    /// [`MmioTransport::finish_restore`] finishes: several devices' threads then build their
    /// backends at once.
    pub fn begin_restore(&mut self, state: &TransportState) -> Result<(), PersistError> {
        let name = super::device_name(self.device.device_type());
        let invalid = |why: String| PersistError::Invalid(name.clone(), why);
        if state.device_type != self.device.device_type() || state.queues.len() != self.queues.len()
        {
            return Err(PersistError::Device {
                expected: format!("{name} with {} queues", self.queues.len()),
                found: format!(
                    "{} with {} queues",
                    super::device_name(state.device_type),
                    state.queues.len()
                ),
            });
        }
        let status = DeviceStatus::from_bits(state.status)
            .ok_or_else(|| invalid(format!("status {:#x} is not a driver state", state.status)))?;
        let offered = self.device.features();
        let acked = state.driver_features;
        if acked & !offered != 0 || (acked != 0 && acked & (1 << VIRTIO_F_VERSION_1) == 0) {
            return Err(invalid(format!(
                "features {acked:#x} are not a subset of the offered {offered:#x}"
            )));
        }
        for (i, (q, saved)) in self.queues.iter_mut().zip(&state.queues).enumerate() {
            q.try_set_size(saved.size)
                .map_err(|_| invalid(format!("queue {i}: size {}", saved.size)))?;
            let [desc, avail, used] = saved.rings;
            let aligned = q.try_set_desc_table_address(GuestAddress(desc)).is_ok()
                && q.try_set_avail_ring_address(GuestAddress(avail)).is_ok()
                && q.try_set_used_ring_address(GuestAddress(used)).is_ok();
            if !aligned {
                return Err(invalid(format!(
                    "queue {i}: rings {desc:#x}/{avail:#x}/{used:#x} break their alignment"
                )));
            }
            q.set_next_avail(saved.next);
            q.set_next_used(saved.next);
            if saved.ready {
                q.set_ready(true);
                if !q.is_valid(&self.mem) {
                    q.set_ready(false);
                    return Err(invalid(format!(
                        "queue {i}: rings {desc:#x}/{avail:#x}/{used:#x} outside guest RAM"
                    )));
                }
            }
        }
        self.driver_features = acked;
        [
            self.device_features_sel,
            self.driver_features_sel,
            self.queue_sel,
        ] = state.selectors;
        self.config_generation = state.config_generation;
        self.announced = true;
        self.status = status;
        // Before the device resumes: what it raises from here on adds to the saved bits.
        self.interrupt.restore_status(state.interrupt_status);
        if state.active {
            if status != DeviceStatus::DriverOk {
                return Err(invalid(format!("running in driver state {status}")));
            }
            self.device.resuming_snapshot();
            self.begin_activation()
                .map_err(|e| PersistError::Activate(name.clone(), e.to_string()))?;
        }
        Ok(())
    }

    /// Waits for the device that [`MmioTransport::begin_restore`] resumed from `state`, if the
    /// driver had it running.
    pub fn finish_restore(&mut self, state: &TransportState) -> Result<(), PersistError> {
        if !state.active {
            return Ok(());
        }
        self.finish_activation().map_err(|e| {
            PersistError::Activate(super::device_name(self.device.device_type()), e.to_string())
        })
    }
}

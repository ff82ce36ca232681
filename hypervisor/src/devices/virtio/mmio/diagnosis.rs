//! A transport's state for diagnosis: what the control socket's `queues` request prints.
//!
//! When a guest stalls on a device, the question is who holds the ball: a queue whose
//! available index is ahead of its used index has requests the device has not completed (a
//! lost notification, or a stuck worker); equal indices with InterruptStatus still set mean
//! the guest has not taken the interrupt; equal indices and a clear status mean the device is
//! waiting for the guest. The ring indices are read from guest memory as it is now (the
//! device's worker owns the live queues), each read bounded to guest RAM. Each queue's line
//! ends with where its rings are (descriptor table / available / used, guest physical) and its
//! size.

use std::fmt;

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

use super::MmioTransport;
use crate::devices::virtio::{TYPE_FS, TYPE_NET, TYPE_VSOCK};
use crate::memory::GuestMemory;

/// One queue's rings as the guest memory holds them (`None`: not readable).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueSnapshot {
    /// The queue's size.
    pub size: u16,
    /// Whether the driver made it ready.
    pub ready: bool,
    /// `avail.idx`: requests the driver has posted.
    pub avail_idx: Option<u16>,
    /// `used.idx`: requests the device has completed.
    pub used_idx: Option<u16>,
    /// `avail.used_event` (EVENT_IDX): where the driver wants its next interrupt.
    pub used_event: Option<u16>,
    /// `used.avail_event` (EVENT_IDX): where the device wants its next notification.
    pub avail_event: Option<u16>,
    /// Where the driver put the descriptor table, available ring and used ring (guest
    /// physical addresses).
    pub rings: [u64; 3],
}

/// One device's transport.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransportSnapshot {
    /// The virtio device type.
    pub device_type: u32,
    /// The driver status state.
    pub status: String,
    /// Whether the device's worker runs.
    pub active: bool,
    /// The InterruptStatus register.
    pub interrupt_status: u32,
    /// Whether the device asked for a reset.
    pub needs_reset: bool,
    /// Its queues, by index.
    pub queues: Vec<QueueSnapshot>,
}

fn read_u16(mem: &GuestMemory, base: GuestAddress, offset: u64) -> Option<u16> {
    let addr = base.0.checked_add(offset)?;
    mem.read_obj::<u16>(GuestAddress(addr))
        .ok()
        .map(u16::from_le)
}

impl QueueSnapshot {
    /// Reads `q`'s ring indices from `mem` (split ring layout, virtio 1.2 section 2.7).
    pub fn of(q: &Queue, mem: &GuestMemory) -> Self {
        let size = u64::from(q.size());
        let (avail, used) = (GuestAddress(q.avail_ring()), GuestAddress(q.used_ring()));
        let ready = q.ready();
        let read = |base, offset| ready.then(|| read_u16(mem, base, offset)).flatten();
        QueueSnapshot {
            size: q.size(),
            ready,
            avail_idx: read(avail, 2),
            used_idx: read(used, 2),
            used_event: read(avail, 4 + 2 * size),
            avail_event: read(used, 4 + 8 * size),
            rings: [q.desc_table(), q.avail_ring(), q.used_ring()],
        }
    }
}

impl MmioTransport {
    /// The transport's state now.
    pub fn snapshot(&self) -> TransportSnapshot {
        TransportSnapshot {
            device_type: self.device.device_type(),
            status: format!("{:?}", self.status),
            active: self.active,
            interrupt_status: self.interrupt.status(),
            needs_reset: self.interrupt.needs_reset(),
            queues: self
                .queues
                .iter()
                .map(|q| QueueSnapshot::of(q, &self.mem))
                .collect(),
        }
    }
}

fn opt(v: Option<u16>) -> String {
    v.map_or_else(|| "-".into(), |v| v.to_string())
}

impl fmt::Display for TransportSnapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self.device_type {
            TYPE_NET => "net",
            TYPE_VSOCK => "vsock",
            TYPE_FS => "fs",
            _ => "virtio",
        };
        write!(
            f,
            "{name} status={} active={} isr={:#x}{}",
            self.status,
            self.active,
            self.interrupt_status,
            if self.needs_reset { " needs-reset" } else { "" }
        )?;
        for (i, q) in self.queues.iter().enumerate() {
            if !q.ready {
                write!(f, " q{i}=off")?;
                continue;
            }
            write!(
                f,
                " q{i}=avail:{},used:{},used_event:{},avail_event:{},rings:{:#x}/{:#x}/{:#x},size:{}",
                opt(q.avail_idx),
                opt(q.used_idx),
                opt(q.used_event),
                opt(q.avail_event),
                q.rings[0],
                q.rings[1],
                q.rings[2],
                q.size
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use vm_memory::Bytes;

    use super::*;
    use crate::devices::virtio::chain::testing::{memory, TestQueue};

    #[test]
    fn reads_the_ring_indices_the_guest_wrote() {
        let mem = memory();
        let tq = TestQueue::new(&mem, 0, 16);
        let q = tq.queue();
        mem.write_obj(7u16.to_le(), GuestAddress(q.avail_ring() + 2))
            .unwrap();
        mem.write_obj(5u16.to_le(), GuestAddress(q.used_ring() + 2))
            .unwrap();
        mem.write_obj(5u16.to_le(), GuestAddress(q.avail_ring() + 4 + 2 * 16))
            .unwrap();
        mem.write_obj(7u16.to_le(), GuestAddress(q.used_ring() + 4 + 8 * 16))
            .unwrap();
        let s = QueueSnapshot::of(&q, &mem);
        assert_eq!(
            s,
            QueueSnapshot {
                size: 16,
                ready: true,
                avail_idx: Some(7),
                used_idx: Some(5),
                used_event: Some(5),
                avail_event: Some(7),
                rings: [q.desc_table(), q.avail_ring(), q.used_ring()],
            }
        );
    }

    #[test]
    fn an_unready_queue_or_rings_outside_ram_read_as_unknown() {
        let mem = memory();
        let s = QueueSnapshot::of(&Queue::new(16).unwrap(), &mem);
        assert!(!s.ready);
        assert_eq!((s.avail_idx, s.used_idx), (None, None));
        let mut q = TestQueue::new(&mem, 0, 16).queue();
        // The ring addresses change only while the queue is not ready.
        q.set_ready(false);
        q.set_used_ring_address(Some(0xffff_f000), Some(u32::MAX));
        q.set_ready(true);
        let s = QueueSnapshot::of(&q, &mem);
        assert_eq!((s.used_idx, s.avail_event), (None, None));
    }

    #[test]
    fn prints_one_line_per_device() {
        let s = TransportSnapshot {
            device_type: TYPE_FS,
            status: "DriverOk".into(),
            active: true,
            interrupt_status: 1,
            needs_reset: false,
            queues: vec![
                QueueSnapshot {
                    size: 16,
                    ready: false,
                    avail_idx: None,
                    used_idx: None,
                    used_event: None,
                    avail_event: None,
                    rings: [0; 3],
                },
                QueueSnapshot {
                    size: 16,
                    ready: true,
                    avail_idx: Some(9),
                    used_idx: Some(8),
                    used_event: Some(8),
                    avail_event: None,
                    rings: [0x1000, 0x2000, 0x3000],
                },
            ],
        };
        assert_eq!(
            s.to_string(),
            "fs status=DriverOk active=true isr=0x1 q0=off \
             q1=avail:9,used:8,used_event:8,avail_event:-,rings:0x1000/0x2000/0x3000,size:16"
        );
    }
}

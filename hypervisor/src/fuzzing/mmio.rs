//! `mmio`: virtio-mmio register accesses of any width and offset on an [`MmioTransport`],
//! with a device that, once the driver sets DRIVER_OK, checks its queues and pops every chain.

use std::sync::Arc;

use virtio_queue::QueueT;
use vmm_sys_util::eventfd::EventFd;

use super::{memory, Input};
use crate::bus::BusDevice;
use crate::devices::virtio::chain::{pop_chain, Popped};
use crate::devices::virtio::interrupt::IrqfdInterrupt;
use crate::devices::virtio::mmio::{reg, MmioTransport, MAGIC};
use crate::devices::virtio::{
    read_config_window, ActivateError, Activation, VirtioDevice, VIRTIO_F_VERSION_1,
    VIRTIO_RING_F_EVENT_IDX,
};

/// A two-queue device with an 8-byte config space that uses its queues at activation.
#[derive(Debug)]
struct Probe {
    config: [u8; 8],
    active: bool,
}

impl VirtioDevice for Probe {
    fn device_type(&self) -> u32 {
        19
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[16, 8]
    }
    fn features(&self) -> u64 {
        (1 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_RING_F_EVENT_IDX) | 1
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_window(&self.config, offset, data);
    }
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        for (i, b) in data.iter().enumerate() {
            let at = usize::try_from(offset).ok().and_then(|o| o.checked_add(i));
            if let Some(slot) = at.and_then(|at| self.config.get_mut(at)) {
                *slot = *b;
            }
        }
    }
    fn begin_activation(&mut self, activation: Activation) -> Result<(), ActivateError> {
        if self.active {
            return Err(ActivateError::AlreadyActive);
        }
        let mut a = activation.into_queues::<2>()?;
        for q in &mut a.queues {
            for _ in 0..=16 {
                match pop_chain(q, &a.mem) {
                    Popped::Empty | Popped::Broken(_) => break,
                    Popped::Bad { head, .. } => {
                        let _ = q.add_used(&a.mem, head, 0);
                    }
                    Popped::Chain(c) => {
                        let _ = q.add_used(&a.mem, c.head(), 0);
                    }
                }
            }
        }
        self.active = true;
        Ok(())
    }
    fn reset(&mut self) {
        self.active = false;
    }
}

/// Input: `u8` whether the device refuses activation (bit 0), `le16` number of accesses (at
/// most 1024), the accesses, each `u8` kind (bit 7: write; bits 0-3: width, 4 for 0-7, 0 for
/// 8, else 1-7), `le16` offset (mod 0x200) and `le32` value; then guest RAM, where the queues
/// the driver sets up may find chains.
pub fn mmio(data: &[u8]) {
    let mut input = Input::new(data);
    let Some(mem) = memory() else { return };
    let Ok(irqfd) = EventFd::new(libc::EFD_NONBLOCK) else {
        return;
    };
    let evts: Result<Vec<EventFd>, _> = (0..2).map(|_| EventFd::new(libc::EFD_NONBLOCK)).collect();
    let Ok(evts) = evts else { return };
    let device = Probe {
        config: *b"husk\0cfg",
        active: input.u8() & 1 != 0,
    };
    let irq = Arc::new(IrqfdInterrupt::new(irqfd));
    let count = input.u16().min(1024);
    let accesses = input.bytes(7 * usize::from(count));
    input.fill_ram(&mem);
    let Ok(mut t) = MmioTransport::new(Box::new(device), mem, irq, evts) else {
        return;
    };
    let mut input = Input::new(accesses);
    while !input.is_empty() {
        let kind = input.u8();
        let offset = u64::from(input.u16() % 0x200);
        let value = input.u32().to_le_bytes();
        let width = match kind & 0xf {
            0..=7 => 4,
            8 => 0,
            w => usize::from(w - 8),
        };
        let mut bytes = [0u8; 8];
        bytes[..4].copy_from_slice(&value);
        if kind & 0x80 != 0 {
            t.write(offset, &bytes[..width]);
        } else {
            t.read(offset, &mut bytes[..width]);
            if offset == reg::MAGIC && width == 4 {
                assert_eq!(u32::from_le_bytes(value_of(&bytes)), MAGIC);
            }
        }
    }
    t.shutdown();
}

fn value_of(b: &[u8; 8]) -> [u8; 4] {
    [b[0], b[1], b[2], b[3]]
}

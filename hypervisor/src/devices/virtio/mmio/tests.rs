//! The transport's register state machine, driven the way Linux's virtio_mmio driver does,
//! with a device that records what it was asked.

use std::sync::{Arc, Mutex};

use virtio_queue::{QueueState, QueueT};
use vmm_sys_util::eventfd::EventFd;

use super::*;
use crate::devices::virtio::chain::testing::memory;
use crate::devices::virtio::interrupt::INT_CONFIG;
use crate::devices::virtio::ActivateError;

#[derive(Debug, Default)]
struct Record {
    activations: Vec<(u64, Vec<QueueState>)>,
    resets: usize,
}

#[derive(Debug)]
struct Dummy {
    record: Arc<Mutex<Record>>,
    fail: bool,
    config: [u8; 8],
}

impl VirtioDevice for Dummy {
    fn device_type(&self) -> u32 {
        19
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[16, 16]
    }
    fn features(&self) -> u64 {
        (1 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_RING_F_EVENT_IDX)
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = self.config.get(offset as usize + i).copied().unwrap_or(0);
        }
    }
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    fn begin_activation(&mut self, a: Activation) -> Result<(), ActivateError> {
        if self.fail {
            return Err(ActivateError::BadQueue {
                index: 0,
                why: "test",
            });
        }
        let states = a.queues.iter().map(|q| q.state()).collect();
        self.record
            .lock()
            .unwrap()
            .activations
            .push((a.acked_features, states));
        Ok(())
    }
    fn reset(&mut self) {
        self.record.lock().unwrap().resets += 1;
    }
}

struct Rig {
    t: MmioTransport,
    record: Arc<Mutex<Record>>,
    irq: Arc<IrqfdInterrupt>,
    evts: Vec<EventFd>,
}

fn rig(fail: bool) -> Rig {
    let record = Arc::new(Mutex::new(Record::default()));
    let dev = Dummy {
        record: record.clone(),
        fail,
        config: 3u64.to_le_bytes(),
    };
    let irq = Arc::new(IrqfdInterrupt::new(
        EventFd::new(libc::EFD_NONBLOCK).unwrap(),
    ));
    let evts: Vec<EventFd> = (0..2)
        .map(|_| EventFd::new(libc::EFD_NONBLOCK).unwrap())
        .collect();
    let theirs = evts.iter().map(|e| e.try_clone().unwrap()).collect();
    let t = MmioTransport::new(Box::new(dev), memory(), irq.clone(), theirs).unwrap();
    Rig {
        t,
        record,
        irq,
        evts,
    }
}

impl Rig {
    fn r(&mut self, off: u64) -> u32 {
        let mut b = [0u8; 4];
        self.t.read(off, &mut b);
        u32::from_le_bytes(b)
    }
    fn w(&mut self, off: u64, v: u32) {
        self.t.write(off, &v.to_le_bytes());
    }
    fn negotiate(&mut self, features: u64) {
        self.w(reg::STATUS, 0);
        self.w(reg::STATUS, 1);
        self.w(reg::STATUS, 3);
        self.w(reg::DRIVER_FEATURES_SEL, 0);
        self.w(reg::DRIVER_FEATURES, features as u32);
        self.w(reg::DRIVER_FEATURES_SEL, 1);
        self.w(reg::DRIVER_FEATURES, (features >> 32) as u32);
        self.w(reg::STATUS, 11);
    }
    fn setup_queue(&mut self, index: u32, base: u64) {
        self.w(reg::QUEUE_SEL, index);
        assert_eq!(self.r(reg::QUEUE_READY), 0);
        assert_eq!(self.r(reg::QUEUE_NUM_MAX), 16);
        self.w(reg::QUEUE_NUM, 16);
        self.w(reg::QUEUE_DESC_LOW, base as u32);
        self.w(reg::QUEUE_DESC_HIGH, 0);
        self.w(reg::QUEUE_AVAIL_LOW, (base + 0x100) as u32);
        self.w(reg::QUEUE_AVAIL_HIGH, 0);
        self.w(reg::QUEUE_USED_LOW, (base + 0x200) as u32);
        self.w(reg::QUEUE_USED_HIGH, 0);
        self.w(reg::QUEUE_READY, 1);
    }
}

const FEATURES: u64 = (1 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_RING_F_EVENT_IDX);

#[test]
fn identification_registers() {
    let mut r = rig(false);
    assert_eq!(r.r(reg::MAGIC), MAGIC);
    assert_eq!(r.r(reg::VERSION), 2);
    assert_eq!(r.r(reg::DEVICE_ID), 19);
    assert_eq!(r.r(reg::VENDOR_ID), VENDOR);
    r.w(reg::DEVICE_FEATURES_SEL, 0);
    assert_eq!(r.r(reg::DEVICE_FEATURES), 1 << VIRTIO_RING_F_EVENT_IDX);
    r.w(reg::DEVICE_FEATURES_SEL, 1);
    assert_eq!(
        r.r(reg::DEVICE_FEATURES),
        1,
        "VERSION_1 is bit 0 of the second word"
    );
    r.w(reg::DEVICE_FEATURES_SEL, 2);
    assert_eq!(r.r(reg::DEVICE_FEATURES), 0);
    let mut cfg = [0u8; 8];
    r.t.read(reg::CONFIG, &mut cfg);
    assert_eq!(u64::from_le_bytes(cfg), 3);
    r.w(reg::QUEUE_SEL, 5);
    assert_eq!(r.r(reg::QUEUE_NUM_MAX), 0, "no such queue");
}

#[test]
fn linux_init_sequence_activates_with_the_queues_as_configured() {
    let mut r = rig(false);
    r.negotiate(FEATURES);
    assert_eq!(r.r(reg::STATUS), 11, "FEATURES_OK kept");
    r.setup_queue(0, 0x1000);
    r.setup_queue(1, 0x2000);
    r.w(reg::STATUS, 15);
    assert_eq!(r.r(reg::STATUS), 15);
    assert!(r.t.is_active());
    let rec = r.record.lock().unwrap();
    let (features, queues) = &rec.activations[0];
    assert_eq!(*features, FEATURES);
    assert_eq!(queues[1].desc_table, 0x2000);
    assert_eq!(queues[1].avail_ring, 0x2100);
    assert_eq!(queues[1].used_ring, 0x2200);
    assert!(queues[0].ready && queues[0].event_idx_enabled);
}

#[test]
fn reset_stops_the_device_and_it_can_start_again() {
    let mut r = rig(false);
    r.negotiate(FEATURES);
    r.setup_queue(0, 0x1000);
    r.setup_queue(1, 0x2000);
    r.w(reg::STATUS, 15);
    use crate::devices::virtio::interrupt::{InterruptReason, VirtioInterrupt};
    r.irq.trigger(InterruptReason::UsedBuffer).unwrap();
    r.w(reg::STATUS, 0);
    assert_eq!(r.record.lock().unwrap().resets, 1);
    assert_eq!(r.r(reg::STATUS), 0);
    assert_eq!(r.r(reg::INTERRUPT_STATUS), 0);
    r.w(reg::QUEUE_SEL, 0);
    assert_eq!(r.r(reg::QUEUE_READY), 0, "queues are reset");
    r.negotiate(1 << VIRTIO_F_VERSION_1);
    r.setup_queue(0, 0x3000);
    r.setup_queue(1, 0x4000);
    r.w(reg::STATUS, 15);
    let rec = r.record.lock().unwrap();
    assert_eq!(rec.activations.len(), 2);
    assert_eq!(rec.activations[1].1[0].desc_table, 0x3000);
    assert!(!rec.activations[1].1[0].event_idx_enabled);
}

#[test]
fn out_of_order_status_writes_are_refused() {
    let mut r = rig(false);
    r.w(reg::STATUS, 15);
    assert_eq!(r.r(reg::STATUS), 0, "DRIVER_OK straight from reset");
    r.w(reg::STATUS, 1);
    r.w(reg::STATUS, 11);
    assert_eq!(r.r(reg::STATUS), 1, "FEATURES_OK before DRIVER");
    r.w(reg::STATUS, 3);
    r.w(reg::STATUS, 7);
    assert_eq!(r.r(reg::STATUS), 3, "DRIVER_OK before FEATURES_OK");
    assert!(r.record.lock().unwrap().activations.is_empty());
}

#[test]
fn features_not_offered_or_without_version_1_keep_features_ok_clear() {
    let mut r = rig(false);
    r.negotiate(FEATURES | 1 << 5);
    assert_eq!(r.r(reg::STATUS), 3, "unoffered bit 5");
    r.negotiate(1 << VIRTIO_RING_F_EVENT_IDX);
    assert_eq!(r.r(reg::STATUS), 3, "no VERSION_1");
    r.negotiate(FEATURES);
    assert_eq!(r.r(reg::STATUS), 11);
    r.w(reg::DRIVER_FEATURES, 0);
    assert_eq!(
        r.t.driver_features, FEATURES,
        "features are locked after FEATURES_OK"
    );
}

#[test]
fn bad_queue_settings_are_refused() {
    let mut r = rig(false);
    r.w(reg::QUEUE_SEL, 0);
    r.w(reg::QUEUE_NUM, 8);
    assert_eq!(
        r.t.queues[0].size(),
        16,
        "queue registers before FEATURES_OK"
    );
    r.negotiate(FEATURES);
    for bad in [0, 3, 32, 1 << 16] {
        r.w(reg::QUEUE_NUM, bad);
        assert_eq!(r.t.queues[0].size(), 16, "size {bad}");
    }
    r.w(reg::QUEUE_DESC_LOW, 0x1008);
    assert_eq!(
        r.t.queues[0].desc_table(),
        0,
        "descriptor table must be 16-byte aligned"
    );
    r.w(reg::QUEUE_USED_LOW, 0x1002);
    assert_eq!(
        r.t.queues[0].used_ring(),
        0,
        "used ring must be 4-byte aligned"
    );
    // Rings past the end of guest RAM (1 MiB): ready is refused.
    r.w(reg::QUEUE_DESC_LOW, 0x000f_fff0);
    r.w(reg::QUEUE_READY, 1);
    assert_eq!(r.r(reg::QUEUE_READY), 0);
    r.w(reg::QUEUE_DESC_HIGH, 1);
    r.w(reg::QUEUE_READY, 1);
    assert_eq!(r.r(reg::QUEUE_READY), 0, "above 4 GiB, no RAM");
    r.setup_queue(0, 0x1000);
    assert_eq!(r.r(reg::QUEUE_READY), 1);
    r.w(reg::QUEUE_NUM, 8);
    assert_eq!(r.t.queues[0].size(), 16, "a ready queue is locked");
}

#[test]
fn odd_accesses_are_ignored_and_notify_falls_back_to_the_eventfd() {
    let mut r = rig(false);
    r.t.write(reg::STATUS, &[1]);
    r.t.write(reg::STATUS + 2, &1u32.to_le_bytes());
    assert_eq!(r.r(reg::STATUS), 0);
    let mut two = [0xffu8; 2];
    r.t.read(reg::MAGIC, &mut two);
    assert_eq!(two, [0, 0]);
    r.w(reg::QUEUE_NOTIFY, 1);
    assert_eq!(r.evts[1].read().unwrap(), 1);
    r.w(reg::QUEUE_NOTIFY, 99);
    assert!(r.evts[0].read().is_err());
}

#[test]
fn interrupt_status_and_ack() {
    let mut r = rig(false);
    use crate::devices::virtio::interrupt::{InterruptReason, VirtioInterrupt};
    r.irq.trigger(InterruptReason::UsedBuffer).unwrap();
    r.irq.trigger(InterruptReason::ConfigChange).unwrap();
    assert_eq!(r.r(reg::INTERRUPT_STATUS), 3);
    r.w(reg::INTERRUPT_ACK, 1);
    assert_eq!(r.r(reg::INTERRUPT_STATUS), 2);
    assert_eq!(r.irq.irqfd().read().unwrap(), 2);
}

#[test]
fn a_device_that_cannot_start_asks_for_a_reset() {
    let mut r = rig(true);
    r.negotiate(FEATURES);
    r.setup_queue(0, 0x1000);
    r.setup_queue(1, 0x2000);
    r.w(reg::STATUS, 15);
    assert!(!r.t.is_active());
    assert_eq!(r.r(reg::STATUS), 15 | status::NEEDS_RESET);
    assert_ne!(r.r(reg::INTERRUPT_STATUS) & INT_CONFIG, 0);
    r.w(reg::STATUS, 0);
    assert_eq!(r.r(reg::STATUS), 0, "reset clears NEEDS_RESET");
}

#[test]
fn shutdown_drops_the_device() {
    let mut r = rig(false);
    r.t.shutdown();
    assert_eq!(r.r(reg::DEVICE_ID), 0);
    assert_eq!(r.record.lock().unwrap().resets, 0, "it was never active");
}

/// A running transport whose device completed `used` chains on queue 1, quiesced.
fn quiesced(used: u16) -> (Rig, TransportState) {
    use vm_memory::{Bytes, GuestAddress};
    let mut r = rig(false);
    r.negotiate(FEATURES);
    r.setup_queue(0, 0x1000);
    r.setup_queue(1, 0x2000);
    r.w(reg::STATUS, 15);
    r.t.mem
        .write_obj(used.to_le(), GuestAddress(0x2200 + 2))
        .unwrap();
    crate::devices::virtio::interrupt::VirtioInterrupt::trigger(
        r.irq.as_ref(),
        crate::devices::virtio::interrupt::InterruptReason::UsedBuffer,
    )
    .unwrap();
    let state = r.t.quiesce().unwrap();
    (r, state)
}

#[test]
fn a_quiesced_transport_resumes_in_a_fresh_one_where_its_queues_were() {
    let (r, state) = quiesced(5);
    assert_eq!(r.record.lock().unwrap().resets, 1, "the worker stopped");
    assert!(!r.t.is_active());
    assert_eq!((state.queues[0].next, state.queues[1].next), (0, 5));
    assert_eq!(state.interrupt_status, 1);
    let json = serde_json::to_string(&state).unwrap();
    let state: TransportState = serde_json::from_str(&json).unwrap();

    let mut fresh = rig(false);
    fresh.t.restore(&state).unwrap();
    assert!(fresh.t.is_active());
    assert_eq!(fresh.r(reg::STATUS), 15);
    assert_eq!(
        fresh.r(reg::INTERRUPT_STATUS),
        1,
        "the pending interrupt is kept"
    );
    let rec = fresh.record.lock().unwrap();
    let (features, queues) = &rec.activations[0];
    assert_eq!(*features, FEATURES);
    assert_eq!((queues[1].next_avail, queues[1].next_used), (5, 5));
    assert_eq!(queues[1].used_ring, 0x2200);
    assert!(queues[1].ready && queues[1].event_idx_enabled);
}

#[test]
fn a_state_of_another_device_or_with_values_no_driver_could_write_is_refused() {
    let (_, good) = quiesced(0);
    let refused = |edit: &dyn Fn(&mut TransportState)| {
        let mut s = good.clone();
        edit(&mut s);
        let mut fresh = rig(false);
        let e = fresh.t.restore(&s).unwrap_err().to_string();
        assert!(!fresh.t.is_active(), "{e}");
        e
    };
    let e = refused(&|s| s.device_type = 1);
    assert!(e.contains("virtio-net with 2 queues"), "{e}");
    let e = refused(&|s| s.queues.pop().map(drop).unwrap_or(()));
    assert!(e.contains("with 1 queues"), "{e}");
    let e = refused(&|s| s.status = 5);
    assert!(e.contains("status 0x5"), "{e}");
    let e = refused(&|s| s.driver_features |= 1 << 40);
    assert!(e.contains("not a subset"), "{e}");
    let e = refused(&|s| s.queues[0].size = 3);
    assert!(e.contains("size 3"), "{e}");
    let e = refused(&|s| s.queues[0].rings[0] = 0x1001);
    assert!(e.contains("alignment"), "{e}");
    let e = refused(&|s| s.queues[1].rings[2] = 0x7fff_f000);
    assert!(e.contains("outside guest RAM"), "{e}");
    let e = refused(&|s| s.status = 0x3);
    assert!(e.contains("running in driver state"), "{e}");
}

#[test]
fn quiesce_refuses_a_used_ring_outside_ram_by_name() {
    let mut r = rig(false);
    r.negotiate(FEATURES);
    r.setup_queue(0, 0x1000);
    r.setup_queue(1, 0x2000);
    r.w(reg::STATUS, 15);
    // Only the driver's checked writes can place rings; a hostile guest cannot get one past
    // the end of RAM, so reach in as a corrupt snapshot would.
    r.t.queues[1].set_ready(false);
    r.t.queues[1].set_used_ring_address(Some(0xffff_fff0), Some(0));
    r.t.queues[1].set_ready(true);
    let e = r.t.quiesce().unwrap_err().to_string();
    assert!(e.contains("queue 1: the used ring at 0xfffffff0"), "{e}");
}

//! The device as the transport sees it: config space, queue counts by feature, and a real
//! worker that drops reported pages.

use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddress};

use super::*;
use crate::devices::virtio::chain::testing::TestQueue;
use crate::devices::virtio::interrupt::{FakeInterrupt, InterruptReason};
use crate::devices::virtio::testing::{activation, wait_for};
use crate::memory::GuestMemory;

#[test]
fn config_space_asks_for_nothing_and_keeps_actual() {
    let mut dev = VirtioBalloon::new();
    assert_eq!(dev.device_type(), 5);
    assert_eq!(dev.queue_max_sizes().len(), 3);
    let f = dev.features();
    for bit in [
        VIRTIO_F_VERSION_1,
        VIRTIO_BALLOON_F_REPORTING,
        VIRTIO_BALLOON_F_DEFLATE_ON_OOM,
    ] {
        assert_ne!(f & (1 << bit), 0, "feature {bit}");
    }
    dev.write_config(0, &7u32.to_le_bytes());
    dev.write_config(ACTUAL_OFFSET, &[1, 2]);
    dev.write_config(ACTUAL_OFFSET, &9u32.to_le_bytes());
    let mut c = [0xffu8; 12];
    dev.read_config(0, &mut c);
    assert_eq!(&c[..4], &[0; 4], "num_pages is the host's and stays 0");
    assert_eq!(&c[4..8], &9u32.to_le_bytes());
    assert_eq!(&c[8..], &[0; 4]);
    dev.reset();
    dev.read_config(ACTUAL_OFFSET, &mut c[..4]);
    assert_eq!(&c[..4], &[0; 4]);
}

#[test]
fn without_reporting_two_queues_are_enough() {
    let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
    let irq = Arc::new(FakeInterrupt::default());
    let qs: Vec<TestQueue> = (0..3)
        .map(|i| TestQueue::new(&mem, 0x1000 * i, 16))
        .collect();
    let mut dev = VirtioBalloon::new();
    let base = 1 << VIRTIO_F_VERSION_1;
    let queues = || {
        let mut unready = qs[2].queue();
        unready.set_ready(false);
        vec![qs[0].queue(), qs[1].queue(), unready]
    };
    let with_reporting = base | (1 << VIRTIO_BALLOON_F_REPORTING);
    let (a, _e) = activation(&mem, queues(), &irq, with_reporting);
    assert!(matches!(
        dev.activate(a),
        Err(ActivateError::BadQueue { index: 2, .. })
    ));
    let (a, _e) = activation(&mem, queues(), &irq, base);
    dev.activate(a).unwrap();
    assert!(dev.is_active());
    dev.reset();
    assert!(!dev.is_active());
}

#[test]
fn a_worker_drops_reported_pages() {
    let mem = crate::memory::create(&[(0, 4 << 20)]).unwrap();
    let irq = Arc::new(FakeInterrupt::default());
    let mut rq = TestQueue::new(&mem, 0x2000, 16);
    let queues = vec![
        TestQueue::new(&mem, 0, 16).queue(),
        TestQueue::new(&mem, 0x1000, 16).queue(),
        rq.queue(),
    ];
    let acked = (1 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_BALLOON_F_REPORTING);
    let (a, evts) = activation(&mem, queues, &irq, acked);
    let mut dev = VirtioBalloon::new();
    dev.activate(a).unwrap();
    mem.write_slice(&[0x5a; 0x2000], GuestAddress(0x10_0000))
        .unwrap();
    rq.add(&[(0x10_0000, 0x2000, true)]);
    evts[REPORTING_QUEUE].write(1).unwrap();
    wait_for("the used buffer's interrupt", || {
        irq.count(InterruptReason::UsedBuffer) > 0
    });
    assert_eq!(rq.used().len(), 1);
    let mut back = [0xffu8; 0x2000];
    mem.read_slice(&mut back, GuestAddress(0x10_0000)).unwrap();
    assert!(
        back.iter().all(|&b| b == 0),
        "the reported run reads as zeros"
    );
    assert_eq!(dev.stats().reported.load(Ordering::Relaxed), 0x2000);
    dev.reset();
}

//! The device as the transport sees it: config space, queue checks, and activation, reset and
//! re-activation with a real worker thread serving FUSE.

use std::sync::Arc;

use fuse_backend_rs::abi::fuse_abi::{InitIn, Opcode};
use husk_protocol::vm_config::{FsCache, FsShare};
use virtio_queue::QueueT;
use vm_memory::{ByteValued, Bytes};

use super::*;
use crate::devices::virtio::chain::testing::{memory, TestQueue};
use crate::devices::virtio::fs::handler;
use crate::devices::virtio::fs::handler::tests::request;
use crate::devices::virtio::fs::REQUEST_QUEUE;
use crate::devices::virtio::interrupt::{FakeInterrupt, InterruptReason};
use crate::devices::virtio::testing::{activation, wait_for};

fn device(dir: &std::path::Path, tag: &str) -> VirtioFs {
    VirtioFs::new(&FsShare {
        tag: tag.into(),
        path: dir.to_path_buf(),
        cache: FsCache::Auto,
    })
    .unwrap()
}

#[test]
fn config_space_is_the_tag_then_one_request_queue() {
    let dir = tempfile::tempdir().unwrap();
    let dev = device(dir.path(), "husk");
    assert_eq!(dev.device_type(), 26);
    assert_eq!(dev.queue_max_sizes(), &[QUEUE_SIZE, QUEUE_SIZE]);
    assert_ne!(dev.features() & (1 << VIRTIO_F_VERSION_1), 0);
    let mut all = [0xffu8; CONFIG_LEN + 4];
    dev.read_config(0, &mut all);
    assert_eq!(&all[..4], b"husk");
    assert!(all[4..TAG_LEN].iter().all(|b| *b == 0), "NUL-padded");
    assert_eq!(&all[TAG_LEN..CONFIG_LEN], &1u32.to_le_bytes());
    assert_eq!(&all[CONFIG_LEN..], &[0; 4], "past the end reads as zero");
    let mut queues = [0u8; 4];
    dev.read_config(TAG_LEN as u64, &mut queues);
    assert_eq!(u32::from_le_bytes(queues), 1);
    dev.read_config(u64::MAX, &mut queues);
    assert_eq!(queues, [0; 4]);

    let long = "x".repeat(TAG_LEN);
    let mut full = [0u8; TAG_LEN];
    device(dir.path(), &long).read_config(0, &mut full);
    assert_eq!(&full[..], long.as_bytes(), "a 36-byte tag has no NUL");
}

#[test]
fn a_share_must_be_a_directory() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("f");
    std::fs::write(&file, b"").unwrap();
    for path in [file, dir.path().join("missing")] {
        let share = FsShare {
            tag: "t".into(),
            path,
            cache: FsCache::Never,
        };
        assert!(matches!(VirtioFs::new(&share), Err(FsError::Share { .. })));
    }
}

#[test]
fn wrong_queues_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mem = memory();
    let irq = Arc::new(FakeInterrupt::default());
    let mut dev = device(dir.path(), "husk");
    let q = TestQueue::new(&mem, 0, 16);
    let (a, _e) = activation(&mem, vec![q.queue()], &irq, 1 << VIRTIO_F_VERSION_1);
    assert!(matches!(
        dev.activate(a),
        Err(ActivateError::QueueCount { expected: 2, .. })
    ));
    let mut not_ready = q.queue();
    not_ready.set_ready(false);
    let (a, _e) = activation(
        &mem,
        vec![q.queue(), not_ready],
        &irq,
        1 << VIRTIO_F_VERSION_1,
    );
    assert!(matches!(
        dev.activate(a),
        Err(ActivateError::BadQueue { index: 1, .. })
    ));
    assert!(!dev.is_active());
}

/// Activation starts a worker that answers FUSE INIT from the request queue; reset stops it;
/// a second activation (fresh queues, as after a driver reset) works again.
#[test]
fn activate_serve_reset_and_activate_again() {
    let dir = tempfile::tempdir().unwrap();
    let mem = memory();
    let mut dev = device(dir.path(), "husk");
    for round in 0..2 {
        // Fresh queue memory each round, as a driver sets its queues up again after a reset.
        let base = 0x2_0000 * (round + 1);
        let hq = TestQueue::new(&mem, base, 16);
        let mut rq = TestQueue::new(&mem, base + 0x1000, 16);
        let irq = Arc::new(FakeInterrupt::default());
        let (a, evts) = activation(
            &mem,
            vec![hq.queue(), rq.queue()],
            &irq,
            1 << VIRTIO_F_VERSION_1,
        );
        dev.activate(a).unwrap();
        assert!(dev.is_active());
        let (again, _e) = activation(
            &mem,
            vec![hq.queue(), rq.queue()],
            &irq,
            1 << VIRTIO_F_VERSION_1,
        );
        assert!(matches!(
            dev.activate(again),
            Err(ActivateError::AlreadyActive)
        ));

        let init = InitIn {
            major: 7,
            minor: 31,
            max_readahead: 0,
            flags: 0,
        };
        let req = request(Opcode::Init as u32, 1, 0, init.as_slice());
        let req_at = base + 0x8000;
        let reply_at = base + 0x9000;
        mem.write_slice(&req, vm_memory::GuestAddress(req_at))
            .unwrap();
        let head = rq.add(&[(req_at, req.len() as u32, false), (reply_at, 4096, true)]);
        evts[REQUEST_QUEUE].write(1).unwrap();
        wait_for("the INIT reply", || !rq.used().is_empty());
        let (id, len) = rq.used()[0];
        assert_eq!(id, u32::from(head));
        assert!(
            len as usize > handler::OUT_HEADER_LEN,
            "round {round}: {len}"
        );
        wait_for("the interrupt", || {
            irq.count(InterruptReason::UsedBuffer) == 1
        });

        dev.reset();
        assert!(!dev.is_active());
    }
}

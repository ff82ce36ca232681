//! Queue processing on fake guest memory with a fake interrupt: good packets, and the
//! malformed-input table, each case with the outcome it must have.

use std::collections::VecDeque;
use std::sync::Arc;

use vm_memory::{Bytes, GuestAddress};

use super::*;
use crate::devices::virtio::chain::testing::{memory, TestQueue};
use crate::devices::virtio::interrupt::FakeInterrupt;
use crate::devices::virtio::vsock::defs::{op, HOST_CID, TYPE_STREAM};
use crate::devices::virtio::vsock::packet::VsockHeader;

const RX_BASE: u64 = 0;
const TX_BASE: u64 = 0x1000;
const QSIZE: u16 = 64;

#[derive(Debug, Default)]
struct Fake {
    sent: Vec<(VsockHeader, Vec<u8>)>,
    owed: VecDeque<(VsockHeader, Vec<u8>)>,
}

impl VsockBackend for Fake {
    fn send_pkt(&mut self, hdr: &VsockHeader, data: &[u8]) -> Result<(), MuxerError> {
        self.sent.push((*hdr, data.to_vec()));
        Ok(())
    }
    fn recv_pkt(&mut self, buf: &mut [u8]) -> Option<VsockHeader> {
        let (mut hdr, data) = self.owed.pop_front()?;
        let n = data.len().min(buf.len());
        buf[..n].copy_from_slice(&data[..n]);
        hdr.len = n as u32;
        Some(hdr)
    }
    fn has_pending_rx(&self) -> bool {
        !self.owed.is_empty()
    }
}

pub(crate) fn hdr(op_: u16, len: u32) -> VsockHeader {
    VsockHeader {
        src_cid: 3,
        dst_cid: HOST_CID,
        src_port: 1025,
        dst_port: 52,
        len,
        type_: TYPE_STREAM,
        op: op_,
        flags: 0,
        buf_alloc: 65536,
        fwd_cnt: 0,
    }
}

pub(crate) struct Rig<'a, B> {
    pub mem: &'a GuestMemory,
    pub rxq: TestQueue<'a>,
    pub txq: TestQueue<'a>,
    pub irq: Arc<FakeInterrupt>,
    pub dev: VsockQueues<B>,
    next_buf: u64,
}

impl<'a, B: VsockBackend> Rig<'a, B> {
    pub fn new(mem: &'a GuestMemory, backend: B) -> Self {
        let rxq = TestQueue::new(mem, RX_BASE, QSIZE);
        let txq = TestQueue::new(mem, TX_BASE, QSIZE);
        let irq = Arc::new(FakeInterrupt::default());
        let dev = VsockQueues::new(mem.clone(), rxq.queue(), txq.queue(), irq.clone(), backend);
        Rig {
            mem,
            rxq,
            txq,
            irq,
            dev,
            next_buf: 0x1_0000,
        }
    }

    fn alloc(&mut self, len: u64) -> u64 {
        let at = self.next_buf;
        self.next_buf += len.next_multiple_of(0x100).max(0x100);
        assert!(self.next_buf < 1 << 20, "test memory exhausted");
        at
    }

    /// Queues a well-formed TX packet (header and payload in two descriptors).
    pub fn send(&mut self, h: VsockHeader, payload: &[u8]) -> u16 {
        let at = self.alloc(44 + payload.len() as u64);
        self.mem
            .write_slice(&h.to_bytes(), GuestAddress(at))
            .unwrap();
        self.mem
            .write_slice(payload, GuestAddress(at + 44))
            .unwrap();
        self.txq
            .add(&[(at, 44, false), (at + 44, payload.len() as u32, false)])
    }

    /// Queues an RX buffer of a header plus `room` bytes; returns its address.
    pub fn rx_buffer(&mut self, room: u32) -> u64 {
        let at = self.alloc(44 + u64::from(room));
        self.rxq.add(&[(at, 44, true), (at + 44, room, true)]);
        at
    }

    /// The packet the device wrote at `at`.
    pub fn read_rx(&self, at: u64) -> (VsockHeader, Vec<u8>) {
        let mut raw = [0u8; 44];
        self.mem.read_slice(&mut raw, GuestAddress(at)).unwrap();
        let h = VsockHeader::from_bytes(&raw);
        let mut data = vec![0u8; h.len as usize];
        self.mem
            .read_slice(&mut data, GuestAddress(at + 44))
            .unwrap();
        (h, data)
    }

    pub fn bytes_at(&mut self, bytes: &[u8]) -> u64 {
        let at = self.alloc(bytes.len() as u64);
        self.mem.write_slice(bytes, GuestAddress(at)).unwrap();
        at
    }
}

#[test]
fn tx_packets_reach_the_backend_and_their_chains_come_back() {
    let mem = memory();
    let mut r = Rig::new(&mem, Fake::default());
    let a = r.send(hdr(op::REQUEST, 0), &[]);
    let b = r.send(hdr(op::RW, 3), b"abc");
    assert!(r.dev.process_tx().is_empty());
    assert_eq!(r.dev.backend().sent.len(), 2);
    assert_eq!(r.dev.backend().sent[1].1, b"abc");
    assert_eq!(r.txq.used(), vec![(u32::from(a), 0), (u32::from(b), 0)]);
    assert_eq!(
        r.irq.count(InterruptReason::UsedBuffer),
        1,
        "one interrupt per batch"
    );
}

type Case = (
    &'static str,
    fn(&mut Rig<Fake>) -> u16,
    fn(&VsockFault) -> bool,
);

/// Malformed TX chains: each is returned unused with a fault naming the problem, the backend
/// never sees it, and a good packet queued after it still goes through.
#[test]
fn malformed_tx_chains_are_dropped_and_the_device_goes_on() {
    use crate::devices::virtio::chain::ChainError as C;
    use virtio_bindings::bindings::virtio_ring::VRING_DESC_F_NEXT;
    let cases: Vec<Case> = vec![
        (
            "descriptor outside guest RAM",
            |r| {
                let at = r.bytes_at(&hdr(op::RW, 8).to_bytes());
                r.txq.add(&[(at, 44, false), (0xffff_0000, 8, false)])
            },
            |f| {
                matches!(
                    f,
                    VsockFault::Packet(PacketError::Chain(C::OutsideRam { .. }))
                )
            },
        ),
        (
            "chain that loops",
            |r| {
                let at = r.bytes_at(&hdr(op::RW, 8).to_bytes());
                let next = VRING_DESC_F_NEXT as u16;
                r.txq.store(40, at, 44, next, 41);
                r.txq.store(41, at, 8, next, 40);
                r.txq.publish(40);
                40
            },
            |f| {
                matches!(
                    f,
                    VsockFault::Packet(PacketError::Chain(C::Unterminated { walked: 64, .. }))
                )
            },
        ),
        (
            "chain longer than the queue (next index past the table)",
            |r| {
                let at = r.bytes_at(&hdr(op::RW, 0).to_bytes());
                r.txq.store(40, at, 44, VRING_DESC_F_NEXT as u16, 500);
                r.txq.publish(40);
                40
            },
            |f| {
                matches!(
                    f,
                    VsockFault::Packet(PacketError::Chain(C::Unterminated { .. }))
                )
            },
        ),
        (
            "device-writable buffer in a TX chain",
            |r| {
                let at = r.bytes_at(&hdr(op::RW, 4).to_bytes());
                let data = r.bytes_at(b"data");
                r.txq.add(&[(at, 44, false), (data, 4, true)])
            },
            |f| {
                matches!(
                    f,
                    VsockFault::Packet(PacketError::WrongDirection { queue: "TX", .. })
                )
            },
        ),
        (
            "chain shorter than a header",
            |r| {
                let at = r.bytes_at(&[0u8; 20]);
                r.txq.add(&[(at, 20, false)])
            },
            |f| {
                matches!(
                    f,
                    VsockFault::Packet(PacketError::HeaderTooShort { len: 20, .. })
                )
            },
        ),
        (
            "header length larger than the buffer",
            |r| {
                let at = r.bytes_at(&hdr(op::RW, 100).to_bytes());
                let data = r.bytes_at(&[1u8; 10]);
                r.txq.add(&[(at, 44, false), (data, 10, false)])
            },
            |f| {
                matches!(
                    f,
                    VsockFault::Packet(PacketError::LengthMismatch {
                        header_len: 100,
                        buffer_len: 10,
                        ..
                    })
                )
            },
        ),
        (
            "oversized packet",
            |r| {
                let at = r.bytes_at(&hdr(op::RW, 200_000).to_bytes());
                r.txq.add(&[(at, 44, false), (0x2_0000, 200_000, false)])
            },
            |f| {
                matches!(
                    f,
                    VsockFault::Packet(PacketError::Oversized { len: 200_000, .. })
                )
            },
        ),
    ];
    for (name, build, want) in cases {
        let mem = memory();
        let mut r = Rig::new(&mem, Fake::default());
        let bad = build(&mut r);
        let good = r.send(hdr(op::RW, 2), b"ok");
        let faults = r.dev.process_tx();
        assert_eq!(faults.len(), 1, "{name}: {faults:?}");
        assert!(want(&faults[0]), "{name}: {}", faults[0]);
        assert!(!r.dev.is_broken(), "{name}");
        assert_eq!(
            r.txq.used(),
            vec![(u32::from(bad), 0), (u32::from(good), 0)],
            "{name}"
        );
        let sent = &r.dev.backend().sent;
        assert_eq!(sent.len(), 1, "{name}: only the good packet");
        assert_eq!(sent[0].1, b"ok", "{name}");
        assert_eq!(r.irq.count(InterruptReason::NeedsReset), 0, "{name}");
    }
}

/// Chains that cannot even be returned break the device: NEEDS_RESET is raised and the queues
/// are left alone until the driver resets the device.
#[test]
fn unreturnable_chains_mark_the_device_broken() {
    let mem = memory();
    let mut r = Rig::new(&mem, Fake::default());
    r.txq.publish(QSIZE + 5);
    r.send(hdr(op::RW, 2), b"ok");
    let faults = r.dev.process_tx();
    assert!(
        matches!(faults[..], [VsockFault::Broken { queue: "tx", .. }]),
        "{faults:?}"
    );
    assert!(r.dev.is_broken());
    assert_eq!(r.irq.count(InterruptReason::NeedsReset), 1);
    assert!(r.dev.process_tx().is_empty() && r.dev.process_rx().is_empty());
    assert!(r.dev.backend().sent.is_empty() && r.txq.used().is_empty());

    let mem = memory();
    let mut r = Rig::new(&mem, Fake::default());
    r.send(hdr(op::RW, 2), b"ok");
    r.txq.set_avail_idx(QSIZE + 1);
    let faults = r.dev.process_tx();
    assert!(
        matches!(faults[..], [VsockFault::Broken { .. }]),
        "{faults:?}"
    );
    assert!(
        faults[0].to_string().contains("available ring index"),
        "{}",
        faults[0]
    );
    assert!(r.dev.is_broken());
}

#[test]
fn rx_fills_buffers_in_order_and_waits_for_more() {
    let mem = memory();
    let mut fake = Fake::default();
    fake.owed.push_back((hdr(op::RESPONSE, 0), vec![]));
    fake.owed
        .push_back((hdr(op::RW, 0), b"0123456789".to_vec()));
    let mut r = Rig::new(&mem, fake);
    let first = r.rx_buffer(4096);
    assert!(r.dev.process_rx().is_empty());
    assert_eq!(r.rxq.used(), vec![(0, 44)]);
    assert_eq!(r.read_rx(first).0.op, op::RESPONSE);
    assert!(
        r.dev.backend().has_pending_rx(),
        "the second waits for a buffer"
    );
    let second = r.rx_buffer(4);
    r.dev.process_rx();
    let (h, data) = r.read_rx(second);
    assert_eq!(
        (h.op, h.len, data.as_slice()),
        (op::RW, 4, &b"0123"[..]),
        "payload capped at the room"
    );
    assert_eq!(r.rxq.used()[1].1, 48);
    assert_eq!(r.irq.count(InterruptReason::UsedBuffer), 2);
}

#[test]
fn bad_rx_buffers_are_returned_empty_and_the_packet_waits() {
    let mem = memory();
    let mut fake = Fake::default();
    fake.owed.push_back((hdr(op::RW, 0), b"xyz".to_vec()));
    let mut r = Rig::new(&mem, fake);
    let ro = r.bytes_at(&[0u8; 64]);
    r.rxq.add(&[(ro, 64, false)]);
    let small = r.bytes_at(&[0u8; 16]);
    r.rxq.add(&[(small, 16, true)]);
    let good = r.rx_buffer(64);
    let faults = r.dev.process_rx();
    assert!(matches!(
        faults[0],
        VsockFault::Packet(PacketError::WrongDirection { queue: "RX", .. })
    ));
    assert!(matches!(
        faults[1],
        VsockFault::Packet(PacketError::HeaderTooShort { len: 16, .. })
    ));
    assert_eq!(r.rxq.used(), vec![(0, 0), (1, 0), (2, 47)]);
    assert_eq!(r.read_rx(good).1, b"xyz");
    assert!(!r.dev.is_broken());
}

#[test]
fn nothing_owed_leaves_rx_buffers_alone() {
    let mem = memory();
    let mut r = Rig::new(&mem, Fake::default());
    r.rx_buffer(64);
    assert!(r.dev.process_rx().is_empty());
    assert!(r.rxq.used().is_empty());
    assert_eq!(r.irq.count(InterruptReason::UsedBuffer), 0);
}

//! Queue processing on fake guest memory with a fake interrupt and an in-memory tap: round
//! trips both ways (one buffer, mergeable buffers), back-pressure both ways, offloads and
//! notification suppression. The malformed-input table is in `malformed`.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::Mutex;

use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_HOST_TSO4,
    VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_TCPV4,
};
use vm_memory::Bytes;

use super::*;
use crate::devices::virtio::chain::testing::{memory, TestQueue};
use crate::devices::virtio::interrupt::FakeInterrupt;

mod malformed;

const RX_BASE: u64 = 0;
const TX_BASE: u64 = 0x1000;
const QSIZE: u16 = 64;

/// Everything a Linux driver acks of what the device offers (features that matter here).
pub(crate) const OFFLOADS: u64 = (1 << VIRTIO_NET_F_MRG_RXBUF)
    | (1 << VIRTIO_NET_F_CSUM)
    | (1 << VIRTIO_NET_F_GUEST_CSUM)
    | (1 << VIRTIO_NET_F_HOST_TSO4)
    | (1 << VIRTIO_NET_F_GUEST_TSO4);

/// An in-memory tap: frames queued for the guest, frames the guest sent, and a switch that
/// makes writes fail with EAGAIN.
#[derive(Debug, Default)]
pub(crate) struct MemTap {
    pub incoming: Mutex<VecDeque<Vec<u8>>>,
    pub written: Mutex<Vec<Vec<u8>>>,
    pub full: AtomicBool,
    pub reads: AtomicUsize,
    pub offload: Mutex<Option<u32>>,
}

impl MemTap {
    fn push(&self, frame: Vec<u8>) {
        self.incoming.lock().unwrap().push_back(frame);
    }
    fn written(&self) -> Vec<Vec<u8>> {
        self.written.lock().unwrap().clone()
    }
    fn reads(&self) -> usize {
        self.reads.load(Ordering::SeqCst)
    }
}

impl TapIo for MemTap {
    fn read_frame(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        let frame = self
            .incoming
            .lock()
            .unwrap()
            .pop_front()
            .ok_or(io::ErrorKind::WouldBlock)?;
        let n = frame.len().min(buf.len());
        buf[..n].copy_from_slice(&frame[..n]);
        Ok(n)
    }
    fn write_frame(&self, frame: &[u8]) -> io::Result<usize> {
        if self.full.load(Ordering::SeqCst) {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        self.written.lock().unwrap().push(frame.to_vec());
        Ok(frame.len())
    }
    fn set_offload(&self, flags: u32) -> io::Result<()> {
        *self.offload.lock().unwrap() = Some(flags);
        Ok(())
    }
}

/// A frame as the tap or the driver has it: `hdr`, an Ethernet header, `payload` pattern bytes.
pub(crate) fn frame(hdr: NetHeader, payload: usize, seed: u8) -> Vec<u8> {
    let mut f = hdr.to_bytes().to_vec();
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2, 0x08, 0x00]);
    f.extend((0..payload).map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed)));
    f
}

fn plain(payload: usize, seed: u8) -> Vec<u8> {
    frame(NetHeader::default(), payload, seed)
}

fn tso4_header() -> NetHeader {
    NetHeader {
        flags: VIRTIO_NET_HDR_F_NEEDS_CSUM as u8,
        gso_type: VIRTIO_NET_HDR_GSO_TCPV4 as u8,
        hdr_len: 54,
        gso_size: 1448,
        csum_start: 34,
        csum_offset: 16,
        num_buffers: 0,
    }
}

pub(crate) struct Rig<'a> {
    pub mem: &'a GuestMemory,
    pub rxq: TestQueue<'a>,
    pub txq: TestQueue<'a>,
    pub irq: Arc<FakeInterrupt>,
    pub tap: Arc<MemTap>,
    pub stats: Arc<NetStats>,
    pub dev: NetQueues<Arc<MemTap>>,
    next_buf: u64,
}

impl<'a> Rig<'a> {
    pub fn new(mem: &'a GuestMemory, acked: u64) -> Self {
        Self::with_queues(mem, acked, |_| {})
    }

    /// A rig whose rx queue is adjusted (event index, ...) before the device takes it.
    pub fn with_queues(mem: &'a GuestMemory, acked: u64, adjust: impl FnOnce(&mut Queue)) -> Self {
        let rxq = TestQueue::new(mem, RX_BASE, QSIZE);
        let txq = TestQueue::new(mem, TX_BASE, QSIZE);
        let irq = Arc::new(FakeInterrupt::default());
        let tap = Arc::new(MemTap::default());
        let stats = Arc::new(NetStats::default());
        let mut rx = rxq.queue();
        adjust(&mut rx);
        let dev = NetQueues::new(
            mem.clone(),
            [rx, txq.queue()],
            irq.clone(),
            tap.clone(),
            acked,
            stats.clone(),
        );
        Rig {
            mem,
            rxq,
            txq,
            irq,
            tap,
            stats,
            dev,
            next_buf: 0x1_0000,
        }
    }

    pub fn alloc(&mut self, len: u64) -> u64 {
        let at = self.next_buf;
        self.next_buf += len.next_multiple_of(0x100).max(0x100);
        assert!(self.next_buf <= 1 << 20, "test memory exhausted");
        at
    }

    /// Queues `bytes` for transmission in one readable descriptor per `split` piece.
    pub fn send(&mut self, bytes: &[u8], split: &[usize]) -> u16 {
        let mut descs = Vec::new();
        let mut at = 0;
        for piece in split.iter().copied().chain([bytes.len()]) {
            let end = piece.min(bytes.len());
            if end <= at {
                continue;
            }
            let addr = self.alloc((end - at) as u64);
            self.mem
                .write_slice(&bytes[at..end], GuestAddress(addr))
                .unwrap();
            descs.push((addr, (end - at) as u32, false));
            at = end;
        }
        self.txq.add(&descs)
    }

    /// Posts an rx chain of one writable buffer of `len` bytes; returns (head, address).
    pub fn post(&mut self, len: u32) -> (u16, u64) {
        let addr = self.alloc(u64::from(len));
        (self.rxq.add(&[(addr, len, true)]), addr)
    }

    pub fn read(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
        v
    }

    pub fn stat(&self, f: impl Fn(&NetStats) -> &std::sync::atomic::AtomicU64) -> u64 {
        NetStats::get(f(&self.stats))
    }
}

#[test]
fn a_transmitted_frame_reaches_the_tap_unchanged() {
    let mem = memory();
    let mut r = Rig::new(&mem, OFFLOADS);
    let f = plain(100, 1);
    // Header in its own descriptor, as Linux sends it, and the frame split once more.
    let head = r.send(&f, &[HDR_LEN, 60]);
    let run = r.dev.process_tx();
    assert!(run.faults.is_empty(), "{:?}", run.faults);
    assert_eq!(r.tap.written(), vec![f.clone()]);
    assert_eq!(r.txq.used(), vec![(u32::from(head), 0)]);
    assert_eq!(r.irq.count(InterruptReason::UsedBuffer), 1);
    assert_eq!(r.stat(|s| &s.tx_frames), 1);
    assert_eq!(r.stat(|s| &s.tx_bytes), (f.len() - HDR_LEN) as u64);
}

#[test]
fn a_64k_segment_with_offloads_is_sent_whole() {
    let mem = memory();
    let mut r = Rig::new(&mem, OFFLOADS);
    let f = frame(tso4_header(), 65536 - 34, 3);
    assert_eq!(f.len(), HDR_LEN + 65536 - 34 + ETH_HLEN);
    r.send(&f, &[HDR_LEN, 4096, 30000]);
    let run = r.dev.process_tx();
    assert!(run.faults.is_empty(), "{:?}", run.faults);
    assert_eq!(r.tap.written(), vec![f]);
}

#[test]
fn a_received_frame_fills_one_buffer_with_num_buffers_1() {
    let mem = memory();
    let mut r = Rig::new(&mem, 0);
    let f = plain(200, 9);
    r.tap.push(f.clone());
    let (head, addr) = r.post(2048);
    let run = r.dev.process_rx();
    assert!(run.faults.is_empty(), "{:?}", run.faults);
    assert_eq!(r.rxq.used(), vec![(u32::from(head), f.len() as u32)]);
    let got = r.read(addr, f.len());
    assert_eq!(NetHeader::parse(&got).num_buffers, 1);
    assert_eq!(&got[NUM_BUFFERS_OFFSET + 2..], &f[NUM_BUFFERS_OFFSET + 2..]);
    assert_eq!(r.irq.count(InterruptReason::UsedBuffer), 1);
    assert_eq!(r.stat(|s| &s.rx_frames), 1);
}

#[test]
fn a_64k_frame_spans_mergeable_buffers_published_together() {
    let mem = memory();
    let mut r = Rig::new(&mem, OFFLOADS);
    let f = frame(tso4_header(), 65536 - 34, 5);
    r.tap.push(f.clone());
    r.tap.push(plain(60, 6));
    let posted: Vec<(u16, u64)> = (0..20).map(|_| r.post(4096)).collect();
    let run = r.dev.process_rx();
    assert!(run.faults.is_empty(), "{:?}", run.faults);
    let used = r.rxq.used();
    let spans = f.len().div_ceil(4096);
    assert_eq!(used.len(), spans + 1, "the big frame, then the small one");
    let mut got = Vec::new();
    for (i, (id, len)) in used[..spans].iter().enumerate() {
        assert_eq!(*id, u32::from(posted[i].0));
        got.extend(r.read(posted[i].1, *len as usize));
    }
    assert_eq!(got.len(), f.len());
    let hdr = NetHeader::parse(&got);
    assert_eq!(usize::from(hdr.num_buffers), spans);
    assert_eq!(hdr.gso_type, VIRTIO_NET_HDR_GSO_TCPV4 as u8);
    assert_eq!(&got[HDR_LEN..], &f[HDR_LEN..]);
    let small = r.read(posted[spans].1, HDR_LEN);
    assert_eq!(NetHeader::parse(&small).num_buffers, 1);
    assert_eq!(r.irq.count(InterruptReason::UsedBuffer), 1, "one interrupt");
}

#[test]
fn without_rx_buffers_the_tap_is_not_read_and_reading_resumes_with_buffers() {
    let mem = memory();
    let mut r = Rig::new(&mem, OFFLOADS);
    for seed in 0..3 {
        r.tap.push(plain(100, seed));
    }
    let run = r.dev.process_rx();
    assert!(run.faults.is_empty());
    assert_eq!(r.tap.reads(), 0, "no buffers: the tap is left alone");
    assert!(r.rxq.used().is_empty());
    assert!(!r.dev.rx_pending());

    let (_, first) = r.post(1600);
    r.dev.process_rx();
    assert_eq!(r.tap.reads(), 1, "one buffer: one frame");
    assert_eq!(r.rxq.used().len(), 1);
    assert_eq!(r.read(first + HDR_LEN as u64 + ETH_HLEN as u64, 1)[0], 0);

    let b: Vec<_> = (0..3).map(|_| r.post(1600)).collect();
    r.dev.process_rx();
    assert_eq!(r.rxq.used().len(), 3);
    for (i, (_, addr)) in b.iter().take(2).enumerate() {
        let payload = r.read(addr + (HDR_LEN + ETH_HLEN) as u64, 1)[0];
        assert_eq!(payload, i as u8 + 1, "in order");
    }
    assert!(r.dev.rx_pending() || r.tap.incoming.lock().unwrap().is_empty());
    assert_eq!(r.stat(|s| &s.rx_frames), 3);
}

#[test]
fn a_frame_waiting_for_more_mergeable_buffers_is_held_not_reread() {
    let mem = memory();
    let mut r = Rig::new(&mem, OFFLOADS);
    let f = plain(5000, 4);
    r.tap.push(f.clone());
    r.tap.push(plain(10, 5));
    r.post(2048);
    r.dev.process_rx();
    assert_eq!(r.tap.reads(), 1);
    assert!(r.dev.rx_pending(), "read, too big for one buffer, held");
    assert!(r.rxq.used().is_empty());
    r.dev.process_rx();
    assert_eq!(r.tap.reads(), 1, "held, not read again");

    r.post(2048);
    r.post(2048);
    r.dev.process_rx();
    let used = r.rxq.used();
    assert_eq!(
        used.iter().map(|(_, l)| *l as usize).sum::<usize>(),
        f.len()
    );
    assert_eq!(used.len(), 3);
    assert!(!r.dev.rx_pending());
}

#[test]
fn a_full_tap_leaves_frames_in_the_queue_until_it_drains() {
    let mem = memory();
    let mut r = Rig::new(&mem, OFFLOADS);
    r.tap.full.store(true, Ordering::SeqCst);
    let (a, b) = (plain(80, 1), plain(90, 2));
    r.send(&a, &[]);
    r.send(&b, &[]);
    r.dev.process_tx();
    assert!(r.dev.tx_blocked());
    assert!(r.txq.used().is_empty(), "the frame stays with the guest");
    assert!(r.tap.written().is_empty());
    // Still full: one attempt, no spinning, nothing lost.
    r.dev.tap_writable();
    assert!(r.dev.tx_blocked());
    assert_eq!(r.stat(|s| &s.tx_waits), 2);

    r.tap.full.store(false, Ordering::SeqCst);
    r.dev.tap_writable();
    assert!(!r.dev.tx_blocked());
    assert_eq!(r.tap.written(), vec![a, b]);
    assert_eq!(r.txq.used().len(), 2);
    assert_eq!(r.stat(|s| &s.tx_dropped), 0);
}

#[test]
fn frames_with_offloads_the_driver_did_not_take_are_not_delivered() {
    let mem = memory();
    let mut r = Rig::new(&mem, 1 << VIRTIO_NET_F_MRG_RXBUF);
    r.tap.push(frame(tso4_header(), 3000, 1));
    let ok = plain(50, 2);
    r.tap.push(ok.clone());
    r.post(8192);
    let run = r.dev.process_rx();
    assert!(matches!(run.faults[..], [NetFault::BadTapFrame { .. }]));
    assert_eq!(r.rxq.used().len(), 1);
    assert_eq!(r.rxq.used()[0].1 as usize, ok.len());
}

#[test]
fn broken_queues_need_a_reset_and_are_left_alone() {
    let mem = memory();
    let mut r = Rig::new(&mem, OFFLOADS);
    r.txq.set_avail_idx(QSIZE + 5);
    let run = r.dev.process_tx();
    assert!(matches!(run.faults[..], [NetFault::Broken { .. }]));
    assert!(r.dev.is_broken());
    assert_eq!(r.irq.count(InterruptReason::NeedsReset), 1);
    r.tap.push(plain(10, 0));
    r.post(2048);
    assert!(r.dev.process_rx().faults.is_empty());
    assert_eq!(r.tap.reads(), 0, "a broken device does nothing");

    let mem = memory();
    let mut r = Rig::new(&mem, OFFLOADS);
    r.rxq.publish(QSIZE + 3);
    r.tap.push(plain(10, 0));
    let run = r.dev.process_rx();
    assert!(matches!(run.faults[..], [NetFault::Broken { .. }]));
    assert!(r.dev.is_broken());
}

#[test]
fn rx_interrupts_follow_the_drivers_used_event() {
    let mem = memory();
    let mut r = Rig::with_queues(&mem, OFFLOADS, |q| q.set_event_idx(true));
    // used_event lives after the available ring: interrupt once the used index passes 1.
    let event = GuestAddress(r.rxq.mock.avail_addr().0 + 4 + 2 * u64::from(QSIZE));
    mem.write_obj(1u16, event).unwrap();
    r.post(2048);
    r.post(2048);
    r.tap.push(plain(10, 0));
    r.dev.process_rx();
    assert_eq!(
        r.irq.count(InterruptReason::UsedBuffer),
        0,
        "used 1: not yet"
    );
    r.dev.tap_readable();
    r.tap.push(plain(10, 1));
    r.dev.process_rx();
    assert_eq!(
        r.irq.count(InterruptReason::UsedBuffer),
        1,
        "used 2: passed"
    );
}

#[test]
fn a_held_frame_asks_for_a_kick_past_the_buffers_already_seen() {
    let mem = memory();
    let mut r = Rig::with_queues(&mem, OFFLOADS, |q| q.set_event_idx(true));
    r.tap.push(plain(5000, 4));
    r.post(2048);
    r.post(2048);
    r.dev.process_rx();
    assert!(r.dev.rx_pending());
    // avail_event sits after the used ring's entries: the driver kicks when it makes
    // buffer 2 (the third) available, not for the two the device already looked at.
    let avail_event = GuestAddress(r.rxq.mock.used_addr().0 + 4 + 8 * u64::from(QSIZE));
    assert_eq!(mem.read_obj::<u16>(avail_event).unwrap(), 2);
    r.post(2048);
    r.dev.process_rx();
    assert!(!r.dev.rx_pending());
    assert_eq!(r.rxq.used().len(), 3);
}

#[test]
fn an_rx_interrupt_the_driver_asked_for_late_is_sent_on_recheck() {
    use crate::devices::virtio::late_notify::{FIRST_RECHECK, RECHECK};
    let mem = memory();
    let mut r = Rig::with_queues(&mem, OFFLOADS, |q| q.set_event_idx(true));
    let event = GuestAddress(r.rxq.mock.avail_addr().0 + 4 + 2 * u64::from(QSIZE));
    // The driver wants an interrupt only once the used index passes 5.
    mem.write_obj(5u16, event).unwrap();
    r.post(2048);
    r.tap.push(plain(10, 0));
    r.dev.process_rx();
    assert_eq!(r.irq.count(InterruptReason::UsedBuffer), 0);
    let due = r
        .dev
        .recheck_due()
        .expect("a used buffer without an interrupt is rechecked");
    assert!(
        r.dev.recheck(due).is_empty(),
        "the driver does not want it yet"
    );
    // Its used_event now says index 0: the buffer it waits for was used long ago.
    mem.write_obj(0u16, event).unwrap();
    let later = due + RECHECK;
    assert_eq!(r.dev.recheck(later), vec!["rx"]);
    assert_eq!(r.irq.count(InterruptReason::UsedBuffer), 1);
    assert!(r.dev.recheck(later + FIRST_RECHECK).is_empty(), "sent once");
    assert_eq!(r.dev.recheck_due(), None);
}

#[test]
fn a_tx_interrupt_the_driver_asked_for_late_is_sent_on_recheck() {
    use crate::devices::virtio::late_notify::RECHECK;
    let mem = memory();
    let mut r = Rig::new(&mem, OFFLOADS);
    let mut tx = r.txq.queue();
    tx.set_event_idx(true);
    r.dev = NetQueues::new(
        mem.clone(),
        [r.rxq.queue(), tx],
        r.irq.clone(),
        r.tap.clone(),
        OFFLOADS,
        r.stats.clone(),
    );
    let event = GuestAddress(r.txq.mock.avail_addr().0 + 4 + 2 * u64::from(QSIZE));
    mem.write_obj(5u16, event).unwrap();
    r.send(&plain(100, 1), &[]);
    r.dev.process_tx();
    assert_eq!(r.tap.written().len(), 1);
    assert_eq!(r.irq.count(InterruptReason::UsedBuffer), 0);
    mem.write_obj(0u16, event).unwrap();
    let due = r.dev.recheck_due().expect("rechecked");
    assert_eq!(r.dev.recheck(due + RECHECK), vec!["tx"]);
    assert_eq!(r.irq.count(InterruptReason::UsedBuffer), 1);
}

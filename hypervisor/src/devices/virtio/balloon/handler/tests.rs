//! The queues on fake guest memory, with a discard that only records what it was asked to drop.

use std::sync::Mutex;

use vm_memory::Bytes;

use super::*;
use crate::devices::virtio::chain::testing::{memory, TestQueue};
use crate::devices::virtio::interrupt::FakeInterrupt;

const QSIZE: u16 = 16;

#[derive(Debug, Default)]
struct Recorder(Arc<Mutex<Vec<(u64, u64)>>>);

impl Discard for Recorder {
    fn discard(&self, _mem: &GuestMemory, addr: GuestAddress, len: u64) -> std::io::Result<()> {
        self.0.lock().unwrap().push((addr.0, len));
        Ok(())
    }
}

struct Rig<'a> {
    mem: &'a GuestMemory,
    qs: Vec<TestQueue<'a>>,
    irq: Arc<FakeInterrupt>,
    dropped: Arc<Mutex<Vec<(u64, u64)>>>,
    stats: Arc<BalloonStats>,
    dev: BalloonQueues<Recorder>,
}

impl<'a> Rig<'a> {
    fn new(mem: &'a GuestMemory) -> Self {
        let qs: Vec<TestQueue> = (0..3)
            .map(|i| TestQueue::new(mem, 0x1000 * i, QSIZE))
            .collect();
        let irq = Arc::new(FakeInterrupt::default());
        let dropped = Arc::default();
        let stats = Arc::new(BalloonStats::default());
        let dev = BalloonQueues::new(
            mem.clone(),
            qs.iter().map(TestQueue::queue).collect(),
            irq.clone(),
            Recorder(Arc::clone(&dropped)),
            stats.clone(),
        );
        Rig {
            mem,
            qs,
            irq,
            dropped,
            stats,
            dev,
        }
    }

    /// Queues one inflate/deflate chain holding `pfns` at `at`.
    fn pfns(&mut self, queue: usize, at: u64, pfns: &[u32]) -> u16 {
        let bytes: Vec<u8> = pfns.iter().flat_map(|p| p.to_le_bytes()).collect();
        self.mem.write_slice(&bytes, GuestAddress(at)).unwrap();
        self.qs[queue].add(&[(at, bytes.len() as u32, false)])
    }

    fn dropped(&self) -> Vec<(u64, u64)> {
        self.dropped.lock().unwrap().clone()
    }
}

#[test]
fn reported_runs_are_dropped_and_returned() {
    let mem = memory();
    let mut r = Rig::new(&mem);
    let head = r.qs[REPORTING_QUEUE].add(&[(0x8_0000, 0x2_0000, true), (0x4_0000, 0x1000, true)]);
    let run = r.dev.process_queue(REPORTING_QUEUE);
    assert!(run.faults.is_empty(), "{:?}", run.faults);
    assert_eq!(r.dropped(), vec![(0x8_0000, 0x2_0000), (0x4_0000, 0x1000)]);
    assert_eq!(r.qs[REPORTING_QUEUE].used(), vec![(u32::from(head), 0)]);
    assert_eq!(r.stats.reported.load(Ordering::Relaxed), 0x2_1000);
    assert_eq!(r.irq.count(InterruptReason::UsedBuffer), 1);
}

#[test]
fn inflated_frames_are_merged_into_runs_and_deflated_ones_only_checked() {
    let mem = memory();
    let mut r = Rig::new(&mem);
    r.pfns(INFLATE_QUEUE, 0x5000, &[0x40, 0x41, 0x42, 0x50, 0x43]);
    let run = r.dev.process_queue(INFLATE_QUEUE);
    assert!(run.faults.is_empty(), "{:?}", run.faults);
    assert_eq!(
        r.dropped(),
        vec![(0x4_0000, 0x3000), (0x5_0000, 0x1000), (0x4_3000, 0x1000)]
    );
    assert_eq!(r.stats.inflated.load(Ordering::Relaxed), 5 * PAGE);
    r.pfns(DEFLATE_QUEUE, 0x6000, &[0x40, 0x41]);
    assert!(r.dev.process_queue(DEFLATE_QUEUE).faults.is_empty());
    assert_eq!(r.dropped().len(), 3, "deflating drops nothing");
    assert_eq!(r.qs[DEFLATE_QUEUE].used().len(), 1);
}

#[test]
fn ranges_outside_ram_or_unaligned_refuse_the_whole_chain() {
    let mem = memory();
    let mut r = Rig::new(&mem);
    // A good run first, then one past the end of RAM: nothing of the chain is dropped.
    r.qs[REPORTING_QUEUE].add(&[(0x8_0000, 0x1000, true), (0xf_f000, 0x2000, true)]);
    // A descriptor past RAM is refused by the chain check already.
    r.qs[REPORTING_QUEUE].add(&[(1 << 20, 0x1000, true)]);
    // Unaligned.
    r.qs[REPORTING_QUEUE].add(&[(0x8_0800, 0x1000, true)]);
    let run = r.dev.process_queue(REPORTING_QUEUE);
    assert_eq!(run.faults.len(), 3, "{:?}", run.faults);
    assert!(matches!(run.faults[0], BalloonFault::Chain { .. }));
    assert!(matches!(
        run.faults[2],
        BalloonFault::Range { addr: 0x8_0800, .. }
    ));
    assert!(r.dropped().is_empty());
    assert_eq!(
        r.qs[REPORTING_QUEUE].used().len(),
        3,
        "every chain goes back"
    );
    assert!(!r.dev.is_broken());

    // A frame past RAM among good ones, and lists that are not whole frames.
    r.pfns(INFLATE_QUEUE, 0x5000, &[0x40, 0x1_0000]);
    r.qs[INFLATE_QUEUE].add(&[(0x6000, 3, false)]);
    r.qs[INFLATE_QUEUE].add(&[(0x6000, 0x1000, true)]);
    let run = r.dev.process_queue(INFLATE_QUEUE);
    assert!(matches!(
        run.faults.as_slice(),
        [
            BalloonFault::Range {
                addr: 0x1000_0000,
                ..
            },
            BalloonFault::PfnList { len: 3, .. },
            BalloonFault::PfnList { len: 0, .. }
        ]
    ));
    assert!(r.dropped().is_empty());
}

#[test]
fn an_oversized_frame_list_is_refused() {
    let mem = memory();
    let mut r = Rig::new(&mem);
    let len = (MAX_PFNS + 1) * 4;
    r.qs[INFLATE_QUEUE].add(&[(0x1_0000, len as u32, false)]);
    let run = r.dev.process_queue(INFLATE_QUEUE);
    assert!(matches!(
        run.faults.as_slice(),
        [BalloonFault::PfnList { .. }]
    ));
    assert!(r.dropped().is_empty());
}

#[test]
fn a_broken_queue_needs_a_reset_and_is_left_alone() {
    let mem = memory();
    let mut r = Rig::new(&mem);
    r.qs[REPORTING_QUEUE].set_avail_idx(QSIZE + 3);
    let run = r.dev.process_queue(REPORTING_QUEUE);
    assert!(matches!(
        run.faults.as_slice(),
        [BalloonFault::Broken { .. }]
    ));
    assert!(r.dev.is_broken());
    assert_eq!(r.irq.count(InterruptReason::NeedsReset), 1);
    r.pfns(INFLATE_QUEUE, 0x5000, &[0x40]);
    assert!(r.dev.process_queue(INFLATE_QUEUE).faults.is_empty());
    assert!(r.dropped().is_empty());
    assert!(r.dev.recheck(Instant::now()).is_empty());
}

#[test]
fn a_device_without_reporting_ignores_its_index() {
    let mem = memory();
    let qs: Vec<TestQueue> = (0..2)
        .map(|i| TestQueue::new(&mem, 0x1000 * i, QSIZE))
        .collect();
    let mut dev = BalloonQueues::new(
        mem.clone(),
        qs.iter().map(TestQueue::queue).collect(),
        Arc::new(FakeInterrupt::default()),
        Recorder::default(),
        Arc::default(),
    );
    assert_eq!(dev.len(), 2);
    let run = dev.process_queue(REPORTING_QUEUE);
    assert!(run.faults.is_empty() && !run.more);
}

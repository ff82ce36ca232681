//! Fuzzing harnesses for the parsers the guest (or a host client) feeds, shared by the
//! cargo-fuzz targets in `hypervisor/fuzz/` and the stable replay test
//! `hypervisor/tests/fuzz_corpus.rs`.
//!
//! Each target is one function taking the fuzzer's bytes. It decodes them into guest memory,
//! queues and a sequence of operations (see [`Input`] and [`queue`]), calls the code the guest
//! reaches and checks a few invariants with `assert!`. A malformed input must end in an error
//! value; a panic anywhere (husk code or an invariant) is a finding. Nothing here needs KVM.
//!
//! Not part of the VMM's API: hidden from the docs, and only the harnesses use it.

mod balloon;
mod chain;
mod fuse;
mod hybrid;
mod mmio;
mod net;
mod vsock;

pub use balloon::balloon;
pub use chain::chain;
pub use fuse::{fuse_request, fuse_share};
pub use hybrid::hybrid_handshake;
pub use mmio::mmio;
pub use net::net_header;
pub use vsock::{vsock_connection, vsock_packet};

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemory as _};

use crate::devices::virtio::interrupt::{InterruptReason, VirtioInterrupt};
use crate::memory::GuestMemory;

/// The names of the targets, as directories of `hypervisor/fuzz/corpus/`.
pub const TARGETS: [&str; 8] = [
    "chain",
    "vsock_packet",
    "vsock_connection",
    "net_header",
    "fuse_request",
    "mmio",
    "hybrid_handshake",
    "balloon",
];

/// Runs the target called `name` on `data`; false for an unknown name.
pub fn run(name: &str, data: &[u8]) -> bool {
    let f: fn(&[u8]) = match name {
        "chain" => chain,
        "vsock_packet" => vsock_packet,
        "vsock_connection" => vsock_connection,
        "net_header" => net_header,
        "fuse_request" => fuse_request,
        "mmio" => mmio,
        "hybrid_handshake" => hybrid_handshake,
        "balloon" => balloon,
        _ => return false,
    };
    f(data);
    true
}

/// Guest RAM of the harnesses: 64 KiB at 0, a hole, 64 KiB at [`HIGH_RAM`], so chains can
/// straddle the hole or run off either end.
pub const LOW_RAM_LEN: u64 = 0x1_0000;
/// Start of the second RAM region.
pub const HIGH_RAM: u64 = 0x2_0000;
/// Where [`queue`] lays out its first queue; each queue takes [`QUEUE_SPAN`] bytes.
pub const QUEUE_BASE: u64 = 0;
/// Bytes one queue's rings take: descriptor table, available ring at +0x1000, used at +0x2000.
pub const QUEUE_SPAN: u64 = 0x3000;
/// Where [`Input::fill_ram`] copies the rest of the input: buffers live from here.
pub const DATA_BASE: u64 = 0x6000;

/// Guest memory for one run, or `None` if it cannot be mapped.
pub fn memory() -> Option<GuestMemory> {
    GuestMemory::from_ranges(&[
        (GuestAddress(0), LOW_RAM_LEN as usize),
        (GuestAddress(HIGH_RAM), LOW_RAM_LEN as usize),
    ])
    .ok()
}

/// The fuzzer's bytes, read front to back; past the end every read is zero.
#[derive(Debug)]
pub struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    /// Wraps `data`.
    pub fn new(data: &'a [u8]) -> Self {
        Input { data }
    }

    /// Whether everything was read.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// The next `n` bytes (fewer at the end).
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let (head, tail) = self.data.split_at(n.min(self.data.len()));
        self.data = tail;
        head
    }

    /// Everything left.
    pub fn rest(&mut self) -> &'a [u8] {
        self.bytes(self.data.len())
    }

    fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        let b = self.bytes(N);
        out[..b.len()].copy_from_slice(b);
        out
    }

    /// A byte.
    pub fn u8(&mut self) -> u8 {
        self.array::<1>()[0]
    }

    /// A little-endian u16.
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.array())
    }

    /// A little-endian u32.
    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.array())
    }

    /// A little-endian u64.
    pub fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.array())
    }

    /// Copies the rest of the input into guest RAM from [`DATA_BASE`] (what fits).
    pub fn fill_ram(&mut self, mem: &GuestMemory) {
        let room = (LOW_RAM_LEN - DATA_BASE) as usize;
        let rest = self.bytes(room);
        let _ = mem.write_slice(rest, GuestAddress(DATA_BASE));
    }
}

/// A split queue decoded from `input` and laid out in `mem` at `base`:
///
/// `u8` log2 of the size (mod 9, so 1 to 256 entries), `u8` flags (bit 0: EVENT_IDX),
/// `u16` available-ring flags, `u16` available index, then `size` `u16` ring entries, then
/// `size` raw 16-byte descriptors (`le64 addr, le32 len, le16 flags, le16 next`).
/// Returns the device's view of it, ready.
pub fn queue(mem: &GuestMemory, input: &mut Input<'_>, base: u64) -> Option<Queue> {
    let size: u16 = 1 << (input.u8() % 9);
    let event_idx = input.u8() & 1 != 0;
    let (desc, avail, used) = (base, base + 0x1000, base + 0x2000);
    let avail_flags = input.u16();
    let avail_idx = input.u16();
    mem.write_obj(avail_flags, GuestAddress(avail)).ok()?;
    mem.write_obj(avail_idx, GuestAddress(avail + 2)).ok()?;
    let ring = input.bytes(2 * usize::from(size));
    mem.write_slice(ring, GuestAddress(avail + 4)).ok()?;
    let table = input.bytes(16 * usize::from(size));
    mem.write_slice(table, GuestAddress(desc)).ok()?;
    let mut q = Queue::new(size).ok()?;
    q.set_size(size);
    let split = |a: u64| (Some(a as u32), Some((a >> 32) as u32));
    let (lo, hi) = split(desc);
    q.set_desc_table_address(lo, hi);
    let (lo, hi) = split(avail);
    q.set_avail_ring_address(lo, hi);
    let (lo, hi) = split(used);
    q.set_used_ring_address(lo, hi);
    q.set_event_idx(event_idx);
    q.set_ready(true);
    (q.is_valid(mem) && mem.num_regions() > 0).then_some(q)
}

/// An interrupt line that goes nowhere.
#[derive(Debug, Default)]
pub struct NullInterrupt;

impl VirtioInterrupt for NullInterrupt {
    fn trigger(&self, _reason: InterruptReason) -> std::io::Result<()> {
        Ok(())
    }
}

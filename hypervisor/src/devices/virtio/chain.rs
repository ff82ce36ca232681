//! Descriptor chains, validated before use.
//!
//! virtio-queue's chain iterator stops quietly when a chain loops, runs past the queue size or
//! names a descriptor outside the table, and it does not check that buffers lie in guest RAM.
//! [`GuestChain::parse`] walks the whole chain first and refuses it if the walk ended early (the
//! last descriptor still had NEXT), if any buffer leaves guest RAM, or if a device-readable
//! buffer follows a device-writable one (the split-ring rule). A device then reads and writes
//! the chain as two flat byte ranges, "readable" and "writable", without ever touching memory
//! the guest did not lend it.

use std::ops::Deref;

use virtio_queue::{DescriptorChain, Queue, QueueOwnedT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory as _};

use crate::memory::GuestMemory;

/// One buffer of a chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Guest physical address.
    pub addr: GuestAddress,
    /// Length in bytes.
    pub len: u32,
}

/// Why a chain was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// No descriptor could be read at the head (index past the table).
    #[error("chain {head}: no descriptor at the head index")]
    Empty {
        /// The head index from the available ring.
        head: u16,
    },
    /// The chain did not end: it loops, is longer than the queue, names a descriptor past the
    /// table or adds up to more than 4 GiB.
    #[error("chain {head}: does not end after {walked} descriptors (a loop, a bad next index or more than 4 GiB)")]
    Unterminated {
        /// The head index.
        head: u16,
        /// Descriptors read before the walk stopped.
        walked: usize,
    },
    /// A buffer is not inside guest RAM.
    #[error("chain {head}: descriptor {position} ({addr:#x}+{len:#x}) is outside guest RAM")]
    OutsideRam {
        /// The head index.
        head: u16,
        /// Position of the bad descriptor in the chain.
        position: usize,
        /// Its address.
        addr: u64,
        /// Its length.
        len: u32,
    },
    /// A device-readable descriptor after a device-writable one.
    #[error("chain {head}: a device-readable descriptor follows a device-writable one")]
    ReadableAfterWritable {
        /// The head index.
        head: u16,
    },
    /// Guest memory access failed after validation (cannot happen with static RAM).
    #[error("chain {head}: guest memory access failed")]
    Access {
        /// The head index.
        head: u16,
    },
}

/// A validated chain: its readable buffers, then its writable buffers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestChain {
    head: u16,
    readable: Vec<Segment>,
    writable: Vec<Segment>,
}

impl GuestChain {
    /// Walks and validates `chain`.
    pub fn parse<M>(chain: DescriptorChain<M>) -> Result<Self, ChainError>
    where
        M: Deref<Target = GuestMemory>,
    {
        let head = chain.head_index();
        let mem: &GuestMemory = chain.memory();
        // Clone the memory handle out of the chain so the iterator can be consumed.
        let mem = mem.clone();
        let mut readable = Vec::new();
        let mut writable = Vec::new();
        let mut walked = 0usize;
        let mut last_had_next = true;
        for (position, desc) in chain.enumerate() {
            walked += 1;
            last_had_next = desc.has_next();
            let len = desc.len();
            if len > 0 && !mem.check_range(desc.addr(), len as usize) {
                return Err(ChainError::OutsideRam {
                    head,
                    position,
                    addr: desc.addr().0,
                    len,
                });
            }
            let seg = Segment {
                addr: desc.addr(),
                len,
            };
            if desc.is_write_only() {
                writable.push(seg);
            } else if writable.is_empty() {
                readable.push(seg);
            } else {
                return Err(ChainError::ReadableAfterWritable { head });
            }
        }
        if walked == 0 {
            return Err(ChainError::Empty { head });
        }
        if last_had_next {
            return Err(ChainError::Unterminated { head, walked });
        }
        Ok(GuestChain {
            head,
            readable,
            writable,
        })
    }

    /// The head index, which goes back in the used ring.
    pub fn head(&self) -> u16 {
        self.head
    }

    /// Bytes the device may read.
    pub fn readable_len(&self) -> usize {
        self.readable.iter().map(|s| s.len as usize).sum()
    }

    /// Bytes the device may write.
    pub fn writable_len(&self) -> usize {
        self.writable.iter().map(|s| s.len as usize).sum()
    }

    /// The device-writable buffers, in order (each checked to lie in guest RAM).
    pub fn writable(&self) -> &[Segment] {
        &self.writable
    }

    /// Copies readable bytes from `offset` into `buf`, which must fit.
    pub fn read_at(
        &self,
        mem: &GuestMemory,
        offset: usize,
        buf: &mut [u8],
    ) -> Result<(), ChainError> {
        let mut done = 0;
        self.walk(&self.readable, offset, buf.len(), |addr, range| {
            mem.read_slice(&mut buf[range.clone()], addr).map(|_| {
                done += range.len();
            })
        })?;
        Ok(())
    }

    /// Copies `data` into the writable bytes from `offset`, which must fit.
    pub fn write_at(
        &self,
        mem: &GuestMemory,
        offset: usize,
        data: &[u8],
    ) -> Result<(), ChainError> {
        self.walk(&self.writable, offset, data.len(), |addr, range| {
            mem.write_slice(&data[range], addr)
        })
    }

    /// Calls `f(guest address, range of the caller's buffer)` for each piece of
    /// `[offset, offset + len)` across `segs`.
    fn walk<E>(
        &self,
        segs: &[Segment],
        mut offset: usize,
        len: usize,
        mut f: impl FnMut(GuestAddress, std::ops::Range<usize>) -> Result<(), E>,
    ) -> Result<(), ChainError> {
        let access = ChainError::Access { head: self.head };
        let mut copied = 0;
        for seg in segs {
            if copied == len {
                break;
            }
            let seg_len = seg.len as usize;
            if offset >= seg_len {
                offset -= seg_len;
                continue;
            }
            let n = (seg_len - offset).min(len - copied);
            let addr = seg
                .addr
                .checked_add(offset as u64)
                .ok_or_else(|| access.clone())?;
            f(addr, copied..copied + n).map_err(|_| access.clone())?;
            copied += n;
            offset = 0;
        }
        if copied == len {
            Ok(())
        } else {
            Err(access)
        }
    }
}

/// Test helpers: guest memory and a queue laid out in it, with chains written by hand.
/// What a queue's next available chain turned out to be ([`pop_chain`]).
#[derive(Debug)]
pub enum Popped {
    /// A chain that passed [`GuestChain::parse`].
    Chain(GuestChain),
    /// A chain the device refuses; it goes back to the driver unused, at `head`.
    Bad {
        /// The chain's head index.
        head: u16,
        /// Why it was refused.
        error: ChainError,
    },
    /// The driver has made no chain available.
    Empty,
    /// The queue itself is unusable: its available ring cannot be read, or it names a head
    /// past the descriptor table (which cannot be returned in the used ring). The device must
    /// stop using it.
    Broken(String),
}

/// Takes the next available chain of `q` and validates it.
pub fn pop_chain(q: &mut Queue, mem: &GuestMemory) -> Popped {
    let chain = match q.iter(mem) {
        Ok(mut it) => it.next(),
        Err(e) => return Popped::Broken(e.to_string()),
    };
    let Some(chain) = chain else {
        return Popped::Empty;
    };
    let head = chain.head_index();
    match GuestChain::parse(chain) {
        Ok(c) => Popped::Chain(c),
        Err(e @ ChainError::Empty { .. }) => Popped::Broken(e.to_string()),
        Err(error) => Popped::Bad { head, error },
    }
}

#[cfg(test)]
pub mod testing {
    use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use virtio_queue::desc::{split::Descriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use virtio_queue::Queue;
    use vm_memory::{Address, Bytes, GuestAddress};

    use crate::memory::GuestMemory;

    /// Guest RAM for tests: 1 MiB at 0 (queues live at 0, buffers from 0x1_0000).
    pub fn memory() -> GuestMemory {
        GuestMemory::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap()
    }

    /// A descriptor: `(address, length, device-writable)`; NEXT links are added by
    /// [`TestQueue::add`].
    pub type Desc = (u64, u32, bool);

    /// A split queue in guest memory whose chains the test writes.
    #[allow(missing_debug_implementations)]
    pub struct TestQueue<'a> {
        /// The mock queue.
        pub mock: MockSplitQueue<'a, GuestMemory>,
        mem: &'a GuestMemory,
        next_desc: u16,
    }

    impl<'a> TestQueue<'a> {
        /// A queue of `size` entries at `base`.
        pub fn new(mem: &'a GuestMemory, base: u64, size: u16) -> Self {
            TestQueue {
                mock: MockSplitQueue::create(mem, GuestAddress(base), size),
                mem,
                next_desc: 0,
            }
        }

        /// A virtio-queue `Queue` for the device side.
        pub fn queue(&self) -> Queue {
            self.mock.create_queue::<Queue>().unwrap()
        }

        /// Writes a chain of `descs` (linked in order) and makes it available; returns the head.
        pub fn add(&mut self, descs: &[Desc]) -> u16 {
            let head = self.next_desc;
            for (i, (addr, len, write)) in descs.iter().enumerate() {
                let idx = head + i as u16;
                let mut flags = if *write { VRING_DESC_F_WRITE as u16 } else { 0 };
                if i + 1 < descs.len() {
                    flags |= VRING_DESC_F_NEXT as u16;
                }
                let d = Descriptor::new(*addr, *len, flags, idx + 1);
                self.mock
                    .desc_table()
                    .store(idx, RawDescriptor::from(d))
                    .unwrap();
            }
            self.next_desc += descs.len() as u16;
            self.publish(head);
            head
        }

        /// Stores a raw descriptor at `idx` (for chains that loop or point anywhere).
        pub fn store(&mut self, idx: u16, addr: u64, len: u32, flags: u16, next: u16) {
            let d = Descriptor::new(addr, len, flags, next);
            self.mock
                .desc_table()
                .store(idx, RawDescriptor::from(d))
                .unwrap();
            self.next_desc = self.next_desc.max(idx + 1);
        }

        /// Puts `head` in the available ring.
        pub fn publish(&mut self, head: u16) {
            let avail = self.mock.avail_addr();
            let idx: u16 = self.mem.read_obj(avail.unchecked_add(2)).unwrap();
            let size = self.mock.desc_table().total_size() / 16;
            let slot = avail.unchecked_add(4 + 2 * (u64::from(idx) % size));
            self.mem.write_obj(head, slot).unwrap();
            self.mem
                .write_obj(idx.wrapping_add(1), avail.unchecked_add(2))
                .unwrap();
        }

        /// Sets the available index directly (to claim more chains than the queue holds).
        pub fn set_avail_idx(&self, idx: u16) {
            let avail = self.mock.avail_addr();
            self.mem.write_obj(idx, avail.unchecked_add(2)).unwrap();
        }

        /// The used ring's `avail_event`: the driver notifies once its avail idx passes it.
        pub fn avail_event(&self) -> u16 {
            let used = self.mock.used_addr();
            let size = self.mock.desc_table().total_size() / 16;
            self.mem.read_obj(used.unchecked_add(4 + 8 * size)).unwrap()
        }

        /// The used ring's entries so far: (head, length).
        pub fn used(&self) -> Vec<(u32, u32)> {
            let used = self.mock.used_addr();
            let idx: u16 = self.mem.read_obj(used.unchecked_add(2)).unwrap();
            let size = self.mock.desc_table().total_size() / 16;
            (0..idx)
                .map(|i| {
                    let e = used.unchecked_add(4 + 8 * (u64::from(i) % size));
                    let id: u32 = self.mem.read_obj(e).unwrap();
                    let len: u32 = self.mem.read_obj(e.unchecked_add(4)).unwrap();
                    (id, len)
                })
                .collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;
    use virtio_bindings::bindings::virtio_ring::VRING_DESC_F_NEXT;
    use virtio_queue::QueueT;

    fn first(mem: &GuestMemory, q: &TestQueue) -> Result<GuestChain, ChainError> {
        let mut queue = q.queue();
        let chain = queue
            .pop_descriptor_chain(mem)
            .expect("a chain is available");
        GuestChain::parse(chain)
    }

    #[test]
    fn readable_then_writable_bytes_are_flat() {
        let mem = memory();
        let mut q = TestQueue::new(&mem, 0, 16);
        q.add(&[
            (0x1_0000, 4, false),
            (0x2_0000, 4, false),
            (0x3_0000, 8, true),
        ]);
        mem.write_slice(b"abcd", GuestAddress(0x1_0000)).unwrap();
        mem.write_slice(b"efgh", GuestAddress(0x2_0000)).unwrap();
        let c = first(&mem, &q).unwrap();
        assert_eq!((c.readable_len(), c.writable_len()), (8, 8));
        let mut buf = [0u8; 6];
        c.read_at(&mem, 2, &mut buf).unwrap();
        assert_eq!(&buf, b"cdefgh");
        c.write_at(&mem, 3, b"xyz").unwrap();
        let mut out = [0u8; 3];
        mem.read_slice(&mut out, GuestAddress(0x3_0003)).unwrap();
        assert_eq!(&out, b"xyz");
        assert!(c.write_at(&mem, 6, b"xyz").is_err(), "past the end");
        assert!(c.read_at(&mem, 0, &mut [0u8; 9]).is_err(), "past the end");
    }

    #[test]
    fn bad_chains_are_refused_by_kind() {
        let mem = memory();
        // Out of RAM.
        let mut q = TestQueue::new(&mem, 0, 16);
        q.add(&[(0x1_0000, 4, false), ((1 << 20) - 2, 4, true)]);
        assert!(matches!(
            first(&mem, &q),
            Err(ChainError::OutsideRam { position: 1, .. })
        ));
        // A loop: 0 → 1 → 0.
        let mut q = TestQueue::new(&mem, 0, 16);
        let next = VRING_DESC_F_NEXT as u16;
        q.store(0, 0x1_0000, 4, next, 1);
        q.store(1, 0x1_0000, 4, next, 0);
        q.publish(0);
        assert_eq!(
            first(&mem, &q),
            Err(ChainError::Unterminated {
                head: 0,
                walked: 16
            })
        );
        // A next index past the table.
        let mut q = TestQueue::new(&mem, 0, 16);
        q.store(0, 0x1_0000, 4, next, 40);
        q.publish(0);
        assert!(matches!(
            first(&mem, &q),
            Err(ChainError::Unterminated { walked: 1, .. })
        ));
        // A head past the table.
        let mut q = TestQueue::new(&mem, 0, 16);
        q.publish(99);
        assert_eq!(first(&mem, &q), Err(ChainError::Empty { head: 99 }));
        // Readable after writable.
        let mut q = TestQueue::new(&mem, 0, 16);
        q.add(&[(0x1_0000, 4, true), (0x2_0000, 4, false)]);
        assert!(matches!(
            first(&mem, &q),
            Err(ChainError::ReadableAfterWritable { .. })
        ));
    }
}

//! The balloon's queues: pages the guest gives up (inflate), takes back (deflate) and reports
//! free (reporting).
//!
//! [`BalloonQueues`] knows guest memory, the queues, the [`VirtioInterrupt`] trait and a
//! [`Discard`], nothing of epoll, so tests drive it with fake guest memory, a fake interrupt
//! and a discard that only records.
//!
//! What each queue carries, and what is checked before a page is dropped:
//! - inflate: device-readable buffers holding little-endian 32-bit page frame numbers (4 KiB
//!   pages). Every frame must be guest RAM; a chain whose length is not a whole number of
//!   frames, that holds more than [`MAX_PFNS`] of them or names one outside RAM is refused as
//!   a whole, before anything is dropped.
//! - deflate: the same, for pages the guest takes back. Nothing to do on the host (a dropped
//!   page comes back zeroed on the guest's next access); the chain is returned.
//! - reporting: device-writable buffers, each a run of free guest memory. Every run must be
//!   page-aligned guest RAM, or the chain is refused as a whole.
//!
//! A refused chain goes back unused and is reported as a [`BalloonFault`]; the device goes on.
//! A queue that is itself broken (a head past the table, a used ring outside RAM) stops the
//! device: DEVICE_NEEDS_RESET, and its queues are left alone until the driver resets it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestAddress;

use super::discard::{checked_range, Discard};
use super::{DEFLATE_QUEUE, INFLATE_QUEUE, PAGE, PFN_SHIFT, REPORTING_QUEUE};
use crate::devices::virtio::chain::{pop_chain, ChainError, GuestChain, Popped};
use crate::devices::virtio::interrupt::{InterruptReason, VirtioInterrupt};
use crate::devices::virtio::late_notify::{self, LateNotify};
use crate::memory::GuestMemory;

/// Chains served from one queue before the worker looks at its other events again.
pub const BATCH: usize = 64;
/// Page frame numbers one inflate or deflate chain may hold (Linux sends at most 256).
pub const MAX_PFNS: usize = 4096;

/// Something wrong with what the guest put in a queue, or a host failure to drop pages.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BalloonFault {
    /// A chain that cannot be used at all; returned unused.
    #[error("virtio-balloon {queue} queue: {error}; chain returned unused")]
    Chain {
        /// The queue's name.
        queue: &'static str,
        /// What is wrong with the chain.
        error: ChainError,
    },
    /// An inflate or deflate chain that is not a list of page frame numbers.
    #[error(
        "virtio-balloon {queue} queue: chain {head} holds {len} bytes, not 1 to {MAX_PFNS} \
         4-byte page frame numbers; chain returned unused"
    )]
    PfnList {
        /// The queue's name.
        queue: &'static str,
        /// The chain's head.
        head: u16,
        /// Its readable length.
        len: usize,
    },
    /// A page or run that is not page-aligned guest RAM.
    #[error(
        "virtio-balloon {queue} queue: chain {head} names {addr:#x}+{len:#x}, which is not \
         page-aligned guest RAM; chain returned unused"
    )]
    Range {
        /// The queue's name.
        queue: &'static str,
        /// The chain's head.
        head: u16,
        /// The guest address.
        addr: u64,
        /// The length.
        len: u64,
    },
    /// The host could not drop pages (the guest did nothing wrong).
    #[error("virtio-balloon: dropping {addr:#x}+{len:#x}: {why}")]
    Discard {
        /// The guest address.
        addr: u64,
        /// The length.
        len: u64,
        /// The host's error.
        why: String,
    },
    /// The queue itself is broken; the device needs a reset.
    #[error("virtio-balloon {queue} queue is broken ({why}); the device needs a reset")]
    Broken {
        /// The queue's name.
        queue: &'static str,
        /// What is wrong.
        why: String,
    },
}

/// What one run over a queue did.
#[derive(Debug, Default)]
pub struct Run {
    /// What the guest did wrong (or the host failed to do).
    pub faults: Vec<BalloonFault>,
    /// The batch limit stopped the run with chains possibly left: run the queue again.
    pub more: bool,
}

/// What the worker dropped, for whoever holds the device ([`super::VirtioBalloon::stats`]).
#[derive(Debug, Default)]
pub struct BalloonStats {
    /// Bytes the guest reported free and the host dropped.
    pub reported: AtomicU64,
    /// Bytes the guest gave up by inflating, dropped.
    pub inflated: AtomicU64,
}

/// The queue's name in messages.
pub fn queue_name(index: usize) -> &'static str {
    match index {
        INFLATE_QUEUE => "inflate",
        DEFLATE_QUEUE => "deflate",
        _ => "reporting",
    }
}

/// The active device's queues.
#[derive(Debug)]
pub struct BalloonQueues<D> {
    mem: GuestMemory,
    /// Inflate, deflate and, when the driver took REPORTING, reporting.
    queues: Vec<Queue>,
    late: Vec<LateNotify>,
    interrupt: Arc<dyn VirtioInterrupt>,
    discard: D,
    stats: Arc<BalloonStats>,
    broken: bool,
}

impl<D: Discard> BalloonQueues<D> {
    /// Takes over `queues` (inflate, deflate and maybe reporting, in index order).
    pub fn new(
        mem: GuestMemory,
        queues: Vec<Queue>,
        interrupt: Arc<dyn VirtioInterrupt>,
        discard: D,
        stats: Arc<BalloonStats>,
    ) -> Self {
        let late = queues.iter().map(|_| LateNotify::default()).collect();
        BalloonQueues {
            mem,
            queues,
            late,
            interrupt,
            discard,
            stats,
            broken: false,
        }
    }

    /// How many queues the device serves.
    pub fn len(&self) -> usize {
        self.queues.len()
    }

    /// Whether it serves none (never: a device has inflate and deflate at least).
    pub fn is_empty(&self) -> bool {
        self.queues.is_empty()
    }

    /// Whether the device gave up on its queues.
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// When to look again for an interrupt the guest asked for after the device had looked
    /// (see [`crate::devices::virtio::late_notify`]).
    pub fn recheck_due(&self) -> Option<Instant> {
        late_notify::earliest(&self.late)
    }

    /// Sends the interrupts the guest asked for after the device had looked; returns the
    /// queues that needed one.
    pub fn recheck(&mut self, now: Instant) -> Vec<&'static str> {
        if self.broken {
            return Vec::new();
        }
        let queues = self
            .late
            .iter_mut()
            .zip(&self.queues)
            .enumerate()
            .map(|(i, (late, q))| (late, q, queue_name(i)));
        late_notify::recheck(queues, &self.mem, self.interrupt.as_ref(), now)
    }

    fn break_device(&mut self, queue: &'static str, why: String, run: &mut Run) {
        self.broken = true;
        let _ = self.interrupt.trigger(InterruptReason::NeedsReset);
        run.faults.push(BalloonFault::Broken { queue, why });
    }

    /// Serves the chains available in queue `index`, at most [`BATCH`] of them, and
    /// interrupts the driver once if any came back.
    pub fn process_queue(&mut self, index: usize) -> Run {
        let mut run = Run::default();
        if self.broken || index >= self.queues.len() {
            return run;
        }
        let queue = queue_name(index);
        let start = self.queues[index].next_used();
        let mut served = 0;
        'refill: loop {
            let _ = self.queues[index].disable_notification(&self.mem);
            loop {
                if served == BATCH {
                    run.more = true;
                    break 'refill;
                }
                let head = match pop_chain(&mut self.queues[index], &self.mem) {
                    Popped::Chain(chain) => {
                        if let Err(fault) = self.serve(index, &chain) {
                            run.faults.push(fault);
                        }
                        chain.head()
                    }
                    Popped::Bad { head, error } => {
                        run.faults.push(BalloonFault::Chain { queue, error });
                        head
                    }
                    Popped::Empty => break,
                    Popped::Broken(why) => {
                        self.break_device(queue, why, &mut run);
                        return run;
                    }
                };
                // Nothing is written back on any queue: the used length is 0.
                if let Err(e) = self.queues[index].add_used(&self.mem, head, 0) {
                    self.break_device(queue, format!("used ring: {e}"), &mut run);
                    return run;
                }
                served += 1;
            }
            match self.queues[index].enable_notification(&self.mem) {
                Ok(true) => continue,
                _ => break,
            }
        }
        if served > 0 {
            let interrupt = self.interrupt.as_ref();
            self.late[index].notify(&mut self.queues[index], &self.mem, interrupt, start);
        }
        run
    }

    /// Does what one chain asks. A chain refused for what the guest put in it drops nothing.
    fn serve(&mut self, index: usize, chain: &GuestChain) -> Result<(), BalloonFault> {
        match index {
            INFLATE_QUEUE => {
                let runs = self.pfn_runs(index, chain)?;
                let bytes = self.drop_runs(&runs)?;
                self.stats.inflated.fetch_add(bytes, Ordering::Relaxed);
            }
            DEFLATE_QUEUE => {
                // Checked like an inflate, but the pages are simply the guest's again.
                self.pfn_runs(index, chain)?;
            }
            REPORTING_QUEUE => {
                let runs = self.reported_runs(chain)?;
                let bytes = self.drop_runs(&runs)?;
                self.stats.reported.fetch_add(bytes, Ordering::Relaxed);
            }
            _ => {}
        }
        Ok(())
    }

    /// The page frame numbers of an inflate or deflate chain, checked and merged into runs
    /// of contiguous guest memory.
    fn pfn_runs(&self, index: usize, chain: &GuestChain) -> Result<Vec<(u64, u64)>, BalloonFault> {
        let queue = queue_name(index);
        let head = chain.head();
        let len = chain.readable_len();
        if len == 0 || len % 4 != 0 || len / 4 > MAX_PFNS {
            return Err(BalloonFault::PfnList { queue, head, len });
        }
        let mut bytes = vec![0u8; len];
        chain
            .read_at(&self.mem, 0, &mut bytes)
            .map_err(|error| BalloonFault::Chain { queue, error })?;
        let mut runs: Vec<(u64, u64)> = Vec::new();
        for raw in bytes.chunks_exact(4) {
            let pfn = u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]);
            let addr = u64::from(pfn) << PFN_SHIFT;
            if !checked_range(&self.mem, addr, PAGE) {
                return Err(BalloonFault::Range {
                    queue,
                    head,
                    addr,
                    len: PAGE,
                });
            }
            match runs.last_mut() {
                Some((start, run_len)) if *start + *run_len == addr => *run_len += PAGE,
                _ => runs.push((addr, PAGE)),
            }
        }
        Ok(runs)
    }

    /// The free runs of a reporting chain, checked.
    fn reported_runs(&self, chain: &GuestChain) -> Result<Vec<(u64, u64)>, BalloonFault> {
        let head = chain.head();
        let mut runs = Vec::with_capacity(chain.writable().len());
        for seg in chain.writable() {
            let (addr, len) = (seg.addr.0, u64::from(seg.len));
            if !checked_range(&self.mem, addr, len) {
                return Err(BalloonFault::Range {
                    queue: queue_name(REPORTING_QUEUE),
                    head,
                    addr,
                    len,
                });
            }
            runs.push((addr, len));
        }
        Ok(runs)
    }

    /// Drops every run; returns the bytes dropped.
    fn drop_runs(&self, runs: &[(u64, u64)]) -> Result<u64, BalloonFault> {
        let mut total = 0;
        for &(addr, len) in runs {
            self.discard
                .discard(&self.mem, GuestAddress(addr), len)
                .map_err(|e| BalloonFault::Discard {
                    addr,
                    len,
                    why: e.to_string(),
                })?;
            total += len;
        }
        Ok(total)
    }
}

#[cfg(test)]
mod tests;

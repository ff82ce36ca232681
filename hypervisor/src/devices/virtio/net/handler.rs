//! Moving frames between the virtio-net queues and the tap.
//!
//! [`NetQueues`] owns the rx and tx queues while the device is active. It knows guest memory,
//! the queues, the [`VirtioInterrupt`] trait and a [`TapIo`], nothing of epoll, so tests drive
//! it with fake guest memory, a fake interrupt and a fake tap.
//!
//! The work is split by direction: `rx` (tap → guest: holding a frame until the guest has
//! room, deciding when to interrupt), `tx` (guest → tap: waiting for a writable tap), and
//! `ring`, the queue access both share (the next chain, used entries published with one index
//! update, the driver's `used_event`).
//!
//! What happens to bad input, by kind:
//! - a chain that loops, leaves guest RAM or mixes directions
//!   ([`GuestChain::parse`](crate::devices::virtio::chain::GuestChain::parse)), a tx chain with
//!   device-writable buffers, an rx chain with device-readable buffers or too small for a
//!   header, a tx frame shorter than the vnet and Ethernet headers or longer than
//!   [`MAX_FRAME_LEN`], a tx header that claims what the driver did not negotiate or points
//!   outside the frame ([`header::check_tx`](super::header::check_tx)): the chain is returned
//!   unused (length 0), the frame dropped and counted, a [`NetFault`] reported (the worker logs
//!   it, rate-limited), and the device goes on;
//! - a queue that is itself broken (a head index past the table, an available index claiming
//!   more chains than the ring holds, a used ring outside RAM) cannot be answered at all: the
//!   device sets DEVICE_NEEDS_RESET, interrupts, and leaves its queues alone until the driver
//!   resets it.

mod ring;
mod rx;
mod tx;

use std::num::Wrapping;
use std::sync::Arc;
use std::time::Instant;

use virtio_bindings::virtio_net::VIRTIO_NET_F_MRG_RXBUF;
use virtio_queue::{Queue, QueueT};

use super::header::{HeaderError, HDR_LEN, MAX_FRAME_LEN};
use super::{NetStats, TapIo};
use crate::devices::virtio::chain::{ChainError, GuestChain};
use crate::devices::virtio::interrupt::{InterruptReason, VirtioInterrupt};
use crate::devices::virtio::late_notify::RxTxLate;
use crate::memory::GuestMemory;

// What the tests (tests.rs) reach through `use super::*` and this module no longer uses itself.
#[cfg(test)]
use {
    super::header::{NetHeader, ETH_HLEN, NUM_BUFFERS_OFFSET},
    std::io,
    std::sync::atomic::Ordering,
    vm_memory::GuestAddress,
};

/// Something wrong with what the guest put in a queue, or with a frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetFault {
    /// A chain that cannot be used at all; returned unused.
    #[error("virtio-net {queue} queue: {source}; returned unused")]
    Chain {
        /// "rx" or "tx".
        queue: &'static str,
        /// What is wrong with the chain.
        source: ChainError,
    },
    /// A tx chain with device-writable buffers or an rx chain with device-readable ones.
    #[error("virtio-net {queue} queue: chain {head} has buffers of the wrong direction; returned unused")]
    WrongDirection {
        /// "rx" or "tx".
        queue: &'static str,
        /// The head index.
        head: u16,
    },
    /// An rx chain that cannot hold even the vnet header.
    #[error("virtio-net rx queue: chain {head} has {writable} writable bytes, less than a header; returned unused")]
    RxBufferTooSmall {
        /// The head index.
        head: u16,
        /// Its writable bytes.
        writable: usize,
    },
    /// A tx frame shorter than the vnet header plus an Ethernet header.
    #[error("virtio-net tx: chain {head} holds {len} bytes, less than the vnet and Ethernet headers; dropped")]
    Undersized {
        /// The head index.
        head: u16,
        /// Its readable bytes.
        len: usize,
    },
    /// A tx frame longer than 64 KiB plus headers.
    #[error("virtio-net tx: chain {head} holds {len} bytes, more than a frame can be; dropped")]
    Oversized {
        /// The head index.
        head: u16,
        /// Its readable bytes.
        len: usize,
    },
    /// A tx header the device refuses.
    #[error("virtio-net tx: chain {head}: {source}; dropped")]
    Header {
        /// The head index.
        head: u16,
        /// What is wrong with it.
        source: HeaderError,
    },
    /// A frame from the tap that the guest's buffers cannot hold.
    #[error("virtio-net rx: a {len}-byte frame does not fit the guest's buffers ({room} bytes); dropped")]
    NoRoom {
        /// The frame's length with the vnet header.
        len: usize,
        /// What the guest offered.
        room: usize,
    },
    /// A frame from the tap the guest cannot take (an offload it did not negotiate) or that is
    /// too short or too long.
    #[error("virtio-net rx: a {len}-byte frame from the tap ({why}); dropped")]
    BadTapFrame {
        /// Its length with the vnet header.
        len: usize,
        /// Why.
        why: &'static str,
    },
    /// Reading the tap failed (other than "nothing queued").
    #[error("virtio-net rx: reading the tap: {0}")]
    TapRead(String),
    /// The tap refused a frame.
    #[error("virtio-net tx: the tap refused a frame: {0}; dropped")]
    TapWrite(String),
    /// The queue itself is broken; the device needs a reset.
    #[error("virtio-net {queue} queue: {why}; device needs a reset")]
    Broken {
        /// "rx", "tx" or "used ring".
        queue: &'static str,
        /// What is wrong.
        why: String,
    },
}

/// What one run over a queue did.
#[derive(Debug, Default)]
pub struct Run {
    /// What the guest (or the tap) did wrong.
    pub faults: Vec<NetFault>,
    /// The batch limit stopped the run with work left: run it again after other events.
    pub more: bool,
}

/// The active device's queues and tap.
#[derive(Debug)]
pub struct NetQueues<T> {
    mem: GuestMemory,
    rx: Queue,
    tx: Queue,
    interrupt: Arc<dyn VirtioInterrupt>,
    tap: T,
    acked: u64,
    stats: Arc<NetStats>,
    /// The frame being received: vnet header and frame, as the tap gave them.
    rx_frame: Vec<u8>,
    /// Its length, while one was read and not yet placed.
    rx_pending: Option<usize>,
    /// The tap may have frames queued (cleared when a read says it has none).
    tap_readable: bool,
    rx_chains: Vec<GuestChain>,
    rx_used: Vec<(u16, u32)>,
    /// The used index when the driver was last considered for an rx interrupt.
    rx_signalled: Wrapping<u16>,
    late: RxTxLate,
    tx_frame: Vec<u8>,
    /// The tap refused a frame with EAGAIN; transmission waits for it to become writable.
    tx_blocked: bool,
    broken: bool,
}

impl<T: TapIo> NetQueues<T> {
    /// Takes over the rx and tx queues; `acked` are the features the driver accepted.
    pub fn new(
        mem: GuestMemory,
        [rx, tx]: [Queue; 2],
        interrupt: Arc<dyn VirtioInterrupt>,
        tap: T,
        acked: u64,
        stats: Arc<NetStats>,
    ) -> Self {
        let rx_signalled = Wrapping(rx.next_used());
        NetQueues {
            mem,
            rx,
            tx,
            interrupt,
            tap,
            acked,
            stats,
            // One byte more than the largest frame, so a longer one shows as too long.
            rx_frame: vec![0u8; HDR_LEN + MAX_FRAME_LEN + 1],
            rx_pending: None,
            tap_readable: true,
            rx_chains: Vec::new(),
            rx_used: Vec::new(),
            rx_signalled,
            late: RxTxLate::default(),
            tx_frame: vec![0u8; HDR_LEN + MAX_FRAME_LEN],
            tx_blocked: false,
            broken: false,
        }
    }

    /// The tap.
    pub fn tap(&self) -> &T {
        &self.tap
    }

    /// Whether the device gave up on its queues.
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// Whether transmission waits for the tap to become writable.
    pub fn tx_blocked(&self) -> bool {
        self.tx_blocked
    }

    /// Whether a frame read from the tap waits for rx buffers.
    pub fn rx_pending(&self) -> bool {
        self.rx_pending.is_some()
    }

    /// The tap has (new) frames queued: an edge on its descriptor.
    pub fn tap_readable(&mut self) {
        self.tap_readable = true;
    }

    /// When to look again for an interrupt the guest asked for after the device had looked
    /// (see [`crate::devices::virtio::late_notify`]).
    pub fn recheck_due(&self) -> Option<Instant> {
        self.late.due()
    }

    /// Sends the interrupts the guest asked for after the device had looked; returns the
    /// queues that needed one.
    pub fn recheck(&mut self, now: Instant) -> Vec<&'static str> {
        if self.broken {
            return Vec::new();
        }
        let interrupt = self.interrupt.as_ref();
        self.late
            .recheck(&self.rx, &self.tx, &self.mem, interrupt, now)
    }

    fn mrg_rxbuf(&self) -> bool {
        self.acked & (1 << VIRTIO_NET_F_MRG_RXBUF) != 0
    }

    fn break_device(&mut self, fault: NetFault, run: &mut Run) {
        self.broken = true;
        let _ = self.interrupt.trigger(InterruptReason::NeedsReset);
        run.faults.push(fault);
    }
}

#[cfg(test)]
pub(crate) mod tests;

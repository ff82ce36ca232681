//! Moving packets between the vsock queues and the backend.
//!
//! [`VsockQueues`] owns the device's RX and TX queues while it is active. It knows guest memory,
//! the queues and the [`VirtioInterrupt`] trait, nothing of epoll or eventfds, so tests drive
//! it with fake guest memory, a fake interrupt and any [`VsockBackend`].
//!
//! What happens to bad input, by kind:
//! - a chain that is malformed (loops, leaves RAM, wrong direction, header/length mismatch,
//!   oversized) is returned to the guest unused (length 0) and reported as a [`VsockFault`];
//!   the packet is dropped, the device goes on;
//! - a head index past the queue, or an available index claiming more chains than the queue
//!   holds, cannot be returned at all: the device is marked broken (DEVICE_NEEDS_RESET, config
//!   interrupt) and stops using its queues until the driver resets it;
//! - packets that are well-formed but wrong for the protocol go to the backend, which resets
//!   the connection (see [`super::unix::MuxerError`]).

use std::sync::Arc;
use std::time::Instant;

use virtio_queue::{Queue, QueueOwnedT, QueueT};

use super::defs::MAX_PKT_PAYLOAD;
use super::packet::{self, PacketError, HDR_LEN};
use super::unix::MuxerError;
use super::VsockBackend;
use crate::devices::virtio::chain::{pop_chain, Popped};
use crate::devices::virtio::interrupt::{InterruptReason, VirtioInterrupt};
use crate::devices::virtio::late_notify::RxTxLate;
use crate::memory::GuestMemory;

/// Something wrong with what the guest put in a queue.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VsockFault {
    /// A chain that cannot carry a packet; returned unused.
    #[error("vsock: {0}; chain returned unused")]
    Packet(#[from] PacketError),
    /// The backend refused the packet (it reset or dropped it).
    #[error(transparent)]
    Backend(#[from] MuxerError),
    /// The queue itself is broken; the device needs a reset.
    #[error("vsock {queue} queue: {why}; device needs a reset")]
    Broken {
        /// "rx" or "tx".
        queue: &'static str,
        /// What is wrong.
        why: String,
    },
}

/// The active device's queues and backend.
#[derive(Debug)]
pub struct VsockQueues<B> {
    mem: GuestMemory,
    rx: Queue,
    tx: Queue,
    interrupt: Arc<dyn VirtioInterrupt>,
    backend: B,
    payload: Vec<u8>,
    rx_buf: Vec<u8>,
    broken: bool,
    late: RxTxLate,
}

impl<B: VsockBackend> VsockQueues<B> {
    /// Takes over the RX and TX queues.
    pub fn new(
        mem: GuestMemory,
        rx: Queue,
        tx: Queue,
        interrupt: Arc<dyn VirtioInterrupt>,
        backend: B,
    ) -> Self {
        VsockQueues {
            mem,
            rx,
            tx,
            interrupt,
            backend,
            payload: Vec::with_capacity(4096),
            rx_buf: vec![0u8; MAX_PKT_PAYLOAD],
            broken: false,
            late: RxTxLate::default(),
        }
    }

    /// The backend.
    pub fn backend(&mut self) -> &mut B {
        &mut self.backend
    }

    /// The backend, shared.
    pub fn backend_ref(&self) -> &B {
        &self.backend
    }

    /// Whether the device gave up on its queues.
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// Where the device is in its queues (its own positions, which the guest's rings may be
    /// ahead of), for diagnosis.
    pub fn describe(&self) -> String {
        format!(
            "rx next_avail={} next_used={}, tx next_avail={} next_used={}{}",
            self.rx.next_avail(),
            self.rx.next_used(),
            self.tx.next_avail(),
            self.tx.next_used(),
            if self.broken { ", broken" } else { "" }
        )
    }

    fn break_device(&mut self, fault: VsockFault, faults: &mut Vec<VsockFault>) {
        self.broken = true;
        let _ = self.interrupt.trigger(InterruptReason::NeedsReset);
        faults.push(fault);
    }

    fn used(q: &mut Queue, mem: &GuestMemory, head: u16, len: u32) -> Result<(), VsockFault> {
        q.add_used(mem, head, len).map_err(|e| VsockFault::Broken {
            queue: "used ring",
            why: e.to_string(),
        })
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

    /// Sends every packet the guest queued for transmission to the backend.
    pub fn process_tx(&mut self) -> Vec<VsockFault> {
        let mut faults = Vec::new();
        if self.broken {
            return faults;
        }
        let mut used_any = false;
        let start = self.tx.next_used();
        loop {
            let _ = self.tx.disable_notification(&self.mem);
            loop {
                let (head, result) = match pop_chain(&mut self.tx, &self.mem) {
                    Popped::Empty => break,
                    Popped::Broken(why) => {
                        self.break_device(VsockFault::Broken { queue: "tx", why }, &mut faults);
                        return faults;
                    }
                    Popped::Bad { head, error } => (head, Err(PacketError::from(error).into())),
                    Popped::Chain(chain) => {
                        let r = packet::read_tx(&self.mem, &chain, &mut self.payload);
                        (chain.head(), r.map_err(VsockFault::from))
                    }
                };
                match result {
                    Ok(hdr) => {
                        if let Err(e) = self.backend.send_pkt(&hdr, &self.payload) {
                            faults.push(e.into());
                        }
                    }
                    Err(f) => faults.push(f),
                }
                if let Err(f) = Self::used(&mut self.tx, &self.mem, head, 0) {
                    self.break_device(f, &mut faults);
                    return faults;
                }
                used_any = true;
            }
            match self.tx.enable_notification(&self.mem) {
                Ok(true) => continue,
                _ => break,
            }
        }
        if used_any {
            let interrupt = self.interrupt.as_ref();
            self.late
                .tx
                .notify(&mut self.tx, &self.mem, interrupt, start);
        }
        faults
    }

    /// Fills the guest's RX buffers with what the backend owes it.
    pub fn process_rx(&mut self) -> Vec<VsockFault> {
        let mut faults = Vec::new();
        if self.broken {
            return faults;
        }
        let mut used_any = false;
        let start = self.rx.next_used();
        'refill: loop {
            while self.backend.has_pending_rx() {
                let chain = match pop_chain(&mut self.rx, &self.mem) {
                    Popped::Empty => break,
                    Popped::Broken(why) => {
                        self.break_device(VsockFault::Broken { queue: "rx", why }, &mut faults);
                        return faults;
                    }
                    Popped::Bad { head, error } => {
                        faults.push(PacketError::from(error).into());
                        if let Err(f) = Self::used(&mut self.rx, &self.mem, head, 0) {
                            self.break_device(f, &mut faults);
                            return faults;
                        }
                        used_any = true;
                        continue;
                    }
                    Popped::Chain(c) => c,
                };
                let written = match packet::rx_capacity(&chain) {
                    Err(e) => {
                        faults.push(e.into());
                        0
                    }
                    Ok(cap) => match self.backend.recv_pkt(&mut self.rx_buf[..cap]) {
                        None => {
                            // Nothing after all (the stream had no data yet): keep the buffer.
                            self.rx.go_to_previous_position();
                            break 'refill;
                        }
                        Some(mut hdr) => {
                            let len = (hdr.len as usize).min(cap);
                            hdr.len = len as u32;
                            match packet::write_rx(&self.mem, &chain, &hdr, &self.rx_buf[..len]) {
                                Ok(n) => n,
                                Err(e) => {
                                    faults.push(e.into());
                                    0
                                }
                            }
                        }
                    },
                };
                if let Err(f) = Self::used(&mut self.rx, &self.mem, chain.head(), written) {
                    self.break_device(f, &mut faults);
                    return faults;
                }
                used_any = true;
            }
            if !self.backend.has_pending_rx() {
                break;
            }
            // Out of buffers: ask the guest to notify when it adds some, unless it just did.
            match self.rx.enable_notification(&self.mem) {
                Ok(true) => continue,
                _ => break,
            }
        }
        if used_any {
            let interrupt = self.interrupt.as_ref();
            self.late
                .rx
                .notify(&mut self.rx, &self.mem, interrupt, start);
        }
        faults
    }
}

/// The size of a header, exported for tests that lay out RX buffers.
pub const RX_HEADER: usize = HDR_LEN;

#[cfg(test)]
pub(crate) mod tests;

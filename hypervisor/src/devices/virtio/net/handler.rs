//! Moving frames between the virtio-net queues and the tap.
//!
//! [`NetQueues`] owns the rx and tx queues while the device is active. It knows guest memory,
//! the queues, the [`VirtioInterrupt`] trait and a [`TapIo`], nothing of epoll, so tests drive
//! it with fake guest memory, a fake interrupt and a fake tap.
//!
//! Receive (tap → guest). A frame is read from the tap only when the guest has made at least
//! one rx buffer available: with no buffers the tap is not read at all, its queue fills and the
//! host kernel drops (that is the back-pressure, and nothing is buffered here). A frame read
//! but not yet placed (it needs more mergeable buffers than the guest has posted) is held, one
//! at most, until the guest adds buffers; the device then asks for a notification, and the
//! worker resumes on the guest's kick. With MRG_RXBUF a frame spans as many chains as it needs
//! and `num_buffers` says how many; all of them are published in the used ring with one index
//! update, because a driver that sees the first buffer of a frame before the others drops it.
//! Without MRG_RXBUF a frame must fit one chain.
//!
//! Transmit (guest → tap). Each chain is one frame: the vnet header, then the Ethernet frame.
//! A frame the tap cannot take now (`EAGAIN`) stays in the queue, unused, and transmission
//! stops until the tap is writable again; nothing is copied aside and nothing spins.
//!
//! What happens to bad input, by kind:
//! - a chain that loops, leaves guest RAM or mixes directions ([`GuestChain::parse`]), a tx
//!   chain with device-writable buffers, an rx chain with device-readable buffers or too small
//!   for a header, a tx frame shorter than the vnet and Ethernet headers or longer than
//!   [`MAX_FRAME_LEN`], a tx header that claims what the driver did not negotiate or points
//!   outside the frame ([`header::check_tx`]): the chain is returned unused (length 0), the
//!   frame dropped and counted, a [`NetFault`] reported (the worker logs it, rate-limited),
//!   and the device goes on;
//! - a queue that is itself broken (a head index past the table, an available index claiming
//!   more chains than the ring holds, a used ring outside RAM) cannot be answered at all: the
//!   device sets DEVICE_NEEDS_RESET, interrupts, and leaves its queues alone until the driver
//!   resets it.

use std::io;
use std::num::Wrapping;
use std::sync::atomic::{fence, Ordering};
use std::sync::Arc;

use virtio_bindings::virtio_net::VIRTIO_NET_F_MRG_RXBUF;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Address, Bytes, GuestAddress};

use super::header::{
    self, HeaderError, NetHeader, ETH_HLEN, HDR_LEN, MAX_FRAME_LEN, NUM_BUFFERS_OFFSET,
};
use super::{NetStats, TapIo, BATCH};
use crate::devices::virtio::chain::{ChainError, GuestChain};
use crate::devices::virtio::interrupt::{InterruptReason, VirtioInterrupt};
use crate::memory::GuestMemory;

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

enum Next {
    Chain(GuestChain),
    Bad(NetFault, u16),
    Empty,
    Broken(NetFault),
}

fn next_chain(q: &mut Queue, mem: &GuestMemory, queue: &'static str) -> Next {
    let chain = match q.iter(mem) {
        Ok(mut it) => it.next(),
        Err(e) => {
            return Next::Broken(NetFault::Broken {
                queue,
                why: e.to_string(),
            })
        }
    };
    let Some(chain) = chain else {
        return Next::Empty;
    };
    let head = chain.head_index();
    match GuestChain::parse(chain) {
        Ok(c) => Next::Chain(c),
        Err(e @ ChainError::Empty { .. }) => Next::Broken(NetFault::Broken {
            queue,
            why: e.to_string(),
        }),
        Err(source) => Next::Bad(NetFault::Chain { queue, source }, head),
    }
}

/// Puts `entries` (head, length) in the used ring and then publishes them with one index
/// update, so the driver sees all of a frame's buffers or none.
fn publish_used(q: &mut Queue, mem: &GuestMemory, entries: &[(u16, u32)]) -> Result<(), String> {
    let size = q.size();
    let ring = GuestAddress(q.used_ring());
    let base = Wrapping(q.next_used());
    for (i, (head, len)) in entries.iter().enumerate() {
        if *head >= size {
            return Err(format!("head {head} is past the queue size {size}"));
        }
        let slot = (base + Wrapping(i as u16)).0 % size;
        let mut elem = [0u8; 8];
        elem[..4].copy_from_slice(&u32::from(*head).to_le_bytes());
        elem[4..].copy_from_slice(&len.to_le_bytes());
        let at = ring
            .checked_add(4 + 8 * u64::from(slot))
            .ok_or("used ring address overflows")?;
        mem.write_slice(&elem, at).map_err(|e| e.to_string())?;
    }
    let next = base + Wrapping(entries.len() as u16);
    let idx = ring.checked_add(2).ok_or("used ring address overflows")?;
    // Release: the elements are visible before the index that publishes them.
    mem.store(next.0.to_le(), idx, Ordering::Release)
        .map_err(|e| e.to_string())?;
    q.set_next_used(next.0);
    Ok(())
}

/// The driver's `used_event` (the used index it wants an interrupt at), read from the end of
/// the available ring.
fn used_event(q: &Queue, mem: &GuestMemory) -> Option<Wrapping<u16>> {
    let at = GuestAddress(q.avail_ring()).checked_add(4 + 2 * u64::from(q.size()))?;
    mem.load::<u16>(at, Ordering::Acquire)
        .ok()
        .map(|v| Wrapping(u16::from_le(v)))
}

enum Delivery {
    Done,
    Dropped,
    /// Not enough buffers yet; the chains from this available-ring position on were looked at
    /// and must be put back.
    NoRoom(u16),
    Broken,
}

enum Sent {
    Ok,
    Blocked,
    Dropped(NetFault),
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

    fn mrg_rxbuf(&self) -> bool {
        self.acked & (1 << VIRTIO_NET_F_MRG_RXBUF) != 0
    }

    fn break_device(&mut self, fault: NetFault, run: &mut Run) {
        self.broken = true;
        let _ = self.interrupt.trigger(InterruptReason::NeedsReset);
        run.faults.push(fault);
    }

    /// Moves frames from the tap to the guest until the tap is empty, the guest has no
    /// buffers left (then it asks the driver to notify when it adds some), or the batch is
    /// done.
    pub fn process_rx(&mut self) -> Run {
        let mut run = Run::default();
        if self.broken {
            return run;
        }
        // Kicks are only needed when the device runs out of buffers, which re-enables them.
        let _ = self.rx.disable_notification(&self.mem);
        let mut delivered = 0;
        loop {
            if delivered == BATCH {
                run.more = self.rx_pending.is_some() || self.tap_readable;
                break;
            }
            let len = match self.rx_pending {
                Some(len) => len,
                None => {
                    if !self.tap_readable {
                        break;
                    }
                    match self.rx_has_buffers() {
                        Ok(true) => {}
                        Ok(false) => match self.rx.enable_notification(&self.mem) {
                            // Buffers arrived while notifications were off.
                            Ok(true) => continue,
                            Ok(false) => break,
                            Err(e) => {
                                let why = e.to_string();
                                self.break_device(NetFault::Broken { queue: "rx", why }, &mut run);
                                return run;
                            }
                        },
                        Err(fault) => {
                            self.break_device(fault, &mut run);
                            return run;
                        }
                    }
                    match self.read_tap() {
                        Ok(Some(len)) => len,
                        Ok(None) => break,
                        Err(fault) => {
                            run.faults.push(fault);
                            continue;
                        }
                    }
                }
            };
            self.rx_pending = Some(len);
            match self.deliver(len, &mut run) {
                Delivery::Done => {
                    self.rx_pending = None;
                    delivered += 1;
                }
                Delivery::Dropped => self.rx_pending = None,
                Delivery::NoRoom(resume) => {
                    // Ask for a kick once the driver adds a buffer past the ones seen, then
                    // put those back for the next attempt.
                    let more = self.rx.enable_notification(&self.mem);
                    self.rx.set_next_avail(resume);
                    match more {
                        Ok(true) => continue,
                        Ok(false) => break,
                        Err(e) => {
                            let why = e.to_string();
                            self.break_device(NetFault::Broken { queue: "rx", why }, &mut run);
                            return run;
                        }
                    }
                }
                Delivery::Broken => return run,
            }
        }
        self.signal_rx();
        run
    }

    fn rx_has_buffers(&self) -> Result<bool, NetFault> {
        self.rx
            .avail_idx(&self.mem, Ordering::Acquire)
            .map(|idx| idx != Wrapping(self.rx.next_avail()))
            .map_err(|e| NetFault::Broken {
                queue: "rx",
                why: e.to_string(),
            })
    }

    /// Reads one frame: `Ok(None)` when the tap has none queued; an error for a frame that is
    /// dropped.
    fn read_tap(&mut self) -> Result<Option<usize>, NetFault> {
        let n = loop {
            match self.tap.read_frame(&mut self.rx_frame) {
                // A tap never reads 0 bytes; a detached or closed backend might.
                Ok(0) => {
                    self.tap_readable = false;
                    return Ok(None);
                }
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.tap_readable = false;
                    return Ok(None);
                }
                Err(e) => {
                    // Wait for the next edge rather than retrying a tap in a bad state.
                    self.tap_readable = false;
                    return Err(NetFault::TapRead(e.to_string()));
                }
            }
        };
        let why = if n < HDR_LEN + ETH_HLEN {
            Some("shorter than the vnet and Ethernet headers")
        } else if n > HDR_LEN + MAX_FRAME_LEN {
            Some("longer than a frame can be")
        } else if !header::rx_acceptable(&NetHeader::parse(&self.rx_frame), self.acked) {
            Some("an offload the driver did not negotiate")
        } else {
            None
        };
        match why {
            Some(why) => {
                NetStats::add(&self.stats.rx_dropped, 1);
                Err(NetFault::BadTapFrame { len: n, why })
            }
            None => Ok(Some(n)),
        }
    }

    /// Returns the chains collected so far and `bad` (if any) unused, with one index update.
    fn return_unused(&mut self, bad: Option<u16>) -> Result<(), String> {
        self.rx_used.clear();
        self.rx_used
            .extend(self.rx_chains.drain(..).map(|c| (c.head(), 0)));
        self.rx_used.extend(bad.map(|h| (h, 0)));
        publish_used(&mut self.rx, &self.mem, &self.rx_used)
    }

    /// Places the pending frame of `len` bytes (vnet header included) in rx buffers.
    fn deliver(&mut self, len: usize, run: &mut Run) -> Delivery {
        let mrg = self.mrg_rxbuf();
        self.rx_chains.clear();
        let mut room = 0usize;
        // Where to come back to when the frame cannot be placed yet.
        let mut resume = self.rx.next_avail();
        while room < len && (mrg || self.rx_chains.is_empty()) {
            let (fault, head) = match next_chain(&mut self.rx, &self.mem, "rx") {
                Next::Empty => {
                    if self.rx_chains.len() >= usize::from(self.rx.size()) {
                        // The whole ring is ours and still too small: no buffer the driver
                        // can still add would help. The buffers stay for the next frame.
                        self.rx.set_next_avail(resume);
                        self.rx_chains.clear();
                        let fault = NetFault::NoRoom { len, room };
                        return self.drop_frame(fault, run);
                    }
                    self.rx_chains.clear();
                    return Delivery::NoRoom(resume);
                }
                Next::Broken(fault) => {
                    self.break_device(fault, run);
                    return Delivery::Broken;
                }
                Next::Bad(fault, head) => (fault, head),
                Next::Chain(c) => {
                    let head = c.head();
                    if c.readable_len() > 0 {
                        let queue = "rx";
                        (NetFault::WrongDirection { queue, head }, head)
                    } else if c.writable_len() < HDR_LEN {
                        let writable = c.writable_len();
                        (NetFault::RxBufferTooSmall { head, writable }, head)
                    } else {
                        room += c.writable_len();
                        self.rx_chains.push(c);
                        continue;
                    }
                }
            };
            // A bad chain goes back unused, and so do the good ones gathered before it (a
            // frame's buffers must be consecutive in the used ring); the frame waits for the
            // next ones.
            run.faults.push(fault);
            NetStats::add(&self.stats.rx_dropped, 1);
            if let Err(why) = self.return_unused(Some(head)) {
                self.break_device(NetFault::Broken { queue: "rx", why }, run);
                return Delivery::Broken;
            }
            room = 0;
            resume = self.rx.next_avail();
        }
        if room < len {
            // Without mergeable buffers a frame must fit one chain: drop the frame, keep the
            // chain for the next one.
            self.rx.set_next_avail(resume);
            self.rx_chains.clear();
            return self.drop_frame(NetFault::NoRoom { len, room }, run);
        }
        let count = u16::try_from(self.rx_chains.len()).unwrap_or(u16::MAX);
        self.rx_frame[NUM_BUFFERS_OFFSET..NUM_BUFFERS_OFFSET + 2]
            .copy_from_slice(&count.to_le_bytes());
        self.rx_used.clear();
        let mut at = 0;
        for c in &self.rx_chains {
            let n = c.writable_len().min(len - at);
            if n == 0 {
                self.rx_used.push((c.head(), 0));
                continue;
            }
            if c.write_at(&self.mem, 0, &self.rx_frame[at..at + n])
                .is_err()
            {
                // Cannot happen: the chain was checked to be in RAM.
                self.rx_used.clear();
                let source = ChainError::Access { head: c.head() };
                run.faults.push(NetFault::Chain {
                    queue: "rx",
                    source,
                });
                break;
            }
            self.rx_used.push((c.head(), n as u32));
            at += n;
        }
        if self.rx_used.is_empty() {
            NetStats::add(&self.stats.rx_dropped, 1);
            if let Err(why) = self.return_unused(None) {
                self.break_device(NetFault::Broken { queue: "rx", why }, run);
                return Delivery::Broken;
            }
            return Delivery::Dropped;
        }
        self.rx_chains.clear();
        if let Err(why) = publish_used(&mut self.rx, &self.mem, &self.rx_used) {
            self.break_device(NetFault::Broken { queue: "rx", why }, run);
            return Delivery::Broken;
        }
        NetStats::add(&self.stats.rx_frames, 1);
        NetStats::add(&self.stats.rx_bytes, (len - HDR_LEN) as u64);
        Delivery::Done
    }

    fn drop_frame(&mut self, fault: NetFault, run: &mut Run) -> Delivery {
        NetStats::add(&self.stats.rx_dropped, 1);
        run.faults.push(fault);
        Delivery::Dropped
    }

    /// Interrupts the driver if buffers were used since the last time and it asked for it
    /// (with EVENT_IDX: the used index passed its `used_event`).
    fn signal_rx(&mut self) {
        let now = Wrapping(self.rx.next_used());
        let old = std::mem::replace(&mut self.rx_signalled, now);
        if now == old {
            return;
        }
        let wanted = if self.rx.event_idx_enabled() {
            // The used index store above before the used_event load.
            fence(Ordering::SeqCst);
            match used_event(&self.rx, &self.mem) {
                Some(event) => now - event - Wrapping(1) < now - old,
                None => true,
            }
        } else {
            true
        };
        if wanted {
            let _ = self.interrupt.trigger(InterruptReason::UsedBuffer);
        }
    }

    /// Sends the frames the guest queued to the tap, until the queue is empty, the tap is full
    /// (transmission then waits for [`NetQueues::tap_writable`]) or the batch is done.
    pub fn process_tx(&mut self) -> Run {
        let mut run = Run::default();
        if self.broken {
            return run;
        }
        // A retry after the tap drained (or a kick while it was full: one attempt, no spin).
        self.tx_blocked = false;
        let mut served = 0;
        'refill: loop {
            let _ = self.tx.disable_notification(&self.mem);
            loop {
                if served == BATCH {
                    run.more = true;
                    break 'refill;
                }
                let head = match next_chain(&mut self.tx, &self.mem, "tx") {
                    Next::Empty => break,
                    Next::Broken(fault) => {
                        self.break_device(fault, &mut run);
                        return run;
                    }
                    Next::Bad(fault, head) => {
                        NetStats::add(&self.stats.tx_dropped, 1);
                        run.faults.push(fault);
                        head
                    }
                    Next::Chain(c) => match self.transmit(&c) {
                        Sent::Ok => c.head(),
                        Sent::Blocked => {
                            // Leave the chain in the queue for the retry.
                            self.tx.go_to_previous_position();
                            self.tx_blocked = true;
                            NetStats::add(&self.stats.tx_waits, 1);
                            break 'refill;
                        }
                        Sent::Dropped(fault) => {
                            NetStats::add(&self.stats.tx_dropped, 1);
                            run.faults.push(fault);
                            c.head()
                        }
                    },
                };
                if let Err(e) = self.tx.add_used(&self.mem, head, 0) {
                    let why = format!("used ring: {e}");
                    self.break_device(NetFault::Broken { queue: "tx", why }, &mut run);
                    return run;
                }
                served += 1;
            }
            match self.tx.enable_notification(&self.mem) {
                Ok(true) => continue,
                _ => break,
            }
        }
        if served > 0 && self.tx.needs_notification(&self.mem).unwrap_or(true) {
            let _ = self.interrupt.trigger(InterruptReason::UsedBuffer);
        }
        run
    }

    /// The tap is writable again: resume a blocked transmission.
    pub fn tap_writable(&mut self) -> Run {
        if self.tx_blocked {
            self.process_tx()
        } else {
            Run::default()
        }
    }

    fn transmit(&mut self, c: &GuestChain) -> Sent {
        let head = c.head();
        if c.writable_len() > 0 {
            return Sent::Dropped(NetFault::WrongDirection { queue: "tx", head });
        }
        let len = c.readable_len();
        if len < HDR_LEN + ETH_HLEN {
            return Sent::Dropped(NetFault::Undersized { head, len });
        }
        if len > HDR_LEN + MAX_FRAME_LEN {
            return Sent::Dropped(NetFault::Oversized { head, len });
        }
        let frame = &mut self.tx_frame[..len];
        if let Err(source) = c.read_at(&self.mem, 0, frame) {
            return Sent::Dropped(NetFault::Chain {
                queue: "tx",
                source,
            });
        }
        let hdr = NetHeader::parse(frame);
        if let Err(source) = header::check_tx(&hdr, len - HDR_LEN, self.acked) {
            return Sent::Dropped(NetFault::Header { head, source });
        }
        loop {
            match self.tap.write_frame(frame) {
                Ok(_) => {
                    NetStats::add(&self.stats.tx_frames, 1);
                    NetStats::add(&self.stats.tx_bytes, (len - HDR_LEN) as u64);
                    return Sent::Ok;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Sent::Blocked,
                Err(e) => return Sent::Dropped(NetFault::TapWrite(e.to_string())),
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests;

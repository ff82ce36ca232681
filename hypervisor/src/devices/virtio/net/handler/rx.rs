//! The receive path of [`NetQueues`]: [`NetQueues::process_rx`] and the steps it takes.
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

use std::io;
use std::num::Wrapping;
use std::sync::atomic::{fence, Ordering};
use std::time::Instant;

use virtio_queue::QueueT;

use super::ring::publish_used;
use super::{NetFault, NetQueues, Run};
use crate::devices::virtio::chain::{pop_chain, ChainError, Popped};
use crate::devices::virtio::interrupt::InterruptReason;
use crate::devices::virtio::late_notify::{used_event, wants};
use crate::devices::virtio::net::header::{
    self, NetHeader, ETH_HLEN, HDR_LEN, MAX_FRAME_LEN, NUM_BUFFERS_OFFSET,
};
use crate::devices::virtio::net::{NetStats, TapIo, BATCH};

enum Delivery {
    Done,
    Dropped,
    /// Not enough buffers yet; the chains from this available-ring position on were looked at
    /// and must be put back.
    NoRoom(u16),
    Broken,
}

impl<T: TapIo> NetQueues<T> {
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
            let (fault, head) = match pop_chain(&mut self.rx, &self.mem) {
                Popped::Empty => {
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
                Popped::Broken(why) => {
                    self.break_device(NetFault::Broken { queue: "rx", why }, run);
                    return Delivery::Broken;
                }
                Popped::Bad { head, error } => {
                    let queue = "rx";
                    (
                        NetFault::Chain {
                            queue,
                            source: error,
                        },
                        head,
                    )
                }
                Popped::Chain(c) => {
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
                Some(event) => wants(event, old, now),
                None => true,
            }
        } else {
            true
        };
        if wanted {
            let _ = self.interrupt.trigger(InterruptReason::UsedBuffer);
        }
        self.late.rx.after_batch(old.0, wanted, Instant::now());
    }
}

//! The transmit path of [`NetQueues`]: [`NetQueues::process_tx`],
//! [`NetQueues::tap_writable`] and sending one frame.
//!
//! Transmit (guest → tap). Each chain is one frame: the vnet header, then the Ethernet frame.
//! A frame the tap cannot take now (`EAGAIN`) stays in the queue, unused, and transmission
//! stops until the tap is writable again; nothing is copied aside and nothing spins.

use std::io;

use virtio_queue::{QueueOwnedT, QueueT};

use super::{NetFault, NetQueues, Run};
use crate::devices::virtio::chain::{pop_chain, GuestChain, Popped};
use crate::devices::virtio::net::header::{self, NetHeader, ETH_HLEN, HDR_LEN, MAX_FRAME_LEN};
use crate::devices::virtio::net::{NetStats, TapIo, BATCH};

enum Sent {
    Ok,
    Blocked,
    Dropped(NetFault),
}

impl<T: TapIo> NetQueues<T> {
    /// Sends the frames the guest queued to the tap, until the queue is empty, the tap is full
    /// (transmission then waits for [`NetQueues::tap_writable`]) or the batch is done.
    pub fn process_tx(&mut self) -> Run {
        let mut run = Run::default();
        if self.broken {
            return run;
        }
        // A retry after the tap drained (or a kick while it was full: one attempt, no spin).
        self.tx_blocked = false;
        let start = self.tx.next_used();
        let mut served = 0;
        'refill: loop {
            let _ = self.tx.disable_notification(&self.mem);
            loop {
                if served == BATCH {
                    run.more = true;
                    break 'refill;
                }
                let head = match pop_chain(&mut self.tx, &self.mem) {
                    Popped::Empty => break,
                    Popped::Broken(why) => {
                        self.break_device(NetFault::Broken { queue: "tx", why }, &mut run);
                        return run;
                    }
                    Popped::Bad { head, error } => {
                        NetStats::add(&self.stats.tx_dropped, 1);
                        let queue = "tx";
                        run.faults.push(NetFault::Chain {
                            queue,
                            source: error,
                        });
                        head
                    }
                    Popped::Chain(c) => match self.transmit(&c) {
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
        if served > 0 {
            let interrupt = self.interrupt.as_ref();
            self.late
                .tx
                .notify(&mut self.tx, &self.mem, interrupt, start);
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

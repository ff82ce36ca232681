//! The virtio-net worker's epoll glue: the two queue eventfds and the tap.
//!
//! The tap is registered edge-triggered for input and output. An input edge means "frames may
//! be queued"; the handler reads until the tap says it has none, or until the guest has no
//! buffers, and then simply stops reading: with a level-triggered registration a full tap and
//! an empty rx ring would wake the loop forever, with an edge nothing happens until the next
//! frame arrives or the guest kicks the rx queue. An output edge matters only while a
//! transmission waits for the tap to drain. When a batch limit leaves work, the loop writes the
//! queue's own eventfd, so the other queue and the kill eventfd get their turn first.

use std::io;
use std::time::{Duration, Instant};

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::handler::{NetQueues, Run};
use super::{PollableTap, RX_QUEUE, TX_QUEUE};
use crate::devices::virtio::late_notify;
use crate::devices::virtio::worker::{add_fd, EpollHandler};
use crate::guest_warn;

const TOKEN_RX: u64 = RX_QUEUE as u64;
const TOKEN_TX: u64 = TX_QUEUE as u64;
const TOKEN_TAP: u64 = 2;

/// The worker's state: the queues (which own the tap), the queue eventfds, and the offloads the
/// tap takes when the loop starts.
#[derive(Debug)]
pub struct NetEventLoop<T> {
    queues: NetQueues<T>,
    evts: [EventFd; 2],
    offloads: u32,
}

impl<T: PollableTap> NetEventLoop<T> {
    /// Glue for `queues`, notified through the rx and tx eventfds; the tap takes `offloads`
    /// (`TUNSETOFFLOAD` flags) as the loop starts. That is after the activation returned: the
    /// first offload change of a fresh tap is slow (344 µs natively against 6 µs for the next
    /// ones), and until it is made the tap hands out plain frames, which every driver takes.
    pub fn new(queues: NetQueues<T>, evts: [EventFd; 2], offloads: u32) -> Self {
        NetEventLoop {
            queues,
            evts,
            offloads,
        }
    }

    fn finish(&self, index: usize, run: Run) {
        for f in run.faults {
            guest_warn!("{f}");
        }
        if run.more {
            let _ = self.evts[index].write(1);
        }
    }

    fn rx(&mut self) {
        let run = self.queues.process_rx();
        self.finish(RX_QUEUE, run);
    }

    fn tx(&mut self) {
        let run = self.queues.process_tx();
        self.finish(TX_QUEUE, run);
    }
}

impl<T: PollableTap> EpollHandler for NetEventLoop<T> {
    fn register(&mut self, epoll: &Epoll) -> io::Result<()> {
        self.queues.tap().set_offload(self.offloads)?;
        add_fd(epoll, &self.evts[RX_QUEUE], TOKEN_RX)?;
        add_fd(epoll, &self.evts[TX_QUEUE], TOKEN_TX)?;
        let events = EventSet::IN | EventSet::OUT | EventSet::EDGE_TRIGGERED;
        epoll.ctl(
            ControlOperation::Add,
            self.queues.tap().poll_fd(),
            EpollEvent::new(events, TOKEN_TAP),
        )?;
        // The driver may have queued frames, and the tap may hold some, before the worker ran.
        self.tx();
        self.rx();
        Ok(())
    }

    fn handle(&mut self, token: u64, events: EventSet) {
        match token {
            TOKEN_RX => {
                let _ = self.evts[RX_QUEUE].read();
                self.rx();
            }
            TOKEN_TX => {
                let _ = self.evts[TX_QUEUE].read();
                self.tx();
            }
            TOKEN_TAP => {
                if events.intersects(EventSet::OUT | EventSet::ERROR | EventSet::HANG_UP) {
                    let run = self.queues.tap_writable();
                    self.finish(TX_QUEUE, run);
                }
                if events.intersects(EventSet::IN | EventSet::ERROR | EventSet::HANG_UP) {
                    self.queues.tap_readable();
                    self.rx();
                }
            }
            _ => {}
        }
    }

    fn timeout(&self) -> Option<Duration> {
        late_notify::timeout(self.queues.recheck_due())
    }

    fn on_timeout(&mut self) {
        late_notify::warn_sent_late("net", &self.queues.recheck(Instant::now()));
    }
}

//! The balloon worker's epoll glue: one eventfd per queue. All the work happens in
//! [`BalloonQueues`]; this dispatches, re-arms a queue the batch limit left non-empty, rechecks
//! interrupts owed late, and logs (rate-limited) what the guest did wrong.

use std::io;
use std::time::{Duration, Instant};

use vmm_sys_util::epoll::{Epoll, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::discard::Discard;
use super::handler::BalloonQueues;
use crate::devices::virtio::late_notify;
use crate::devices::virtio::worker::{add_fd, EpollHandler};
use crate::guest_warn;

/// The worker's state: the queues and their eventfds (token = queue index).
#[derive(Debug)]
pub struct BalloonEventLoop<D> {
    queues: BalloonQueues<D>,
    evts: Vec<EventFd>,
}

impl<D: Discard + 'static> BalloonEventLoop<D> {
    /// Glue for `queues`, notified through `evts` (one per queue, in index order).
    pub fn new(queues: BalloonQueues<D>, evts: Vec<EventFd>) -> Self {
        BalloonEventLoop { queues, evts }
    }

    fn run(&mut self, index: usize) {
        let run = self.queues.process_queue(index);
        for f in run.faults {
            guest_warn!("{f}");
        }
        if run.more {
            // Come back after the other queues and the kill eventfd had their turn.
            let _ = self.evts[index].write(1);
        }
    }
}

impl<D: Discard + 'static> EpollHandler for BalloonEventLoop<D> {
    fn register(&mut self, epoll: &Epoll) -> io::Result<()> {
        for (index, evt) in self.evts.iter().enumerate() {
            add_fd(epoll, evt, index as u64)?;
        }
        // The driver may have queued chains before the worker was up.
        for index in 0..self.evts.len() {
            self.run(index);
        }
        Ok(())
    }

    fn handle(&mut self, token: u64, _events: EventSet) {
        let Some(index) = usize::try_from(token).ok().filter(|&i| i < self.evts.len()) else {
            return;
        };
        let _ = self.evts[index].read();
        self.run(index);
    }

    fn timeout(&self) -> Option<Duration> {
        late_notify::timeout(self.queues.recheck_due())
    }

    fn on_timeout(&mut self) {
        late_notify::warn_sent_late("virtio-balloon", &self.queues.recheck(Instant::now()));
    }
}

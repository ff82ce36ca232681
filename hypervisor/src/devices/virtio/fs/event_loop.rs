//! The virtio-fs worker's epoll glue: the two queue eventfds, and the thread setup the FUSE
//! server needs. All the work happens in [`FsQueues`]; this only dispatches, re-arms a queue the
//! batch limit left non-empty, rechecks interrupts owed late, and logs (rate-limited) what the
//! guest did wrong.

use std::io;
use std::time::{Duration, Instant};

use vmm_sys_util::epoll::{Epoll, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::handler::{FsFault, FsQueues};
use super::{HIPRIO_QUEUE, REQUEST_QUEUE};
use crate::devices::virtio::late_notify;
use crate::devices::virtio::worker::{add_fd, EpollHandler};
use crate::guest_warn;

const TOKEN_HIPRIO: u64 = HIPRIO_QUEUE as u64;
const TOKEN_REQUEST: u64 = REQUEST_QUEUE as u64;

/// The worker's state: the queues (which own the server) and the queue eventfds.
#[derive(Debug)]
pub struct FsEventLoop {
    queues: FsQueues,
    evts: [EventFd; 2],
}

impl FsEventLoop {
    /// Glue for `queues`, notified through the high-priority and request eventfds.
    pub fn new(queues: FsQueues, evts: [EventFd; 2]) -> Self {
        FsEventLoop { queues, evts }
    }

    fn report(faults: Vec<FsFault>) {
        for f in faults {
            guest_warn!("{f}");
        }
    }

    fn run(&mut self, index: usize) {
        let run = self.queues.process_queue(index);
        Self::report(run.faults);
        if run.more {
            // Come back after the other queue and the kill eventfd had their turn.
            let _ = self.evts[index].write(1);
        }
    }
}

impl EpollHandler for FsEventLoop {
    fn register(&mut self, epoll: &Epoll) -> io::Result<()> {
        add_fd(epoll, &self.evts[HIPRIO_QUEUE], TOKEN_HIPRIO)?;
        add_fd(epoll, &self.evts[REQUEST_QUEUE], TOKEN_REQUEST)?;
        // The driver may have queued requests before the worker was up.
        self.run(HIPRIO_QUEUE);
        self.run(REQUEST_QUEUE);
        Ok(())
    }

    fn handle(&mut self, token: u64, _events: EventSet) {
        let index = match token {
            TOKEN_HIPRIO => HIPRIO_QUEUE,
            TOKEN_REQUEST => REQUEST_QUEUE,
            _ => return,
        };
        let _ = self.evts[index].read();
        self.run(index);
    }

    fn timeout(&self) -> Option<Duration> {
        late_notify::timeout(self.queues.recheck_due())
    }

    fn on_timeout(&mut self) {
        late_notify::warn_sent_late("virtio-fs", &self.queues.recheck(Instant::now()));
    }
}

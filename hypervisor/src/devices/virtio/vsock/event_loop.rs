//! The vsock worker's epoll glue: which descriptor means what, and when to look at timers.
//! All the work happens in [`VsockQueues`] and the [`Muxer`]; this only dispatches, and logs
//! (rate-limited) what the guest did wrong.

use std::io;
use std::os::fd::BorrowedFd;
use std::time::{Duration, Instant};

use vmm_sys_util::epoll::{Epoll, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::handler::{VsockFault, VsockQueues};
use super::unix::muxer::Muxer;
use crate::devices::virtio::late_notify;
use crate::devices::virtio::worker::{add_fd, EpollHandler};
use crate::guest_warn;

const TOKEN_RXQ: u64 = 0;
const TOKEN_TXQ: u64 = 1;
const TOKEN_EVQ: u64 = 2;
const TOKEN_BACKEND: u64 = 3;
const TOKEN_LOG_STATE: u64 = 4;

/// Whether the receive queue may be filled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RxGate {
    /// It may.
    Open,
    /// A transport reset was posted and the driver has not handled it yet: what it would
    /// receive now, it would drop with the reset (`transport_reset`).
    AwaitingResetAck,
}

/// The worker's state: the queues (which own the muxer), the queue eventfds and the eventfd
/// on which the device asks for its state in the log.
#[derive(Debug)]
pub struct VsockEventLoop {
    queues: VsockQueues<Muxer>,
    rx_evt: EventFd,
    tx_evt: EventFd,
    ev_evt: EventFd,
    log_state: EventFd,
    gate: RxGate,
}

impl VsockEventLoop {
    /// Glue for `queues` notified through the three queue eventfds; a write to `log_state`
    /// makes the worker log the queues' and connections' state. `gate` is closed while a posted
    /// transport reset waits for the driver.
    pub fn new(
        queues: VsockQueues<Muxer>,
        evts: [EventFd; 3],
        log_state: EventFd,
        gate: RxGate,
    ) -> Self {
        let [rx_evt, tx_evt, ev_evt] = evts;
        VsockEventLoop {
            queues,
            rx_evt,
            tx_evt,
            ev_evt,
            log_state,
            gate,
        }
    }

    /// Fills the receive queue, unless the gate is closed (then the packets wait in the muxer).
    fn fill_rx(&mut self) {
        if self.gate == RxGate::Open {
            Self::report(self.queues.process_rx());
        }
    }

    /// Logs the device's state (asked for by the host, never by the guest: not rate-limited,
    /// and bounded by the connection limit).
    fn log_state(&self) {
        eprintln!("husk-vmm: vsock state: {}", self.queues.describe());
        for line in self.queues.backend_ref().describe() {
            eprintln!("husk-vmm: vsock state: {line}");
        }
    }

    fn report(faults: Vec<VsockFault>) {
        for f in faults {
            guest_warn!("{f}");
        }
    }
}

impl EpollHandler for VsockEventLoop {
    fn register(&mut self, epoll: &Epoll) -> io::Result<()> {
        add_fd(epoll, &self.rx_evt, TOKEN_RXQ)?;
        add_fd(epoll, &self.tx_evt, TOKEN_TXQ)?;
        add_fd(epoll, &self.ev_evt, TOKEN_EVQ)?;
        let fd = self.queues.backend().epoll_fd();
        // SAFETY: the muxer owns this epoll descriptor and outlives the worker's epoll use of
        // it (both live in this handler, which the worker drops only after its loop ended).
        let backend = unsafe { BorrowedFd::borrow_raw(fd) };
        add_fd(epoll, &backend, TOKEN_BACKEND)?;
        add_fd(epoll, &self.log_state, TOKEN_LOG_STATE)?;
        // Host connections may have queued while the device was not yet active.
        self.queues.backend().process_events();
        self.fill_rx();
        Ok(())
    }

    fn handle(&mut self, token: u64, _events: EventSet) {
        match token {
            TOKEN_RXQ => {
                let _ = self.rx_evt.read();
                self.fill_rx();
            }
            TOKEN_TXQ => {
                let _ = self.tx_evt.read();
                Self::report(self.queues.process_tx());
                self.fill_rx();
            }
            TOKEN_EVQ => {
                // The driver gave an event buffer back: after a transport reset, that is the
                // driver done with it. The device posts no other events; buffers just wait.
                let _ = self.ev_evt.read();
                self.gate = RxGate::Open;
                self.fill_rx();
            }
            TOKEN_BACKEND => {
                self.queues.backend().process_events();
                self.fill_rx();
            }
            TOKEN_LOG_STATE => {
                let _ = self.log_state.read();
                self.log_state();
            }
            _ => {}
        }
    }

    fn timeout(&self) -> Option<Duration> {
        let deadline = self.deadline()?;
        Some(deadline.saturating_duration_since(Instant::now()))
    }

    fn on_timeout(&mut self) {
        let now = Instant::now();
        late_notify::warn_sent_late("vsock", &self.queues.recheck(now));
        self.queues.backend().on_timeout(now);
        self.fill_rx();
    }
}

impl VsockEventLoop {
    /// The earliest of the connections' deadlines and the queues' late-interrupt recheck.
    fn deadline(&self) -> Option<Instant> {
        match (
            self.queues.backend_ref().next_deadline(),
            self.queues.recheck_due(),
        ) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

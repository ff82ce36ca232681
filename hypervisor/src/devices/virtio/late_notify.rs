//! Interrupts a guest asked for after the device had looked.
//!
//! With VIRTIO_RING_F_EVENT_IDX the driver writes `used_event` ("interrupt me once the used
//! index passes this") and then re-reads the used index; the device adds used buffers and then
//! reads `used_event`. Both sides fence between their write and their read, so one of them
//! always sees the other's write: either the device interrupts or the driver finds the buffers
//! itself. When that handshake fails anyway (the nested test host was seen to lose it: a guest
//! waiting with `used_event` behind the used index, no interrupt pending, both vCPUs halted),
//! the guest waits forever for buffers that are already there.
//!
//! [`LateNotify`] remembers used buffers the device did not interrupt for, and a device's worker
//! looks again a little later ([`FIRST_RECHECK`], then every [`RECHECK`] while some remain): if
//! the guest's `used_event` now falls among them, the guest asked for an interrupt that nobody
//! will send, and the device sends it late (and says so). A guest whose `used_event` never
//! reaches them (it polls, or keeps its callbacks off) gets nothing extra: no spurious
//! interrupts, and at most one read of `used_event` per queue per [`RECHECK`] while idle.
//!
//! Every device keeps one per queue: vsock, net, virtio-fs and the balloon.

use std::num::Wrapping;
use std::sync::atomic::{fence, Ordering};
use std::time::{Duration, Instant};

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

use super::interrupt::{InterruptReason, VirtioInterrupt};
use crate::memory::GuestMemory;

/// How long after a batch without an interrupt the device first looks again.
pub const FIRST_RECHECK: Duration = Duration::from_millis(50);
/// How often it looks again after that, while buffers remain un-notified.
pub const RECHECK: Duration = Duration::from_secs(1);

/// One queue's used buffers that no interrupt covered yet.
#[derive(Debug, Default)]
pub struct LateNotify {
    /// The first used index not covered by an interrupt.
    since: Option<Wrapping<u16>>,
    /// When to look again.
    due: Option<Instant>,
}

impl LateNotify {
    /// After a batch that moved the used index from `start`: `notified` is whether the device
    /// interrupted for it.
    pub fn after_batch(&mut self, start: u16, notified: bool, now: Instant) {
        if notified {
            self.since = None;
            self.due = None;
        } else if self.since.is_none() {
            self.since = Some(Wrapping(start));
            self.due = Some(now + FIRST_RECHECK);
        }
    }

    /// When the device should look again, if it should.
    pub fn due(&self) -> Option<Instant> {
        self.due
    }

    /// After a batch on `q` that moved its used index from `start`: interrupts the driver if it
    /// asked for one (or the queue cannot tell), remembers the buffers if not, and returns
    /// whether it interrupted.
    pub fn notify(
        &mut self,
        q: &mut Queue,
        mem: &GuestMemory,
        interrupt: &dyn VirtioInterrupt,
        start: u16,
    ) -> bool {
        let wanted = q.needs_notification(mem).unwrap_or(true);
        if wanted {
            let _ = interrupt.trigger(InterruptReason::UsedBuffer);
        }
        self.after_batch(start, wanted, Instant::now());
        wanted
    }

    /// Looks at `q`'s `used_event` now: true (and forgets the buffers) if the guest asks for an
    /// interrupt for buffers the device used without one.
    pub fn owed(&mut self, q: &Queue, mem: &GuestMemory, now: Instant) -> bool {
        let Some(since) = self.since else {
            return false;
        };
        if self.due.is_some_and(|d| d > now) {
            return false;
        }
        let next = Wrapping(q.next_used());
        fence(Ordering::SeqCst);
        let Some(used_event) = used_event(q, mem) else {
            self.since = None;
            self.due = None;
            return false;
        };
        if wants(used_event, since, next) {
            self.since = None;
            self.due = None;
            return true;
        }
        self.due = Some(now + RECHECK);
        false
    }
}

/// Rechecks each of a device's `(LateNotify, queue, name)` ([`LateNotify::owed`]), interrupts
/// the driver once if any queue is owed one, and returns the names of those that were.
pub fn recheck<'a>(
    queues: impl IntoIterator<Item = (&'a mut LateNotify, &'a Queue, &'static str)>,
    mem: &GuestMemory,
    interrupt: &dyn VirtioInterrupt,
    now: Instant,
) -> Vec<&'static str> {
    let owed: Vec<&'static str> = queues
        .into_iter()
        .filter_map(|(late, q, name)| late.owed(q, mem, now).then_some(name))
        .collect();
    if !owed.is_empty() {
        let _ = interrupt.trigger(InterruptReason::UsedBuffer);
    }
    owed
}

/// The late-interrupt state of a device with a receive and a transmit queue (vsock, net).
#[derive(Debug, Default)]
pub struct RxTxLate {
    /// The receive queue's.
    pub rx: LateNotify,
    /// The transmit queue's.
    pub tx: LateNotify,
}

impl RxTxLate {
    /// When to look again, if at all.
    pub fn due(&self) -> Option<Instant> {
        earliest([&self.rx, &self.tx])
    }

    /// [`recheck`] of the `rx` and `tx` queues.
    pub fn recheck(
        &mut self,
        rx: &Queue,
        tx: &Queue,
        mem: &GuestMemory,
        interrupt: &dyn VirtioInterrupt,
        now: Instant,
    ) -> Vec<&'static str> {
        let queues = [(&mut self.rx, rx, "rx"), (&mut self.tx, tx, "tx")];
        recheck(queues, mem, interrupt, now)
    }
}

/// A worker's epoll timeout for a recheck due at `due` (`None`: sleep until an event).
pub fn timeout(due: Option<Instant>) -> Option<Duration> {
    due.map(|d| d.saturating_duration_since(Instant::now()))
}

/// Warns (rate-limited, the guest drives it) that `device` sent interrupts late on `queues`.
pub fn warn_sent_late(device: &str, queues: &[&str]) {
    for queue in queues {
        crate::guest_warn!(
            "{device} {queue} queue: the guest asked for an interrupt for buffers the device \
             had already used without one (its used_event moved after the device read it); \
             sent late"
        );
    }
}

/// The earliest recheck among `queues`.
pub fn earliest<'a>(queues: impl IntoIterator<Item = &'a LateNotify>) -> Option<Instant> {
    queues.into_iter().filter_map(LateNotify::due).min()
}

/// The driver's `used_event` (the used index it wants an interrupt at), read from the end of
/// the available ring; `None` when that is outside guest RAM. The ring's address is the guest's:
/// checked, like every read of guest memory.
pub fn used_event(q: &Queue, mem: &GuestMemory) -> Option<Wrapping<u16>> {
    let at = q.avail_ring().checked_add(4 + 2 * u64::from(q.size()))?;
    mem.load::<u16>(GuestAddress(at), Ordering::Acquire)
        .ok()
        .map(|v| Wrapping(u16::from_le(v)))
}

/// Whether a driver whose `used_event` is `used_event` wants an interrupt for the used buffers
/// `[since, next)` (the EVENT_IDX rule, in wrapping arithmetic).
pub fn wants(used_event: Wrapping<u16>, since: Wrapping<u16>, next: Wrapping<u16>) -> bool {
    next - used_event - Wrapping(1) < next - since
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::chain::testing::{memory, TestQueue};

    fn set_used_event(mem: &GuestMemory, q: &Queue, v: u16) {
        let at = q.avail_ring() + 4 + 2 * u64::from(q.size());
        mem.write_obj(v.to_le(), GuestAddress(at)).unwrap();
    }

    #[test]
    fn the_event_idx_rule_in_wrapping_arithmetic() {
        let w = Wrapping;
        assert!(wants(w(5), w(3), w(8)), "5 is among 3..8");
        assert!(!wants(w(8), w(3), w(8)), "8 is not used yet");
        assert!(!wants(w(2), w(3), w(8)), "2 was covered before");
        assert!(wants(w(65535), w(65530), w(4)), "across the wrap");
    }

    #[test]
    fn an_interrupt_the_guest_asked_for_late_is_owed_once() {
        let mem = memory();
        let tq = TestQueue::new(&mem, 0, 16);
        let mut q = tq.queue();
        let t0 = Instant::now();
        let mut late = LateNotify::default();
        // The device used 3 buffers (0..3) and read a used_event that did not ask for them.
        q.set_next_used(3);
        set_used_event(&mem, &q, 7);
        late.after_batch(0, false, t0);
        assert_eq!(late.due(), Some(t0 + FIRST_RECHECK));
        assert!(!late.owed(&q, &mem, t0), "not due yet");
        assert!(
            !late.owed(&q, &mem, t0 + FIRST_RECHECK),
            "the guest does not want them"
        );
        assert_eq!(late.due(), Some(t0 + FIRST_RECHECK + RECHECK));
        // Now the guest says it wants an interrupt once index 1 is used: it is, long ago.
        set_used_event(&mem, &q, 1);
        let later = t0 + FIRST_RECHECK + RECHECK;
        assert!(late.owed(&q, &mem, later));
        assert!(!late.owed(&q, &mem, later), "owed once");
        assert_eq!(late.due(), None);
    }

    #[test]
    fn an_interrupt_sent_covers_everything_before() {
        let mem = memory();
        let tq = TestQueue::new(&mem, 0, 16);
        let mut q = tq.queue();
        let t0 = Instant::now();
        let mut late = LateNotify::default();
        late.after_batch(0, false, t0);
        q.set_next_used(5);
        late.after_batch(3, true, t0);
        set_used_event(&mem, &q, 1);
        assert!(!late.owed(&q, &mem, t0 + RECHECK));
        assert_eq!(late.due(), None);
    }
}

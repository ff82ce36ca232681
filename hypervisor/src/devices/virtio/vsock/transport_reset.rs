//! The event queue's one event: `VIRTIO_VSOCK_EVENT_TRANSPORT_RESET` (virtio 1.2 section
//! 5.10.6.6), posted when a restored VM's device resumes. The driver then drops every
//! connected socket (their host ends did not survive the snapshot; listening sockets stay) and
//! reads the guest CID again, so a VM restored under a new CID uses it.
//!
//! The driver drops *every* connected socket when it handles the event, so a connection the
//! host opened before then would be dropped too: Linux takes the device's interrupt for all
//! its queues at once and queues the receive work before the event work, so a connection
//! request waiting on the receive queue at the first interrupt (the shim's first one usually
//! is) is accepted and then reset. The device therefore holds the receive queue until the
//! driver has handled the event, which it learns from the driver's notification when it gives
//! the event's buffer back ([`post`] asks for exactly that notification).

use virtio_queue::{Queue, QueueT};

use crate::devices::virtio::chain::{pop_chain, Popped};
use crate::devices::virtio::interrupt::{InterruptReason, VirtioInterrupt};
use crate::memory::GuestMemory;

/// `struct virtio_vsock_event { le32 id; }` with id TRANSPORT_RESET.
const TRANSPORT_RESET: u32 = 0;

/// Why the event could not be posted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    /// The driver posted no event buffer.
    #[error("the driver left no buffer on the event queue")]
    NoBuffer,
    /// The buffer is unusable.
    #[error("the event queue's buffer is unusable: {0}")]
    Bad(String),
}

/// Posts a transport reset on `evq`, asks the driver to notify the device when it next adds
/// an event buffer (which it does once it has handled the event), and interrupts it.
pub fn post(
    mem: &GuestMemory,
    evq: &mut Queue,
    interrupt: &dyn VirtioInterrupt,
) -> Result<(), EventError> {
    let chain = match pop_chain(evq, mem) {
        Popped::Chain(c) => c,
        Popped::Empty => return Err(EventError::NoBuffer),
        Popped::Bad { head, error } => {
            // Give the buffer back unused, as every device does with a bad chain.
            let _ = evq.add_used(mem, head, 0);
            return Err(EventError::Bad(error.to_string()));
        }
        Popped::Broken(why) => return Err(EventError::Bad(why)),
    };
    let id = TRANSPORT_RESET.to_le_bytes();
    let len = if chain.writable_len() >= id.len() {
        chain
            .write_at(mem, 0, &id)
            .map_err(|e| EventError::Bad(e.to_string()))?;
        id.len() as u32
    } else {
        0
    };
    evq.add_used(mem, chain.head(), len)
        .map_err(|e| EventError::Bad(e.to_string()))?;
    // The driver's other event buffers stay with the device (a device holds event buffers
    // until it has events), so the driver's next addition is the event's buffer coming back;
    // with event-idx the notification point is where the device's next read would be.
    let bad = |e: virtio_queue::Error| EventError::Bad(e.to_string());
    let avail = evq
        .avail_idx(mem, std::sync::atomic::Ordering::Acquire)
        .map_err(bad)?;
    evq.set_next_avail(avail.0);
    evq.enable_notification(mem).map_err(bad)?;
    let _ = interrupt.trigger(InterruptReason::UsedBuffer);
    if len == 0 {
        return Err(EventError::Bad("shorter than an event".into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use vm_memory::{Bytes, GuestAddress};

    use super::*;
    use crate::devices::virtio::chain::testing::{memory, TestQueue};
    use crate::devices::virtio::interrupt::FakeInterrupt;

    #[test]
    fn the_event_lands_in_the_drivers_buffer_with_an_interrupt() {
        let mem = memory();
        let mut tq = TestQueue::new(&mem, 0, 8);
        mem.write_obj(0xffff_ffffu32, GuestAddress(0x8000)).unwrap();
        let head = tq.add(&[(0x8000, 4, true)]);
        let mut q = tq.queue();
        let irq = Arc::new(FakeInterrupt::default());
        post(&mem, &mut q, irq.as_ref()).unwrap();
        assert_eq!(mem.read_obj::<u32>(GuestAddress(0x8000)).unwrap(), 0);
        assert_eq!(tq.used(), vec![(u32::from(head), 4)]);
        assert_eq!(irq.count(InterruptReason::UsedBuffer), 1);
    }

    #[test]
    fn the_driver_is_asked_to_notify_when_it_gives_a_buffer_back() {
        let mem = memory();
        let mut tq = TestQueue::new(&mem, 0, 8);
        for i in 0..4 {
            tq.add(&[(0x8000 + 0x10 * i, 4, true)]);
        }
        let mut q = tq.queue();
        q.set_event_idx(true);
        let irq = Arc::new(FakeInterrupt::default());
        post(&mem, &mut q, irq.as_ref()).unwrap();
        assert_eq!(tq.used().len(), 1, "one event, three buffers held");
        assert_eq!(
            tq.avail_event(),
            4,
            "the driver's next buffer (the event's, given back) passes avail idx 4: it notifies"
        );
    }

    #[test]
    fn no_buffer_or_a_short_one_is_an_error_and_nothing_else() {
        let mem = memory();
        let mut tq = TestQueue::new(&mem, 0, 8);
        let irq = Arc::new(FakeInterrupt::default());
        let mut q = tq.queue();
        assert_eq!(post(&mem, &mut q, irq.as_ref()), Err(EventError::NoBuffer));
        let head = tq.add(&[(0x8000, 2, true)]);
        let mut q = tq.queue();
        assert!(matches!(
            post(&mem, &mut q, irq.as_ref()),
            Err(EventError::Bad(_))
        ));
        assert_eq!(tq.used(), vec![(u32::from(head), 0)], "given back unused");
    }
}

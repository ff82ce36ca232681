//! `balloon`: inflate, deflate and free page reporting chains through [`BalloonQueues`], with
//! a discard that checks every range it is asked to drop is page-aligned guest RAM (the one
//! thing a guest must never get past the device).

use std::sync::Arc;

use vm_memory::GuestAddress;

use super::{memory, queue, Input, NullInterrupt, HIGH_RAM, QUEUE_BASE, QUEUE_SPAN};
use crate::devices::virtio::balloon::discard::{checked_range, Discard};
use crate::devices::virtio::balloon::handler::BalloonQueues;
use crate::memory::GuestMemory;

/// Drops nothing; asserts the device checked what it passes on.
#[derive(Debug)]
struct CheckedDiscard;

impl Discard for CheckedDiscard {
    fn discard(&self, mem: &GuestMemory, addr: GuestAddress, len: u64) -> std::io::Result<()> {
        assert!(
            checked_range(mem, addr.0, len),
            "asked to drop {:#x}+{len:#x}, which is not page-aligned guest RAM",
            addr.0
        );
        Ok(())
    }
}

/// Input: the inflate queue, the deflate queue, the reporting queue (in the high region; a
/// device without one when it does not decode), guest RAM.
pub fn balloon(data: &[u8]) {
    let mut input = Input::new(data);
    let Some(mem) = memory() else { return };
    let Some(inflate) = queue(&mem, &mut input, QUEUE_BASE) else {
        return;
    };
    let Some(deflate) = queue(&mem, &mut input, QUEUE_BASE + QUEUE_SPAN) else {
        return;
    };
    let reporting = queue(&mem, &mut input, HIGH_RAM);
    input.fill_ram(&mem);
    let mut queues = vec![inflate, deflate];
    queues.extend(reporting);
    let count = queues.len();
    let mut dev = BalloonQueues::new(
        mem,
        queues,
        Arc::new(NullInterrupt),
        CheckedDiscard,
        Arc::default(),
    );
    for _ in 0..2 {
        for index in 0..count {
            dev.process_queue(index);
        }
    }
}

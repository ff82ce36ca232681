//! `chain`: descriptor chains as the device pops them ([`pop_chain`], [`GuestChain::parse`]),
//! then flat reads and writes at fuzzed offsets.
//!
//! Input: a [`queue`](super::queue), then `u16` read offset, `u16` read length, `u16` write
//! offset, `u16` write length, then bytes for guest RAM ([`Input::fill_ram`]).

use virtio_queue::QueueT;

use super::{memory, queue, Input, QUEUE_BASE};
use crate::devices::virtio::chain::{pop_chain, GuestChain, Popped};
use crate::memory::GuestMemory;

/// Pops every chain the fuzzed queue offers and reads and writes each.
pub fn chain(data: &[u8]) {
    let mut input = Input::new(data);
    let Some(mem) = memory() else { return };
    let Some(mut q) = queue(&mem, &mut input, QUEUE_BASE) else {
        return;
    };
    let access = [input.u16(), input.u16(), input.u16(), input.u16()].map(usize::from);
    input.fill_ram(&mem);
    // A queue holds at most 256 chains; more pops than that mean the queue lies about its
    // available index, which pop_chain must report as broken or empty long before.
    for _ in 0..=256 + 1 {
        match pop_chain(&mut q, &mem) {
            Popped::Empty | Popped::Broken(_) => return,
            Popped::Bad { head, .. } => {
                if q.add_used(&mem, head, 0).is_err() {
                    return;
                }
            }
            Popped::Chain(c) => {
                let used = exercise(&mem, &c, access);
                if q.add_used(&mem, c.head(), used).is_err() {
                    return;
                }
            }
        }
    }
}

/// Reads and writes `c` within and past its bounds; returns the used length.
fn exercise(mem: &GuestMemory, c: &GuestChain, [ro, rl, wo, wl]: [usize; 4]) -> u32 {
    let (readable, writable) = (c.readable_len(), c.writable_len());
    let mut buf = vec![0u8; rl];
    let read = c.read_at(mem, ro, &mut buf);
    // An access of zero bytes fits anywhere: it touches nothing.
    assert_eq!(
        read.is_ok(),
        rl == 0 || ro + rl <= readable,
        "read {ro}+{rl} of {readable} readable bytes: {read:?}"
    );
    let written = c.write_at(mem, wo, &buf[..wl.min(rl)]);
    assert_eq!(
        written.is_ok(),
        wl.min(rl) == 0 || wo + wl.min(rl) <= writable,
        "write {wo}+{} of {writable} writable bytes: {written:?}",
        wl.min(rl)
    );
    // The whole readable part, in one piece, as a device that copies a request out does.
    let mut all = vec![0u8; readable.min(1 << 20)];
    if readable <= 1 << 20 {
        assert!(c.read_at(mem, 0, &mut all).is_ok(), "validated chain");
    }
    u32::try_from(writable).unwrap_or(u32::MAX)
}

//! Queue access shared by the receive and transmit paths: publishing used entries with one
//! index update.

use std::num::Wrapping;
use std::sync::atomic::Ordering;

use virtio_queue::{Queue, QueueT};
use vm_memory::{Address, Bytes, GuestAddress};

use crate::memory::GuestMemory;

/// Puts `entries` (head, length) in the used ring and then publishes them with one index
/// update, so the driver sees all of a frame's buffers or none.
pub(super) fn publish_used(
    q: &mut Queue,
    mem: &GuestMemory,
    entries: &[(u16, u32)],
) -> Result<(), String> {
    let size = q.size();
    let ring = GuestAddress(q.used_ring());
    let base = Wrapping(q.next_used());
    for (i, (head, len)) in entries.iter().enumerate() {
        if *head >= size {
            return Err(format!("head {head} is past the queue size {size}"));
        }
        let slot = (base + Wrapping(i as u16)).0 % size;
        let mut elem = [0u8; 8];
        elem[..4].copy_from_slice(&u32::from(*head).to_le_bytes());
        elem[4..].copy_from_slice(&len.to_le_bytes());
        let at = ring
            .checked_add(4 + 8 * u64::from(slot))
            .ok_or("used ring address overflows")?;
        mem.write_slice(&elem, at).map_err(|e| e.to_string())?;
    }
    let next = base + Wrapping(entries.len() as u16);
    let idx = ring.checked_add(2).ok_or("used ring address overflows")?;
    // Release: the elements are visible before the index that publishes them.
    mem.store(next.0.to_le(), idx, Ordering::Release)
        .map_err(|e| e.to_string())?;
    q.set_next_used(next.0);
    Ok(())
}

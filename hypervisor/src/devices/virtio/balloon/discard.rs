//! Giving guest pages back to the host, behind a trait so that the queue logic is tested
//! without touching real guest RAM.

use vm_memory::{Address, GuestAddress, GuestMemory as _, GuestMemoryRegion as _};

use super::PAGE;
use crate::memory::GuestMemory;

/// Drops the host memory behind a range of guest RAM.
pub trait Discard: Send + std::fmt::Debug {
    /// Drops `[addr, addr + len)`, which the caller checked: page-aligned and inside guest RAM.
    /// The guest reads zeros there afterwards.
    fn discard(&self, mem: &GuestMemory, addr: GuestAddress, len: u64) -> std::io::Result<()>;
}

/// The real thing: `madvise(MADV_DONTNEED)` on guest RAM's host mapping (private anonymous
/// memory: the pages are freed; a later guest access faults in a zeroed page).
#[derive(Debug, Default, Clone, Copy)]
pub struct Madvise;

impl Discard for Madvise {
    fn discard(&self, mem: &GuestMemory, addr: GuestAddress, len: u64) -> std::io::Result<()> {
        let outside = || std::io::Error::from_raw_os_error(libc::EFAULT);
        let mut at = addr;
        let mut left = len;
        // A range may span two regions (RAM below and above the 32-bit gap).
        while left > 0 {
            let (region, offset) = mem.to_region_addr(at).ok_or_else(outside)?;
            let chunk = left.min(region.len() - offset.0);
            let host = region.get_host_address(offset).map_err(|_| outside())?;
            let size = usize::try_from(chunk).map_err(|_| outside())?;
            // SAFETY: [host, host + size) lies inside one region of guest RAM, which husk-vmm
            // mapped private and anonymous and keeps mapped for the VM's life; it is
            // page-aligned because guest RAM regions are and the caller checked `addr` and
            // `len`. MADV_DONTNEED only replaces the contents with zero pages: every reference
            // into guest RAM stays valid (the guest asked for exactly this).
            let rc = unsafe { libc::madvise(host.cast(), size, libc::MADV_DONTNEED) };
            if rc != 0 {
                return Err(std::io::Error::last_os_error());
            }
            at = at.unchecked_add(chunk);
            left -= chunk;
        }
        Ok(())
    }
}

/// Whether `[addr, addr + len)` is a non-empty, page-aligned range of guest RAM.
pub fn checked_range(mem: &GuestMemory, addr: u64, len: u64) -> bool {
    len > 0
        && addr % PAGE == 0
        && len % PAGE == 0
        && usize::try_from(len).is_ok_and(|l| mem.check_range(GuestAddress(addr), l))
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    #[test]
    fn ranges_must_be_aligned_non_empty_and_in_ram() {
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        assert!(checked_range(&mem, 0, PAGE));
        assert!(checked_range(&mem, (1 << 20) - PAGE, PAGE));
        assert!(!checked_range(&mem, 0, 0), "empty");
        assert!(!checked_range(&mem, 1, PAGE), "unaligned address");
        assert!(!checked_range(&mem, 0, PAGE + 1), "unaligned length");
        assert!(!checked_range(&mem, 1 << 20, PAGE), "past RAM");
        assert!(
            !checked_range(&mem, (1 << 20) - PAGE, 2 * PAGE),
            "runs past RAM"
        );
        assert!(!checked_range(&mem, !(PAGE - 1), PAGE), "wraps");
    }

    #[test]
    fn madvise_zeroes_the_range_and_nothing_else() {
        let mem = crate::memory::create(&[(0, 4 << 20)]).unwrap();
        mem.write_slice(&[0xab; 3 * PAGE as usize], GuestAddress(0))
            .unwrap();
        Madvise.discard(&mem, GuestAddress(PAGE), PAGE).unwrap();
        let mut back = [0u8; 3 * PAGE as usize];
        mem.read_slice(&mut back, GuestAddress(0)).unwrap();
        let page = PAGE as usize;
        assert!(back[..page].iter().all(|&b| b == 0xab));
        assert!(back[page..2 * page].iter().all(|&b| b == 0));
        assert!(back[2 * page..].iter().all(|&b| b == 0xab));
    }
}

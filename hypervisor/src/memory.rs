//! Guest RAM: anonymous private memory, 2 MiB aligned and advised for transparent huge pages,
//! split into regions around the MMIO gap.
//!
//! Why not a memfd: a memfd (shmem) is not backed by huge pages unless the host enables
//! `shmem_enabled`, which Debian leaves at `never`, so every 4 KiB of guest RAM the guest
//! touches costs KVM a separate nested page fault. With anonymous memory advised
//! MADV_HUGEPAGE, and guest-physical and host-virtual addresses congruent modulo 2 MiB, KVM maps
//! guest RAM with 2 MiB pages, as QEMU does. A device in another process (vhost-user) would
//! need a shareable backing again; none exists yet.
//!
//! Where the regions go is the architecture's layout (`arch::layout::ram_regions`); this
//! module only maps them.

use std::ptr::null_mut;

use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{GuestAddress, GuestMemoryMmap, GuestRegionMmap};

/// The guest memory type used throughout the VMM.
pub type GuestMemory = GuestMemoryMmap<()>;

/// Alignment of each region's host mapping (one huge page).
const HUGE_PAGE: usize = 2 << 20;

/// Errors creating guest memory.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// mmap failed.
    #[error("mapping a {0} MiB region of guest RAM: {1}")]
    Mmap(u64, std::io::Error),
    /// vm-memory refused the mapping.
    #[error("mapping guest RAM: {0}")]
    Map(String),
}

/// Maps `len` bytes of anonymous memory at a 2 MiB-aligned address, advised for huge pages.
/// The mapping is never unmapped: guest RAM lives as long as the process.
fn map_aligned(len: usize) -> std::io::Result<*mut u8> {
    let total = len + HUGE_PAGE;
    let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE;
    let prot = libc::PROT_READ | libc::PROT_WRITE;
    // SAFETY: an anonymous mapping at an address of the kernel's choice; no memory is touched.
    let base = unsafe { libc::mmap(null_mut(), total, prot, flags, -1, 0) };
    if base == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    let base = base as usize;
    let start = (base + HUGE_PAGE - 1) & !(HUGE_PAGE - 1);
    let (head, tail) = (start - base, base + total - (start + len));
    if head > 0 {
        // SAFETY: [base, start) is the unused head of the mapping just created.
        unsafe { libc::munmap(base as *mut libc::c_void, head) };
    }
    if tail > 0 {
        // SAFETY: [start + len, base + total) is the unused tail of the same mapping.
        unsafe { libc::munmap((start + len) as *mut libc::c_void, tail) };
    }
    // SAFETY: [start, start + len) is mapped; MADV_HUGEPAGE only changes how it is backed.
    // Failure (THP disabled) only means 4 KiB pages.
    unsafe { libc::madvise(start as *mut libc::c_void, len, libc::MADV_HUGEPAGE) };
    Ok(start as *mut u8)
}

/// Creates guest RAM as `layout`'s regions, each `(guest address, length in bytes)`.
pub fn create(layout: &[(u64, u64)]) -> Result<GuestMemory, MemoryError> {
    let mut regions = Vec::new();
    for &(start, len) in layout {
        let mib = len >> 20;
        let len = usize::try_from(len).map_err(|e| MemoryError::Map(e.to_string()))?;
        let ptr = map_aligned(len).map_err(|e| MemoryError::Mmap(mib, e))?;
        // SAFETY: `ptr` is a fresh read-write private mapping of exactly `len` bytes that is
        // never unmapped, so it outlives the region.
        let builder = unsafe { MmapRegionBuilder::new(len).with_raw_mmap_pointer(ptr) };
        let region = builder
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE)
            .build()
            .map_err(|e| MemoryError::Map(e.to_string()))?;
        let region = GuestRegionMmap::new(region, GuestAddress(start))
            .ok_or_else(|| MemoryError::Map(format!("region at {start:#x} overflows")))?;
        regions.push(region);
    }
    GuestMemoryMmap::from_regions(regions).map_err(|e| MemoryError::Map(e.to_string()))
}

/// Maps guest RAM from a snapshot's memory file: each `(guest address, length, file offset)`
/// mapped `MAP_PRIVATE`, so the file's pages are shared through the page cache with every
/// other VM restored from it, and a page the guest writes becomes this VM's own copy.
pub fn from_file(
    layout: &[(u64, u64, u64)],
    file: &std::fs::File,
) -> Result<GuestMemory, MemoryError> {
    use std::os::fd::AsRawFd;
    let mut regions = Vec::new();
    for &(start, len, offset) in layout {
        let mib = len >> 20;
        let size = usize::try_from(len).map_err(|e| MemoryError::Map(e.to_string()))?;
        let off = libc::off_t::try_from(offset).map_err(|e| MemoryError::Map(e.to_string()))?;
        let flags = libc::MAP_PRIVATE | libc::MAP_NORESERVE;
        let prot = libc::PROT_READ | libc::PROT_WRITE;
        // SAFETY: a new private mapping of `file` at an address of the kernel's choice; no
        // existing memory is affected.
        let ptr = unsafe { libc::mmap(null_mut(), size, prot, flags, file.as_raw_fd(), off) };
        if ptr == libc::MAP_FAILED {
            return Err(MemoryError::Mmap(mib, std::io::Error::last_os_error()));
        }
        // SAFETY: `ptr` is a fresh read-write private mapping of exactly `size` bytes that is
        // never unmapped, so it outlives the region.
        let builder = unsafe { MmapRegionBuilder::new(size).with_raw_mmap_pointer(ptr.cast()) };
        let region = builder
            .with_mmap_prot(prot)
            .with_mmap_flags(flags)
            .build()
            .map_err(|e| MemoryError::Map(e.to_string()))?;
        let region = GuestRegionMmap::new(region, GuestAddress(start))
            .ok_or_else(|| MemoryError::Map(format!("region at {start:#x} overflows")))?;
        regions.push(region);
    }
    GuestMemoryMmap::from_regions(regions).map_err(|e| MemoryError::Map(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestMemory as _, GuestMemoryRegion};

    #[test]
    fn ram_is_readable_and_writable_at_both_ends() {
        let mem = create(&[(0, 64 << 20)]).unwrap();
        assert_eq!(mem.num_regions(), 1);
        mem.write_obj(0xdead_beefu32, GuestAddress(0x1000)).unwrap();
        assert_eq!(
            mem.read_obj::<u32>(GuestAddress(0x1000)).unwrap(),
            0xdead_beef
        );
        let last = GuestAddress((64 << 20) - 4);
        mem.write_obj(7u32, last).unwrap();
        assert!(mem.read_obj::<u32>(GuestAddress(64 << 20)).is_err());
    }

    #[test]
    fn host_mappings_are_huge_page_aligned() {
        let mem = create(&[(0, 64 << 20)]).unwrap();
        for r in mem.iter() {
            let host = mem.get_host_address(r.start_addr()).unwrap() as usize;
            assert_eq!(host % HUGE_PAGE, 0);
        }
    }
}

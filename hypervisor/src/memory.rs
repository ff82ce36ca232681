//! Guest RAM: one memfd, mapped shared, split into regions around the MMIO gap.
//!
//! A memfd (rather than anonymous memory) lets devices in other processes or a later snapshot
//! share the guest's RAM by file descriptor.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::FromRawFd;

use vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap};

use crate::arch::layout::ram_regions;

/// The guest memory type used throughout the VMM.
pub type GuestMemory = GuestMemoryMmap<()>;

/// Errors creating guest memory.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// memfd_create or ftruncate failed.
    #[error("creating the guest RAM memfd ({0} MiB): {1}")]
    Memfd(u64, std::io::Error),
    /// Mapping failed.
    #[error("mapping guest RAM: {0}")]
    Map(String),
}

/// Creates `mib` MiB of guest RAM backed by one memfd.
pub fn create(mib: u32) -> Result<GuestMemory, MemoryError> {
    let bytes = u64::from(mib) << 20;
    let name = CString::new("husk-guest-ram").map_err(|e| MemoryError::Map(e.to_string()))?;
    // SAFETY: `name` is a valid NUL-terminated string; memfd_create returns a new descriptor or -1.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(MemoryError::Memfd(
            u64::from(mib),
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: `fd` was just returned by memfd_create and is owned by nobody else.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(bytes)
        .map_err(|e| MemoryError::Memfd(u64::from(mib), e))?;
    let mut ranges = Vec::new();
    let mut offset = 0u64;
    for (start, len) in ram_regions(bytes) {
        let f = file
            .try_clone()
            .map_err(|e| MemoryError::Memfd(u64::from(mib), e))?;
        ranges.push((
            GuestAddress(start),
            len as usize,
            Some(FileOffset::new(f, offset)),
        ));
        offset += len;
    }
    GuestMemoryMmap::from_ranges_with_files(ranges).map_err(|e| MemoryError::Map(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestMemory as _};

    #[test]
    fn ram_is_readable_and_writable_at_both_ends() {
        let mem = create(64).unwrap();
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
}

//! Guest RAM as a sparse file: each region at its own offset, zero pages left as holes, so a
//! 256 MiB guest that touched 40 MiB costs 40 MiB of disk and page cache. Restore maps the
//! file `MAP_PRIVATE` (see [`crate::memory::from_file`]): every VM restored from it reads the
//! same page-cache pages and owns only the pages it writes.

use std::fs::File;
use std::os::unix::fs::FileExt;

use serde::{Deserialize, Serialize};
use vm_memory::{Address, GuestMemory as _, GuestMemoryRegion};

use crate::memory::GuestMemory;

/// The page size the file is written in.
const PAGE: usize = 4096;
/// The longest single write.
const MAX_WRITE: usize = 8 << 20;

/// Where one region of guest RAM lies in the memory file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionEntry {
    /// Guest physical address.
    pub guest_addr: u64,
    /// Length in bytes.
    pub len: u64,
    /// Offset in the memory file.
    pub file_offset: u64,
}

/// What writing the memory file did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// The regions, in guest address order.
    pub regions: Vec<RegionEntry>,
    /// Bytes of non-zero pages written (the rest are holes).
    pub data_bytes: u64,
}

fn is_zero(page: &[u8]) -> bool {
    // SAFETY: u64 is plain data valid for any bit pattern; align_to only splits the slice.
    let (head, words, tail) = unsafe { page.align_to::<u64>() };
    head.iter().all(|b| *b == 0) && words.iter().all(|w| *w == 0) && tail.iter().all(|b| *b == 0)
}

/// Writes `bytes` (one region's contents) to `file` at `base`, skipping zero pages; returns
/// the bytes written.
pub fn write_sparse(file: &File, base: u64, bytes: &[u8]) -> std::io::Result<u64> {
    let mut written = 0u64;
    let mut at = 0usize;
    while at < bytes.len() {
        let end = (at + PAGE).min(bytes.len());
        if is_zero(&bytes[at..end]) {
            at = end;
            continue;
        }
        // A run of non-zero pages, up to MAX_WRITE.
        let start = at;
        while at < bytes.len() && at - start < MAX_WRITE {
            let end = (at + PAGE).min(bytes.len());
            if is_zero(&bytes[at..end]) {
                break;
            }
            at = end;
        }
        file.write_all_at(&bytes[start..at], base + start as u64)?;
        written += (at - start) as u64;
    }
    Ok(written)
}

/// Writes all of `mem` to `file` (which must be empty) and sizes it to the whole of RAM.
pub fn write(mem: &GuestMemory, file: &File) -> std::io::Result<Written> {
    let mut regions = Vec::new();
    let mut offset = 0u64;
    let mut data_bytes = 0;
    for region in mem.iter() {
        let len = region.len();
        let host = mem
            .get_host_address(region.start_addr())
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let len_usize = usize::try_from(len).map_err(std::io::Error::other)?;
        // SAFETY: `host` is the start of this region's live mapping of `len` bytes, which
        // `mem` keeps mapped. The caller has parked every vCPU and stopped every device, so
        // nothing writes guest RAM while it is read here.
        let bytes = unsafe { std::slice::from_raw_parts(host as *const u8, len_usize) };
        data_bytes += write_sparse(file, offset, bytes)?;
        regions.push(RegionEntry {
            guest_addr: region.start_addr().raw_value(),
            len,
            file_offset: offset,
        });
        offset += len;
    }
    file.set_len(offset)?;
    Ok(Written {
        regions,
        data_bytes,
    })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use vm_memory::{Bytes, GuestAddress};

    use super::*;

    #[test]
    fn zero_pages_become_holes_and_the_rest_reads_back() {
        let mem = crate::memory::create(&[(0, 8 << 20), (16 << 20, 4 << 20)]).unwrap();
        mem.write_obj(0x1122_3344u32, GuestAddress(0x3000)).unwrap();
        mem.write_obj(0x5566u16, GuestAddress((16 << 20) + 0x1ffe))
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("memory");
        let file = File::options()
            .create_new(true)
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let w = write(&mem, &file).unwrap();
        assert_eq!(w.data_bytes, 2 * PAGE as u64, "two touched pages");
        assert_eq!(
            w.regions,
            vec![
                RegionEntry {
                    guest_addr: 0,
                    len: 8 << 20,
                    file_offset: 0
                },
                RegionEntry {
                    guest_addr: 16 << 20,
                    len: 4 << 20,
                    file_offset: 8 << 20
                },
            ]
        );
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.len(), 12 << 20);
        assert!(
            meta.blocks() * 512 < 1 << 20,
            "sparse: {} blocks",
            meta.blocks()
        );

        let layout: Vec<_> = w
            .regions
            .iter()
            .map(|r| (r.guest_addr, r.len, r.file_offset))
            .collect();
        assert_eq!(
            layout,
            super::super::file_layout(&[(0, 8 << 20), (16 << 20, 4 << 20)]),
            "a restore maps RAM where it was written, knowing only the RAM layout"
        );
        let back = crate::memory::from_file(&layout, &file).unwrap();
        assert_eq!(
            back.read_obj::<u32>(GuestAddress(0x3000)).unwrap(),
            0x1122_3344
        );
        assert_eq!(
            back.read_obj::<u16>(GuestAddress((16 << 20) + 0x1ffe))
                .unwrap(),
            0x5566
        );
        // Private: a write to the restored RAM leaves the file as it was.
        back.write_obj(9u32, GuestAddress(0x3000)).unwrap();
        let mut word = [0u8; 4];
        file.read_exact_at(&mut word, 0x3000).unwrap();
        assert_eq!(u32::from_le_bytes(word), 0x1122_3344);
    }

    #[test]
    fn a_long_run_is_written_in_bounded_pieces() {
        let bytes = vec![1u8; MAX_WRITE * 2 + PAGE];
        let dir = tempfile::tempdir().unwrap();
        let file = File::create(dir.path().join("m")).unwrap();
        assert_eq!(write_sparse(&file, 0, &bytes).unwrap(), bytes.len() as u64);
        assert_eq!(file.metadata().unwrap().len(), bytes.len() as u64);
    }
}

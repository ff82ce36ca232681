//! Direct kernel boot: load the kernel, initramfs and command line, and write the structures the
//! Linux 64-bit entry point reads (zero page with the e820 map, GDT, page tables, MP table).

use std::fs::File;
use std::path::Path;

use linux_loader::cmdline::Cmdline;
use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_params, setup_header};
use linux_loader::loader::{self, load_cmdline, BzImage, Elf, KernelLoader};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory as _, GuestMemoryRegion};

use super::gdt::BOOT_GDT;
use super::layout::*;
use super::mptable;
use crate::memory::GuestMemory;

const E820_RAM: u32 = 1;
const E820_RESERVED: u32 = 2;
const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448; // "HdrS"
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT: u32 = 0x0100_0000;
const PAGE_SIZE: u64 = 4096;

/// Errors while preparing the guest to boot; each names what was being loaded.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// The kernel file could not be opened.
    #[error("kernel {path}: {source}")]
    KernelFile {
        path: String,
        source: std::io::Error,
    },
    /// Neither ELF nor bzImage loading worked.
    #[error("kernel {path} is neither a loadable ELF vmlinux nor a bzImage: {detail}")]
    KernelFormat { path: String, detail: String },
    /// The initramfs could not be read.
    #[error("initramfs {path}: {source}")]
    InitramfsFile {
        path: String,
        source: std::io::Error,
    },
    /// The initramfs does not fit between the kernel and the end of low memory.
    #[error("initramfs {path} ({size} bytes) does not fit in guest RAM below {limit:#x}; give the VM more memory")]
    InitramfsTooLarge { path: String, size: u64, limit: u64 },
    /// The command line is too long or invalid.
    #[error("kernel command line: {0}")]
    Cmdline(String),
    /// MP table construction failed.
    #[error(transparent)]
    MpTable(#[from] mptable::MpTableError),
    /// Writing a boot structure to guest memory failed.
    #[error("writing {what} to guest memory: {detail}")]
    Write { what: &'static str, detail: String },
}

fn write_err(what: &'static str) -> impl FnOnce(vm_memory::GuestMemoryError) -> BootError {
    move |e| BootError::Write {
        what,
        detail: e.to_string(),
    }
}

/// What the kernel loader produced.
#[derive(Debug, Clone, Copy)]
pub struct LoadedKernel {
    /// The 64-bit entry point.
    pub entry: GuestAddress,
    /// First byte after the kernel image.
    pub end: u64,
    /// A bzImage's setup header, which seeds the zero page.
    pub setup_header: Option<setup_header>,
}

/// The kernel and the initramfs, loaded into guest memory.
#[derive(Debug, Clone, Copy)]
pub struct LoadedImages {
    /// The kernel.
    pub kernel: LoadedKernel,
    /// The initramfs's guest address and size, if there is one.
    pub initramfs: Option<(u64, u64)>,
}

/// Loads the kernel, then the initramfs above it. Touches guest memory only (no VM state), so it
/// can run on another thread while the VM is created.
pub fn load_images(
    mem: &GuestMemory,
    kernel: &Path,
    initramfs: Option<&Path>,
) -> Result<LoadedImages, BootError> {
    let kernel = load_kernel(mem, kernel)?;
    let initramfs = match initramfs {
        Some(path) => Some(load_initramfs(mem, path, kernel.end)?),
        None => None,
    };
    Ok(LoadedImages { kernel, initramfs })
}

/// Loads an ELF vmlinux, falling back to bzImage when the file is not ELF.
pub fn load_kernel(mem: &GuestMemory, path: &Path) -> Result<LoadedKernel, BootError> {
    let shown = path.display().to_string();
    let open = || {
        File::open(path).map_err(|source| BootError::KernelFile {
            path: shown.clone(),
            source,
        })
    };
    let himem = Some(GuestAddress(HIMEM_START));
    match Elf::load(mem, None, &mut open()?, himem) {
        Ok(r) => {
            return Ok(LoadedKernel {
                entry: r.kernel_load,
                end: r.kernel_end,
                setup_header: None,
            })
        }
        Err(loader::Error::Elf(linux_loader::loader::elf::Error::InvalidElfMagicNumber)) => {}
        Err(e) => {
            return Err(BootError::KernelFormat {
                path: shown,
                detail: format!("ELF: {e}"),
            })
        }
    }
    let r = BzImage::load(mem, None, &mut open()?, himem).map_err(|e| BootError::KernelFormat {
        path: shown.clone(),
        detail: format!("bzImage: {e}"),
    })?;
    // The 64-bit entry point sits 0x200 bytes into the protected-mode kernel.
    let entry = r
        .kernel_load
        .checked_add(0x200)
        .ok_or_else(|| BootError::KernelFormat {
            path: shown,
            detail: "entry point overflows".into(),
        })?;
    Ok(LoadedKernel {
        entry,
        end: r.kernel_end,
        setup_header: r.setup_header,
    })
}

/// Loads the initramfs at the highest page-aligned address of low RAM; returns (address, size).
pub fn load_initramfs(
    mem: &GuestMemory,
    path: &Path,
    kernel_end: u64,
) -> Result<(u64, u64), BootError> {
    let shown = path.display().to_string();
    let mut file = File::open(path).map_err(|source| BootError::InitramfsFile {
        path: shown.clone(),
        source,
    })?;
    let size = file
        .metadata()
        .map_err(|source| BootError::InitramfsFile {
            path: shown.clone(),
            source,
        })?
        .len();
    let low_end = mem
        .iter()
        .next()
        .map(|r| r.last_addr().raw_value() + 1)
        .unwrap_or(0);
    let fits = low_end
        .checked_sub(size)
        .map(|a| a & !(PAGE_SIZE - 1))
        .filter(|a| *a >= kernel_end);
    let addr = fits.ok_or(BootError::InitramfsTooLarge {
        path: shown.clone(),
        size,
        limit: low_end,
    })?;
    mem.read_exact_volatile_from(GuestAddress(addr), &mut file, size as usize)
        .map_err(|e| BootError::InitramfsFile {
            path: shown,
            source: std::io::Error::other(e.to_string()),
        })?;
    Ok((addr, size))
}

/// The e820 map: conventional memory, the reserved EBDA/BIOS hole, then every RAM region.
pub fn e820_map(mem: &GuestMemory) -> Vec<(u64, u64, u32)> {
    let mut map = vec![
        (0, EBDA_START, E820_RAM),
        (EBDA_START, HIMEM_START - EBDA_START, E820_RESERVED),
    ];
    for region in mem.iter() {
        let start = region.start_addr().raw_value().max(HIMEM_START);
        let end = region.last_addr().raw_value() + 1;
        if end > start {
            map.push((start, end - start, E820_RAM));
        }
    }
    map
}

/// Writes the command line, zero page, GDT/IDT, page tables and MP table.
pub fn write_boot_structures(
    mem: &GuestMemory,
    cmdline: &Cmdline,
    kernel: &LoadedKernel,
    initramfs: Option<(u64, u64)>,
    vcpus: u8,
) -> Result<(), BootError> {
    load_cmdline(mem, GuestAddress(CMDLINE_START), cmdline)
        .map_err(|e| BootError::Cmdline(e.to_string()))?;
    let cmdline_len = cmdline
        .as_cstring()
        .map_err(|e| BootError::Cmdline(e.to_string()))?
        .as_bytes()
        .len();

    let mut params = boot_params::default();
    if let Some(hdr) = kernel.setup_header {
        params.hdr = hdr;
    }
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
    params.hdr.header = KERNEL_HDR_MAGIC;
    params.hdr.cmd_line_ptr = CMDLINE_START as u32;
    params.hdr.cmdline_size = cmdline_len as u32;
    params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT;
    if let Some((addr, size)) = initramfs {
        params.hdr.ramdisk_image = addr as u32;
        params.hdr.ramdisk_size = size as u32;
    }
    let map = e820_map(mem);
    for (i, (addr, size, kind)) in map.iter().enumerate() {
        params.e820_table[i].addr = *addr;
        params.e820_table[i].size = *size;
        params.e820_table[i].type_ = *kind;
    }
    params.e820_entries = map.len() as u8;
    LinuxBootConfigurator::write_bootparams::<GuestMemory>(
        &BootParams::new::<boot_params>(&params, GuestAddress(ZERO_PAGE_START)),
        mem,
    )
    .map_err(|e| BootError::Write {
        what: "the zero page",
        detail: e.to_string(),
    })?;

    for (i, entry) in BOOT_GDT.iter().enumerate() {
        mem.write_obj(*entry, GuestAddress(BOOT_GDT_START + 8 * i as u64))
            .map_err(write_err("the GDT"))?;
    }
    mem.write_obj(0u64, GuestAddress(BOOT_IDT_START))
        .map_err(write_err("the IDT"))?;

    // Identity map of the first GiB with 2-MiB pages; the kernel builds its own tables early.
    mem.write_obj(PDPTE_START | 0x03, GuestAddress(PML4_START))
        .map_err(write_err("the PML4"))?;
    mem.write_obj(PDE_START | 0x03, GuestAddress(PDPTE_START))
        .map_err(write_err("the PDPT"))?;
    for i in 0..512u64 {
        mem.write_obj((i << 21) | 0x83, GuestAddress(PDE_START + i * 8))
            .map_err(write_err("the page directory"))?;
    }

    mem.write_slice(&mptable::build(vcpus)?, GuestAddress(EBDA_START))
        .map_err(write_err("the MP table"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory;

    #[test]
    fn e820_reserves_the_bios_hole_and_covers_ram() {
        let mem = memory::create(&crate::arch::layout::ram_regions(128 << 20)).unwrap();
        let map = e820_map(&mem);
        assert_eq!(map[0], (0, EBDA_START, E820_RAM));
        assert_eq!(map[1].2, E820_RESERVED);
        assert_eq!(map[2], (HIMEM_START, (128 << 20) - HIMEM_START, E820_RAM));
    }

    #[test]
    fn initramfs_goes_to_the_top_of_low_ram_or_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("initrd");
        std::fs::write(&path, vec![0xabu8; 10_000]).unwrap();
        let mem = memory::create(&crate::arch::layout::ram_regions(64 << 20)).unwrap();
        let (addr, size) = load_initramfs(&mem, &path, HIMEM_START).unwrap();
        assert_eq!(size, 10_000);
        assert_eq!(addr % PAGE_SIZE, 0);
        assert!(addr + size <= 64 << 20 && addr + size + PAGE_SIZE > 64 << 20);
        assert_eq!(mem.read_obj::<u8>(GuestAddress(addr)).unwrap(), 0xab);
        let err = load_initramfs(&mem, &path, 64 << 20).unwrap_err();
        assert!(err.to_string().contains("does not fit"), "{err}");
    }

    #[test]
    fn garbage_kernels_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("not-a-kernel");
        std::fs::write(&path, vec![0u8; 8192]).unwrap();
        let mem = memory::create(&crate::arch::layout::ram_regions(64 << 20)).unwrap();
        let err = load_kernel(&mem, &path).unwrap_err().to_string();
        assert!(
            err.contains("not-a-kernel") && err.contains("neither"),
            "{err}"
        );
        let err = load_kernel(&mem, &dir.path().join("missing"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("missing"), "{err}");
    }

    #[test]
    fn boot_structures_land_where_the_kernel_looks() {
        let mem = memory::create(&crate::arch::layout::ram_regions(64 << 20)).unwrap();
        let mut cmdline = Cmdline::new(CMDLINE_MAX_SIZE).unwrap();
        cmdline.insert_str("console=ttyS0").unwrap();
        let kernel = LoadedKernel {
            entry: GuestAddress(HIMEM_START),
            end: HIMEM_START + 0x1000,
            setup_header: None,
        };
        write_boot_structures(&mem, &cmdline, &kernel, Some((0x30_0000, 0x1000)), 2).unwrap();
        let mut text = [0u8; 14];
        mem.read_slice(&mut text, GuestAddress(CMDLINE_START))
            .unwrap();
        assert_eq!(&text, b"console=ttyS0\0");
        let params: boot_params = mem.read_obj(GuestAddress(ZERO_PAGE_START)).unwrap();
        assert_eq!({ params.hdr.boot_flag }, KERNEL_BOOT_FLAG_MAGIC);
        assert_eq!({ params.hdr.ramdisk_image }, 0x30_0000);
        assert_eq!(params.e820_entries, 3);
        let mut mp = [0u8; 4];
        mem.read_slice(&mut mp, GuestAddress(EBDA_START)).unwrap();
        assert_eq!(&mp, b"_MP_");
        assert_eq!(
            mem.read_obj::<u64>(GuestAddress(PDE_START + 8)).unwrap(),
            (1 << 21) | 0x83
        );
    }
}

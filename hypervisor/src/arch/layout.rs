//! Where things live in guest physical memory.
//!
//! ```text
//! 0x0000_0500  GDT                 0x0000_7000  zero page (boot_params)
//! 0x0000_0520  IDT                 0x0000_8ff0  boot stack top
//! 0x0000_9000  PML4, PDPT, PD      0x0002_0000  kernel command line
//! 0x0009_fc00  MP table (EBDA)     0x0010_0000  kernel (ELF entry / bzImage protected mode)
//! ...          initramfs at the top of low RAM
//! 0xc000_0000  32-bit MMIO gap: virtio-mmio devices from 0xc000_1000, IOAPIC, LAPIC
//! 0x1_0000_0000  RAM above the gap, when the VM has more than 3 GiB
//! ```

/// GDT with the boot segments.
pub const BOOT_GDT_START: u64 = 0x500;
/// IDT (one empty entry: no interrupts until the kernel sets up its own).
pub const BOOT_IDT_START: u64 = 0x520;
/// The Linux zero page (`struct boot_params`).
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Identity page tables for the first GiB.
pub const PML4_START: u64 = 0x9000;
/// Page directory pointer table.
pub const PDPTE_START: u64 = 0xa000;
/// Page directory (512 2-MiB pages).
pub const PDE_START: u64 = 0xb000;
/// Kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// Longest command line, including the NUL.
pub const CMDLINE_MAX_SIZE: usize = 2048;
/// Start of the extended BIOS data area, where the kernel looks for the MP table.
pub const EBDA_START: u64 = 0x9fc00;
/// End of conventional memory (the BIOS area above is reserved).
pub const EBDA_END: u64 = 0xa0000;
/// Start of high memory, where the kernel is loaded.
pub const HIMEM_START: u64 = 0x10_0000;
/// Start of the 32-bit MMIO gap (no RAM between here and 4 GiB).
pub const MMIO_GAP_START: u64 = 0xc000_0000;
/// End of the 32-bit MMIO gap.
pub const MMIO_GAP_END: u64 = 1 << 32;
/// First virtio-mmio device (the first slot of the gap is left free, as Firecracker does).
pub const VIRTIO_MMIO_START: u64 = MMIO_GAP_START + 0x1000;
/// Register window of one virtio-mmio device.
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
/// IOAPIC registers.
pub const IOAPIC_START: u64 = 0xfec0_0000;
/// Local APIC registers.
pub const APIC_START: u64 = 0xfee0_0000;
/// KVM's TSS (three pages, just below the BIOS ROM area; outside RAM and MMIO devices).
pub const KVM_TSS_ADDRESS: u64 = 0xfffb_d000;
/// First legacy interrupt line for virtio devices (0-4 are PIT, keyboard, cascade, COM2, COM1).
pub const IRQ_BASE: u32 = 5;
/// Last legacy interrupt line (the IOAPIC has 24 pins).
pub const IRQ_MAX: u32 = 23;
/// The serial port's interrupt line.
pub const SERIAL_IRQ: u32 = 4;

// The fixed boot structures must not overlap each other or the MMIO devices; checked at compile time.
const _: () = {
    assert!(BOOT_IDT_START >= BOOT_GDT_START + 4 * 8);
    assert!(ZERO_PAGE_START + 4096 <= BOOT_STACK_POINTER);
    assert!(PDE_START + 4096 <= CMDLINE_START);
    assert!(CMDLINE_START + CMDLINE_MAX_SIZE as u64 <= EBDA_START);
    assert!(EBDA_END <= HIMEM_START);
    assert!(VIRTIO_MMIO_START + (IRQ_MAX - IRQ_BASE + 1) as u64 * VIRTIO_MMIO_SIZE < IOAPIC_START);
};

/// The RAM regions for `mem_bytes` of guest memory: below the MMIO gap, then above 4 GiB.
pub fn ram_regions(mem_bytes: u64) -> Vec<(u64, u64)> {
    if mem_bytes <= MMIO_GAP_START {
        vec![(0, mem_bytes)]
    } else {
        vec![
            (0, MMIO_GAP_START),
            (MMIO_GAP_END, mem_bytes - MMIO_GAP_START),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ram_skips_the_mmio_gap() {
        assert_eq!(ram_regions(256 << 20), vec![(0, 256 << 20)]);
        assert_eq!(ram_regions(MMIO_GAP_START), vec![(0, MMIO_GAP_START)]);
        let big = ram_regions(4 << 30);
        assert_eq!(
            big,
            vec![
                (0, MMIO_GAP_START),
                (MMIO_GAP_END, (4 << 30) - MMIO_GAP_START)
            ]
        );
        let total: u64 = big.iter().map(|r| r.1).sum();
        assert_eq!(total, 4 << 30);
    }
}

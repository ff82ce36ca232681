//! The Intel MultiProcessor Specification 1.4 table: how a guest without ACPI learns its CPUs,
//! its IOAPIC and how the 24 legacy interrupt lines reach it.
//!
//! Layout (all little-endian, at [`EBDA_START`], where Linux scans for it):
//! floating pointer "_MP_" (16 bytes) → configuration table "PCMP" (44-byte header) followed by
//! one processor entry per vCPU, the ISA bus, the IOAPIC, an interrupt entry per IOAPIC pin
//! and the two local interrupt entries (ExtINT on LINT0, NMI on LINT1).

use super::layout::{APIC_START, EBDA_END, EBDA_START, IOAPIC_START, IRQ_BASE, IRQ_MAX};

const SPEC_REV: u8 = 4;
const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const CPU_ENABLED: u8 = 1;
const CPU_BOOT: u8 = 2;
const CPU_SIGNATURE: u32 = 0x600; // family 6
const CPU_FEATURES: u32 = 0x201; // FPU | APIC
const ENTRY_CPU: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_INTSRC: u8 = 3;
const ENTRY_LINTSRC: u8 = 4;
const INT_TYPE_INT: u8 = 0;
const INT_TYPE_NMI: u8 = 1;
const INT_TYPE_EXTINT: u8 = 3;
/// Interrupt entry flags: polarity active high (bits 0-1 = 01), trigger level (bits 2-3 = 11).
const IRQ_ACTIVE_HIGH_LEVEL: u8 = 0b1101;
const HEADER_LEN: usize = 44;
const FLOATING_LEN: usize = 16;

/// Why a table cannot be built.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MpTableError {
    /// Zero vCPUs, or more than fit in APIC ids below the IOAPIC's.
    #[error("an MP table cannot describe {0} vCPUs (1..=254)")]
    CpuCount(u8),
    /// The table would not fit in the EBDA.
    #[error("the MP table ({0} bytes) does not fit in the EBDA")]
    TooLarge(usize),
}

fn checksum(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |a, b| a.wrapping_add(*b))
        .wrapping_neg()
}

/// Builds the table for `cpus` vCPUs; returns the bytes to write at [`EBDA_START`].
pub fn build(cpus: u8) -> Result<Vec<u8>, MpTableError> {
    if cpus == 0 || cpus > 254 {
        return Err(MpTableError::CpuCount(cpus));
    }
    let ioapic_id = cpus + 1;
    let mut entries: Vec<u8> = Vec::new();
    let mut count: u16 = 0;
    for id in 0..cpus {
        let flags = CPU_ENABLED | if id == 0 { CPU_BOOT } else { 0 };
        entries.extend_from_slice(&[ENTRY_CPU, id, APIC_VERSION, flags]);
        entries.extend_from_slice(&CPU_SIGNATURE.to_le_bytes());
        entries.extend_from_slice(&CPU_FEATURES.to_le_bytes());
        entries.extend_from_slice(&[0; 8]);
        count += 1;
    }
    entries.extend_from_slice(&[ENTRY_BUS, 0]);
    entries.extend_from_slice(b"ISA   ");
    entries.extend_from_slice(&[ENTRY_IOAPIC, ioapic_id, IOAPIC_VERSION, 1]);
    entries.extend_from_slice(&(IOAPIC_START as u32).to_le_bytes());
    count += 2;
    for irq in 0..=IRQ_MAX as u8 {
        // From ISA bus 0 pin `irq` to IOAPIC pin `irq`. The legacy lines keep the ISA default
        // (edge, active high); the virtio lines are level-triggered, active high: a device's
        // line stays asserted until the guest has seen its interrupt status (see
        // `devices::virtio::interrupt`), so no edge can be lost while the guest masks the pin.
        let flags = if u32::from(irq) >= IRQ_BASE {
            IRQ_ACTIVE_HIGH_LEVEL
        } else {
            0
        };
        entries.extend_from_slice(&[ENTRY_INTSRC, INT_TYPE_INT, flags, 0, 0, irq, ioapic_id, irq]);
        count += 1;
    }
    entries.extend_from_slice(&[ENTRY_LINTSRC, INT_TYPE_EXTINT, 0, 0, 0, 0, 0, 0]);
    entries.extend_from_slice(&[ENTRY_LINTSRC, INT_TYPE_NMI, 0, 0, 0, 0, 0xff, 1]);
    count += 2;

    let table_len = HEADER_LEN + entries.len();
    let total = FLOATING_LEN + table_len;
    if EBDA_START + total as u64 > EBDA_END {
        return Err(MpTableError::TooLarge(total));
    }
    let table_addr = EBDA_START as u32 + FLOATING_LEN as u32;

    let mut floating = Vec::with_capacity(FLOATING_LEN);
    floating.extend_from_slice(b"_MP_");
    floating.extend_from_slice(&table_addr.to_le_bytes());
    floating.extend_from_slice(&[1, SPEC_REV, 0, 0, 0, 0, 0, 0]);
    floating[10] = checksum(&floating);

    let mut table = Vec::with_capacity(table_len);
    table.extend_from_slice(b"PCMP");
    table.extend_from_slice(&(table_len as u16).to_le_bytes());
    table.extend_from_slice(&[SPEC_REV, 0]);
    table.extend_from_slice(b"HUSK    ");
    table.extend_from_slice(b"MICROVM     ");
    table.extend_from_slice(&0u32.to_le_bytes()); // OEM table pointer
    table.extend_from_slice(&0u16.to_le_bytes()); // OEM table size
    table.extend_from_slice(&count.to_le_bytes());
    table.extend_from_slice(&(APIC_START as u32).to_le_bytes());
    table.extend_from_slice(&0u32.to_le_bytes()); // extended table length + checksum + reserved
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);

    floating.extend_from_slice(&table);
    Ok(floating)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b))
    }

    #[test]
    fn checksums_and_counts_hold() {
        for cpus in [1u8, 2, 32] {
            let t = build(cpus).unwrap();
            assert_eq!(&t[..4], b"_MP_");
            assert_eq!(sum(&t[..16]), 0, "floating pointer checksum");
            let table = &t[16..];
            assert_eq!(&table[..4], b"PCMP");
            let len = u16::from_le_bytes([table[4], table[5]]) as usize;
            assert_eq!(len, table.len());
            assert_eq!(sum(table), 0, "table checksum");
            let count = u16::from_le_bytes([table[34], table[35]]);
            assert_eq!(count, u16::from(cpus) + 2 + 24 + 2);
            // The first processor entry is the boot CPU.
            assert_eq!(
                &table[44..48],
                &[ENTRY_CPU, 0, APIC_VERSION, CPU_ENABLED | CPU_BOOT]
            );
        }
    }

    #[test]
    fn virtio_lines_are_level_triggered_and_legacy_lines_are_not() {
        let t = build(1).unwrap();
        let table = &t[16..];
        // Entries: 1 CPU (20 bytes), bus (8), IOAPIC (8), then 24 interrupt entries (8 each).
        let first_int = 44 + 20 + 8 + 8;
        for irq in 0..=IRQ_MAX as usize {
            let e = &table[first_int + 8 * irq..first_int + 8 * irq + 8];
            assert_eq!((e[0], e[5], e[7]), (ENTRY_INTSRC, irq as u8, irq as u8));
            let want = if irq as u32 >= IRQ_BASE {
                IRQ_ACTIVE_HIGH_LEVEL
            } else {
                0
            };
            assert_eq!(e[2], want, "irq {irq}");
        }
    }

    #[test]
    fn the_pointer_points_at_the_table() {
        let t = build(2).unwrap();
        let addr = u32::from_le_bytes([t[4], t[5], t[6], t[7]]) as u64;
        assert_eq!(addr, EBDA_START + 16);
    }

    #[test]
    fn bad_cpu_counts_are_refused() {
        assert_eq!(build(0), Err(MpTableError::CpuCount(0)));
        assert_eq!(build(255), Err(MpTableError::CpuCount(255)));
        assert!(matches!(build(254), Err(MpTableError::TooLarge(_))));
    }
}

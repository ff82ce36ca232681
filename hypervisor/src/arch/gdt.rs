//! The boot GDT: flat 64-bit code and data segments and a TSS, as the Linux 64-bit entry wants.

use kvm_bindings::kvm_segment;

/// Packs a GDT entry from its flags (access byte in bits 0-7, flags nibble in 12-15), base and limit.
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << (56 - 24))
        | ((flags as u64 & 0x0000_f0ff) << 40)
        | ((limit as u64 & 0x000f_0000) << (48 - 16))
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
}

/// The boot GDT: null, code (64-bit, execute/read), data (read/write), TSS.
pub const BOOT_GDT: [u64; 4] = [
    gdt_entry(0, 0, 0),
    gdt_entry(0xa09b, 0, 0xfffff),
    gdt_entry(0xc093, 0, 0xfffff),
    gdt_entry(0x808b, 0, 0xfffff),
];

/// Index of the code segment.
pub const CODE_INDEX: u8 = 1;
/// Index of the data segment.
pub const DATA_INDEX: u8 = 2;
/// Index of the TSS.
pub const TSS_INDEX: u8 = 3;

fn base(entry: u64) -> u64 {
    ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000)
}

fn limit(entry: u64) -> u32 {
    let raw = ((entry & 0xffff) | ((entry >> 32) & 0xf_0000)) as u32;
    // With 4-KiB granularity the limit counts pages.
    if (entry >> 55) & 1 == 1 {
        (raw << 12) | 0xfff
    } else {
        raw
    }
}

/// The KVM segment register value for GDT entry `index`.
pub fn segment(index: u8) -> kvm_segment {
    let entry = BOOT_GDT[usize::from(index)];
    let bit = |n: u32| ((entry >> n) & 1) as u8;
    kvm_segment {
        base: base(entry),
        limit: limit(entry),
        selector: u16::from(index) * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present: bit(47),
        dpl: ((entry >> 45) & 0x3) as u8,
        db: bit(54),
        s: bit(44),
        l: bit(53),
        g: bit(55),
        avl: bit(52),
        unusable: u8::from(bit(47) == 0),
        padding: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_segment_is_64_bit_present_and_flat() {
        let cs = segment(CODE_INDEX);
        assert_eq!((cs.l, cs.db, cs.present, cs.s, cs.g), (1, 0, 1, 1, 1));
        assert_eq!(cs.type_, 0xb);
        assert_eq!((cs.base, cs.limit, cs.selector), (0, 0xffff_ffff, 8));
    }

    #[test]
    fn data_and_tss_segments() {
        let ds = segment(DATA_INDEX);
        assert_eq!((ds.type_, ds.db, ds.l, ds.selector), (0x3, 1, 0, 16));
        let tr = segment(TSS_INDEX);
        assert_eq!((tr.type_, tr.s, tr.present, tr.selector), (0xb, 0, 1, 24));
    }

    #[test]
    fn packing_matches_the_classic_values() {
        assert_eq!(gdt_entry(0xa09b, 0, 0xfffff), 0x00af_9b00_0000_ffff);
        assert_eq!(gdt_entry(0xc093, 0, 0xfffff), 0x00cf_9300_0000_ffff);
    }
}

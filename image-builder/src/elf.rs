//! Just enough ELF reading to tell a static binary from a dynamic one.

/// True when `elf` is a 64-bit little-endian ELF with a PT_INTERP program header, i.e. it needs
/// a dynamic loader (and a libc) that a bare guest does not have. Non-ELF input gives false.
pub fn has_interpreter(elf: &[u8]) -> bool {
    const PT_INTERP: u32 = 3;
    if !elf.starts_with(b"\x7fELF") || elf.get(4) != Some(&2) || elf.get(5) != Some(&1) {
        return false;
    }
    let bytes = |o: usize, n: usize| elf.get(o..o.checked_add(n)?);
    let u16_at = |o: usize| bytes(o, 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |o: usize| bytes(o, 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    let u64_at = |o: usize| {
        bytes(o, 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
    };
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        return false;
    };
    let Ok(phoff) = usize::try_from(phoff) else {
        return false;
    };
    (0..usize::from(phnum)).any(|i| {
        i.checked_mul(usize::from(phentsize))
            .and_then(|o| o.checked_add(phoff))
            .and_then(u32_at)
            == Some(PT_INTERP)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_test_binary_is_dynamic() {
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        assert!(has_interpreter(&me));
    }

    #[test]
    fn junk_and_truncated_input_is_not_elf() {
        assert!(!has_interpreter(b"#!/bin/sh\n"));
        assert!(!has_interpreter(b"\x7fELF\x02\x01"));
        let mut huge_phoff = vec![0u8; 64];
        huge_phoff[..6].copy_from_slice(b"\x7fELF\x02\x01");
        huge_phoff[0x20..0x28].copy_from_slice(&u64::MAX.to_le_bytes());
        huge_phoff[0x38] = 0xff;
        assert!(!has_interpreter(&huge_phoff));
    }
}

//! The in-kernel IOAPIC's view of a pin, for diagnosis: when a device's InterruptStatus stays
//! set and the guest never reads it, the pin says why the interrupt is not delivered (masked,
//! or a level-triggered pin whose Remote IRR is still set because the guest's EOI never came).
//!
//! The redirection entry layout is the 82093AA's (as KVM keeps it): vector in bits 0-7,
//! delivery status 12, Remote IRR 14, trigger mode 15, mask 16, destination 56-63.

use std::fmt;

/// One IOAPIC pin: its redirection entry and whether its input line is asserted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IoapicPin {
    /// The pin number.
    pub pin: u32,
    /// The redirection table entry.
    pub entry: u64,
    /// Whether the IOAPIC's IRR holds the line as asserted.
    pub asserted: bool,
}

impl IoapicPin {
    /// The pin `pin` of an IOAPIC whose IRR register is `irr` and redirection table `table`;
    /// `None` past the table.
    pub fn from_state(pin: u32, irr: u32, table: &[u64]) -> Option<Self> {
        let entry = *table.get(usize::try_from(pin).ok()?)?;
        Some(IoapicPin {
            pin,
            entry,
            asserted: pin < 32 && irr & (1 << pin) != 0,
        })
    }

    fn bit(&self, n: u32) -> bool {
        self.entry & (1 << n) != 0
    }

    /// The vector the guest programmed.
    pub fn vector(&self) -> u8 {
        (self.entry & 0xff) as u8
    }

    /// Whether the guest masked the pin.
    pub fn masked(&self) -> bool {
        self.bit(16)
    }

    /// Whether the pin is level-triggered.
    pub fn level(&self) -> bool {
        self.bit(15)
    }

    /// Whether a level-triggered interrupt was delivered and not yet EOI'd.
    pub fn remote_irr(&self) -> bool {
        self.bit(14)
    }

    /// The destination APIC id (or logical set).
    pub fn destination(&self) -> u8 {
        (self.entry >> 56) as u8
    }
}

impl fmt::Display for IoapicPin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ioapic pin {}: vector {:#04x} dest {:#04x} {}{}{}{}",
            self.pin,
            self.vector(),
            self.destination(),
            if self.level() { "level" } else { "edge" },
            if self.masked() { " masked" } else { "" },
            if self.remote_irr() {
                " remote-irr (delivered, no EOI yet)"
            } else {
                ""
            },
            if self.asserted { " line-asserted" } else { "" },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_a_level_pin_waiting_for_its_eoi() {
        // Vector 0x22, level, Remote IRR, destination 1; line asserted.
        let entry = 0x22 | (1 << 15) | (1 << 14) | (1u64 << 56);
        let mut table = [0u64; 24];
        table[5] = entry;
        let pin = IoapicPin::from_state(5, 1 << 5, &table).unwrap();
        assert!(pin.level() && pin.remote_irr() && !pin.masked() && pin.asserted);
        assert_eq!((pin.vector(), pin.destination()), (0x22, 1));
        assert_eq!(
            pin.to_string(),
            "ioapic pin 5: vector 0x22 dest 0x01 level remote-irr (delivered, no EOI yet) line-asserted"
        );
        let masked = IoapicPin::from_state(4, 0, &[1 << 16; 24]).unwrap();
        assert_eq!(
            masked.to_string(),
            "ioapic pin 4: vector 0x00 dest 0x00 edge masked"
        );
        assert_eq!(IoapicPin::from_state(24, 0, &table), None);
    }
}

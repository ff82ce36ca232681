//! The 8250 UART at 0x3f8 (COM1), from vm-superio, with its interrupt on an irqfd.

use std::io::Write;

use serde::{Deserialize, Serialize};
use vm_superio::serial::{NoEvents, SerialState};
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use crate::bus::BusDevice;

/// COM1's base port.
pub const SERIAL_BASE: u64 = 0x3f8;
/// COM1's register count.
pub const SERIAL_LEN: u64 = 8;

/// Raises an interrupt (or any other event) by writing to an eventfd.
#[derive(Debug)]
pub struct EventFdTrigger(pub EventFd);

impl Trigger for EventFdTrigger {
    type E = std::io::Error;

    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

/// The guest's serial console; output goes to a writer (a rate-limited log, normally) and its
/// interrupt is raised through `T`.
pub struct SerialConsole<T: Trigger> {
    uart: Serial<T, NoEvents, Box<dyn Write + Send>>,
}

impl<T: Trigger> std::fmt::Debug for SerialConsole<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SerialConsole")
    }
}

impl<T: Trigger> SerialConsole<T> {
    /// A UART whose interrupt is raised through `irq` and whose output goes to `out`.
    pub fn new(irq: T, out: Box<dyn Write + Send>) -> Self {
        SerialConsole {
            uart: Serial::new(irq, out),
        }
    }
}

/// The UART's registers and receive FIFO, for a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SerialSnapshot {
    /// Divisor latch (low, high), IER, IIR, LCR, LSR, MCR, MSR and scratch.
    pub registers: [u8; 9],
    /// Received bytes the guest has not read.
    pub in_buffer: Vec<u8>,
}

impl<T: Trigger> SerialConsole<T> {
    /// The UART's state now.
    pub fn snapshot(&self) -> SerialSnapshot {
        let s = self.uart.state();
        SerialSnapshot {
            registers: [
                s.baud_divisor_low,
                s.baud_divisor_high,
                s.interrupt_enable,
                s.interrupt_identification,
                s.line_control,
                s.line_status,
                s.modem_control,
                s.modem_status,
                s.scratch,
            ],
            in_buffer: s.in_buffer,
        }
    }

    /// A UART in `state` (see [`SerialConsole::new`]); a receive FIFO longer than the
    /// UART's is refused.
    pub fn from_snapshot(
        state: &SerialSnapshot,
        irq: T,
        out: Box<dyn Write + Send>,
    ) -> Result<Self, String> {
        let [low, high, ier, iir, lcr, lsr, mcr, msr, scratch] = state.registers;
        let s = SerialState {
            baud_divisor_low: low,
            baud_divisor_high: high,
            interrupt_enable: ier,
            interrupt_identification: iir,
            line_control: lcr,
            line_status: lsr,
            modem_control: mcr,
            modem_status: msr,
            scratch,
            in_buffer: state.in_buffer.clone(),
        };
        let uart = Serial::from_state(&s, irq, NoEvents, out)
            .map_err(|e| format!("the serial port's snapshot state: {e:?}"))?;
        Ok(SerialConsole { uart })
    }
}

impl<T: Trigger + Send> BusDevice for SerialConsole<T> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match (u8::try_from(offset), data.len()) {
            (Ok(off), 1) => data[0] = self.uart.read(off),
            _ => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Ok(off), [value]) = (u8::try_from(offset), data) {
            // Errors here are the interrupt eventfd failing; the output side never fails.
            let _ = self.uart.write(off, *value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::legacy::SharedBuf;

    #[test]
    fn bytes_written_to_thr_reach_the_output() {
        let out = SharedBuf::default();
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut uart = SerialConsole::new(EventFdTrigger(irq), Box::new(out.clone()));
        for b in b"hi\n" {
            uart.write(0, &[*b]);
        }
        assert_eq!(out.0.lock().unwrap().as_slice(), b"hi\n");
        let mut lsr = [0u8];
        uart.read(5, &mut lsr);
        assert_ne!(lsr[0] & 0x20, 0, "transmitter holding register empty");
        let mut wide = [0u8; 2];
        uart.read(0, &mut wide);
        assert_eq!(wide, [0xff, 0xff], "only byte accesses are served");
    }
}

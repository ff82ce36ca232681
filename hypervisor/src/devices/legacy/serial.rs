//! The 8250 UART at 0x3f8 (COM1), from vm-superio, with its interrupt on an irqfd.

use std::io::Write;

use vm_superio::serial::NoEvents;
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

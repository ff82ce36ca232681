//! The i8042 keyboard controller, reduced to what a micro-VM needs: the guest's `reboot=k`
//! writes 0xfe to port 0x64, which signals the VMM that the guest shut down.

use vm_superio::{I8042Device, Trigger};

use crate::bus::BusDevice;

/// First port of the controller (data at 0x60, command/status at 0x64).
pub const I8042_BASE: u64 = 0x60;
/// Ports 0x60 through 0x64.
pub const I8042_LEN: u64 = 5;

/// The controller; `reset` fires when the guest asks for a CPU reset.
#[derive(Debug)]
pub struct I8042<T: Trigger> {
    device: I8042Device<T>,
}

impl<T: Trigger> I8042<T> {
    /// A controller that fires `reset` on the reset command.
    pub fn new(reset: T) -> Self {
        I8042 {
            device: I8042Device::new(reset),
        }
    }
}

impl<T: Trigger + Send> BusDevice for I8042<T> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        // Status 0: output buffer empty, input buffer empty, so the kernel's kb_wait() passes.
        let value = u8::try_from(offset)
            .map(|o| self.device.read(o))
            .unwrap_or(0);
        data.fill(value);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Ok(off), [value]) = (u8::try_from(offset), data) {
            let _ = self.device.write(off, *value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::legacy::EventFdTrigger;
    use vmm_sys_util::eventfd::EventFd;

    #[test]
    fn reset_command_signals_and_other_writes_do_not() {
        let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut dev = I8042::new(EventFdTrigger(evt.try_clone().unwrap()));
        dev.write(4, &[0xaa]);
        dev.write(0, &[0xfe]);
        assert!(evt.read().is_err(), "no reset yet");
        dev.write(4, &[0xfe]);
        assert_eq!(evt.read().unwrap(), 1);
        let mut status = [0xffu8];
        dev.read(4, &mut status);
        assert_eq!(status[0], 0);
    }
}

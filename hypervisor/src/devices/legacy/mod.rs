//! Legacy x86 devices: the 8250 serial console and the i8042 reset line.

mod i8042;
mod ratelimit;
mod serial;

pub use i8042::{I8042, I8042_BASE, I8042_LEN};
pub use ratelimit::RateLimitedWriter;
pub use serial::{EventFdTrigger, SerialConsole, SerialSnapshot, SERIAL_BASE, SERIAL_LEN};

/// A writer whose bytes a test can read back.
#[cfg(test)]
#[derive(Clone, Default)]
pub(crate) struct SharedBuf(pub std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

#[cfg(test)]
impl std::io::Write for SharedBuf {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

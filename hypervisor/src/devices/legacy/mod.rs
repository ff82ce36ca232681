//! Legacy x86 devices: the 8250 serial console and the i8042 reset line.

mod i8042;
mod ratelimit;
mod serial;

pub use i8042::{I8042, I8042_BASE, I8042_LEN};
pub use ratelimit::RateLimitedWriter;
pub use serial::{EventFdTrigger, SerialConsole, SERIAL_BASE, SERIAL_LEN};

//! The device status register (virtio 1.2 section 2.1) as a state machine.
//!
//! The driver walks ACKNOWLEDGE → DRIVER → FEATURES_OK → DRIVER_OK, one bit at a time, each
//! write keeping the bits already set; FAILED may come at any point; writing 0 resets. Anything
//! else (skipping a step, clearing a bit, DRIVER_OK before FEATURES_OK) is refused and leaves
//! the status as it was, which is what a driver that re-reads the register expects.

use std::fmt;

/// ACKNOWLEDGE: the guest found the device.
pub const ACKNOWLEDGE: u32 = 1;
/// DRIVER: the guest has a driver for it.
pub const DRIVER: u32 = 2;
/// DRIVER_OK: the driver is ready; the device may run.
pub const DRIVER_OK: u32 = 4;
/// FEATURES_OK: the driver accepted the features (the device may still clear it).
pub const FEATURES_OK: u32 = 8;
/// DEVICE_NEEDS_RESET: the device hit an error it cannot recover from.
pub const NEEDS_RESET: u32 = 64;
/// FAILED: the driver gave up on the device.
pub const FAILED: u32 = 128;

/// Where the driver is in initialising the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceStatus {
    /// Status 0: after reset, nothing negotiated.
    Reset,
    /// The guest noticed the device.
    Acknowledged,
    /// A driver is bound; features are being negotiated.
    Driver,
    /// Features are agreed; queues are being set up.
    FeaturesOk,
    /// The device is live.
    DriverOk,
    /// The driver gave up; only a reset leaves this state.
    Failed,
}

/// A status write the state machine refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("status write {written:#x} is not allowed in state {from}")]
pub struct StatusError {
    /// The state before the write.
    pub from: DeviceStatus,
    /// The value written.
    pub written: u32,
}

impl fmt::Display for DeviceStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DeviceStatus::Reset => "reset",
            DeviceStatus::Acknowledged => "acknowledged",
            DeviceStatus::Driver => "driver",
            DeviceStatus::FeaturesOk => "features-ok",
            DeviceStatus::DriverOk => "driver-ok",
            DeviceStatus::Failed => "failed",
        })
    }
}

impl DeviceStatus {
    /// The register value of this state (without NEEDS_RESET, which the device adds).
    pub fn bits(self) -> u32 {
        match self {
            DeviceStatus::Reset => 0,
            DeviceStatus::Acknowledged => ACKNOWLEDGE,
            DeviceStatus::Driver => ACKNOWLEDGE | DRIVER,
            DeviceStatus::FeaturesOk => ACKNOWLEDGE | DRIVER | FEATURES_OK,
            DeviceStatus::DriverOk => ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK,
            DeviceStatus::Failed => FAILED,
        }
    }

    /// The state whose register value is `bits` (a snapshot's), if any is.
    pub fn from_bits(bits: u32) -> Option<DeviceStatus> {
        use DeviceStatus::*;
        [Reset, Acknowledged, Driver, FeaturesOk, DriverOk, Failed]
            .into_iter()
            .find(|s| s.bits() == bits)
    }

    /// The state after the driver writes `written` (0, the reset, is always allowed).
    pub fn on_write(self, written: u32) -> Result<DeviceStatus, StatusError> {
        use DeviceStatus::*;
        if written == 0 {
            return Ok(Reset);
        }
        if written & FAILED != 0 {
            return Ok(Failed);
        }
        let next = match self {
            Reset => Acknowledged,
            Acknowledged => Driver,
            Driver => FeaturesOk,
            FeaturesOk => DriverOk,
            DriverOk | Failed => self,
        };
        // The driver's value must be the current bits plus exactly the next step's bit
        // (NEEDS_RESET, which only the device sets, is ignored); rewriting the current value
        // changes nothing.
        let value = written & !NEEDS_RESET;
        if self != Failed && value == next.bits() {
            Ok(next)
        } else if value == self.bits() {
            Ok(self)
        } else {
            Err(StatusError {
                from: self,
                written,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::DeviceStatus::*;
    use super::*;

    #[test]
    fn the_driver_walks_the_steps_in_order() {
        let mut s = Reset;
        for (write, want) in [
            (1, Acknowledged),
            (3, Driver),
            (11, FeaturesOk),
            (15, DriverOk),
            (15, DriverOk),
        ] {
            s = s.on_write(write).unwrap();
            assert_eq!(s, want);
            assert_eq!(s.bits(), write);
        }
        assert_eq!(s.on_write(0), Ok(Reset));
    }

    #[test]
    fn skipped_steps_and_cleared_bits_are_refused() {
        for (from, write) in [
            (Reset, 3),
            (Reset, 4),
            (Acknowledged, 11),
            (Driver, 7),
            (FeaturesOk, 7),
            (DriverOk, 11),
            (Failed, 1),
        ] {
            let err = from.on_write(write).unwrap_err();
            assert_eq!(
                err,
                StatusError {
                    from,
                    written: write
                }
            );
        }
    }

    #[test]
    fn failed_from_anywhere_and_only_reset_leaves_it() {
        for from in [Reset, Acknowledged, Driver, FeaturesOk, DriverOk] {
            assert_eq!(from.on_write(from.bits() | FAILED), Ok(Failed));
        }
        assert_eq!(Failed.on_write(FAILED), Ok(Failed));
        assert_eq!(Failed.on_write(0), Ok(Reset));
    }
}

//! Address-range dispatch of guest port I/O and MMIO accesses to devices.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// A device that answers guest reads and writes in its address range.
pub trait BusDevice: Send {
    /// Fills `data` for a read at `offset` from the device's base.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Handles a write at `offset` from the device's base.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// A shared, lockable device.
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

/// Errors inserting a device.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    /// The range overlaps another device's, or is empty or wraps.
    #[error("bus range {base:#x}+{len:#x} overlaps another device or is empty")]
    Overlap { base: u64, len: u64 },
}

/// A set of non-overlapping ranges, each owned by one device.
#[derive(Default)]
pub struct Bus {
    devices: BTreeMap<u64, (u64, SharedDevice)>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ranges: Vec<_> = self.devices.iter().map(|(b, (l, _))| (*b, *l)).collect();
        f.debug_struct("Bus").field("ranges", &ranges).finish()
    }
}

impl Bus {
    /// Adds `device` at `[base, base + len)`.
    pub fn insert(&mut self, base: u64, len: u64, device: SharedDevice) -> Result<(), BusError> {
        let end = base
            .checked_add(len)
            .filter(|_| len > 0)
            .ok_or(BusError::Overlap { base, len })?;
        let before = self.devices.range(..end).next_back();
        if before.is_some_and(|(b, (l, _))| b + l > base) {
            return Err(BusError::Overlap { base, len });
        }
        self.devices.insert(base, (len, device));
        Ok(())
    }

    fn find(&self, addr: u64, size: usize) -> Option<(u64, &SharedDevice)> {
        let (base, (len, dev)) = self.devices.range(..=addr).next_back()?;
        let offset = addr - base;
        (offset.checked_add(size as u64)? <= *len).then_some((offset, dev))
    }

    /// Dispatches a read; returns false (leaving `data` untouched) when no device owns `addr`.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((offset, dev)) => {
                // A poisoned lock means a device panicked earlier; keep serving the others.
                dev.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .read(offset, data);
                true
            }
            None => false,
        }
    }

    /// Dispatches a write; returns false when no device owns `addr`.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((offset, dev)) => {
                dev.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .write(offset, data);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Recorder {
        writes: Vec<(u64, Vec<u8>)>,
    }

    impl BusDevice for Recorder {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.writes.push((offset, data.to_vec()));
        }
    }

    #[test]
    fn dispatch_by_range_with_offsets() {
        let mut bus = Bus::default();
        let dev = Arc::new(Mutex::new(Recorder::default()));
        bus.insert(0x3f8, 8, dev.clone()).unwrap();
        let mut b = [0u8; 1];
        assert!(bus.read(0x3fd, &mut b));
        assert_eq!(b[0], 5);
        assert!(bus.write(0x3f8, b"x"));
        assert!(!bus.read(0x400, &mut b), "past the end");
        assert!(!bus.read(0x3f7, &mut b), "before the start");
        let mut wide = [0u8; 4];
        assert!(
            !bus.read(0x3fe, &mut wide),
            "an access straddling the end is refused"
        );
        assert_eq!(dev.lock().unwrap().writes, vec![(0, b"x".to_vec())]);
    }

    #[test]
    fn overlaps_are_refused() {
        let mut bus = Bus::default();
        let dev = Arc::new(Mutex::new(Recorder::default()));
        bus.insert(0x1000, 0x1000, dev.clone()).unwrap();
        assert!(bus.insert(0x1800, 0x1000, dev.clone()).is_err());
        assert!(bus.insert(0x0800, 0x1000, dev.clone()).is_err());
        assert!(bus.insert(0x2000, 0, dev.clone()).is_err());
        assert!(bus.insert(u64::MAX, 2, dev.clone()).is_err());
        bus.insert(0x2000, 0x1000, dev).unwrap();
    }
}

//! Devices the guest sees: legacy PIO devices and (later) virtio-mmio devices.

pub mod legacy;

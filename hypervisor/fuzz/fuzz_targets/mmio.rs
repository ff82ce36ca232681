//! Fuzz target `mmio`:
//! virtio-mmio register accesses on an MmioTransport;
//! the harness is husk_hypervisor::fuzzing::mmio.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| husk_hypervisor::fuzzing::mmio(data));

//! Fuzz target `net_header`:
//! virtio-net headers (NetHeader, check_tx) and TX/RX chains through NetQueues;
//! the harness is husk_hypervisor::fuzzing::net_header.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| husk_hypervisor::fuzzing::net_header(data));

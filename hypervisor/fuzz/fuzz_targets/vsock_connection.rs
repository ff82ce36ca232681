//! Fuzz target `vsock_connection`:
//! one vsock Connection driven by guest packets and host-side events;
//! the harness is husk_hypervisor::fuzzing::vsock_connection.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| husk_hypervisor::fuzzing::vsock_connection(data));

//! Fuzz target `hybrid_handshake`:
//! the hybrid-vsock CONNECT/OK handshake lines;
//! the harness is husk_hypervisor::fuzzing::hybrid_handshake.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| husk_hypervisor::fuzzing::hybrid_handshake(data));

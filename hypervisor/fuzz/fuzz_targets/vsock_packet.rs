//! Fuzz target `vsock_packet`:
//! vsock TX/RX chains through VsockQueues (packet::read_tx, rx_capacity, write_rx);
//! the harness is husk_hypervisor::fuzzing::vsock_packet.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| husk_hypervisor::fuzzing::vsock_packet(data));

//! Fuzz target `chain`:
//! descriptor chains popped and validated (GuestChain::parse), then read and written;
//! the harness is husk_hypervisor::fuzzing::chain.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| husk_hypervisor::fuzzing::chain(data));

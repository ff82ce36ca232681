//! Fuzz target `balloon`:
//! inflate, deflate and free page reporting chains through BalloonQueues;
//! the harness is husk_hypervisor::fuzzing::balloon.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| husk_hypervisor::fuzzing::balloon(data));

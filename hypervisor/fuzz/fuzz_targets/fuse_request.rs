//! Fuzz target `fuse_request`:
//! FUSE requests on the virtio-fs queues through FsQueues and the passthrough server;
//! the harness is husk_hypervisor::fuzzing::fuse_request.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| husk_hypervisor::fuzzing::fuse_request(data));

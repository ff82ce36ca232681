//! husk's end-to-end harness.
//!
//! - [`hostkind`]: is this host's `/dev/kvm` hardware virtualization (VT-x/AMD-V) or not?
//! - [`testhost`]: run a command where hardware KVM exists: natively, or inside a QEMU TCG guest
//!   whose emulated AMD SVM gives it a real `/dev/kvm` (the "test host").
//! - [`microvm`]: boot a guest kernel under QEMU's `microvm` machine, the reference VMM.
//! - [`e2e`]: what end-to-end tests need from their environment (artifacts, KVM).
//! - [`bench`]: statistics and the results file of `make bench`.

pub mod bench;
pub mod e2e;
pub mod hostkind;
pub mod microvm;
pub mod process;
pub mod testhost;

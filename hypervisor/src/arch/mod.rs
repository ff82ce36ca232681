//! x86_64 specifics: the guest physical memory layout, boot structures and vCPU state.
//!
//! Everything here is plain data computed from the VM configuration; the only KVM calls are in
//! [`vcpu_state`], which applies the computed state to a vCPU.

pub mod boot;
pub mod cpuid;
pub mod gdt;
pub mod ioapic;
pub mod layout;
pub mod mptable;
pub mod vcpu_state;

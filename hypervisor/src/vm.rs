//! The KVM virtual machine: in-kernel interrupt controllers and PIT, and guest RAM registered
//! as KVM memory slots.

use kvm_bindings::{
    kvm_irqchip, kvm_pit_config, kvm_userspace_memory_region, KVM_IRQCHIP_IOAPIC,
    KVM_PIT_SPEAKER_DUMMY,
};
use std::sync::Arc;

use kvm_ioctls::{Cap, Kvm, VmFd};
use vm_memory::{Address, GuestMemory as _, GuestMemoryRegion};

use crate::arch::ioapic::IoapicPin;
use crate::arch::layout::KVM_TSS_ADDRESS;
use crate::memory::{GuestMemory, MemoryError};

/// Errors creating the VM; each says which step failed.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// /dev/kvm could not be opened.
    #[error("opening /dev/kvm: {0} (husk needs KVM with VT-x or AMD-V; `husk-testhost --explain` tells what this host has)")]
    OpenKvm(kvm_ioctls::Error),
    /// A capability the VMM relies on is missing.
    #[error("KVM lacks {0:?}, which husk-vmm needs")]
    MissingCap(Cap),
    /// A KVM call failed.
    #[error("{0}: {1}")]
    Kvm(&'static str, kvm_ioctls::Error),
    /// Guest memory could not be created.
    #[error(transparent)]
    Memory(#[from] MemoryError),
}

/// The VM and its memory.
#[derive(Debug)]
pub struct Vm {
    /// The KVM system handle (for CPUID queries).
    pub kvm: Kvm,
    /// The VM.
    pub fd: Arc<VmFd>,
    /// Guest RAM.
    pub memory: GuestMemory,
}

const REQUIRED_CAPS: &[Cap] = &[
    Cap::Irqchip,
    Cap::Ioeventfd,
    Cap::Irqfd,
    Cap::UserMemory,
    Cap::Pit2,
    Cap::SetTssAddr,
];

impl Vm {
    /// Creates a VM over `memory` (see [`memory::create`]), registered as its KVM memory slots.
    pub fn create(memory: GuestMemory) -> Result<Self, VmError> {
        let kvm = Kvm::new().map_err(VmError::OpenKvm)?;
        if let Some(cap) = REQUIRED_CAPS.iter().find(|c| !kvm.check_extension(**c)) {
            return Err(VmError::MissingCap(*cap));
        }
        let fd = kvm
            .create_vm()
            .map_err(|e| VmError::Kvm("creating the VM", e))?;
        fd.set_tss_address(KVM_TSS_ADDRESS as usize)
            .map_err(|e| VmError::Kvm("setting the TSS address", e))?;
        fd.create_irq_chip()
            .map_err(|e| VmError::Kvm("creating the in-kernel irqchip", e))?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        fd.create_pit2(pit)
            .map_err(|e| VmError::Kvm("creating the in-kernel PIT", e))?;

        for (slot, region) in memory.iter().enumerate() {
            let host = memory.get_host_address(region.start_addr()).map_err(|_| {
                VmError::Kvm(
                    "finding guest RAM's host address",
                    kvm_ioctls::Error::new(libc::EFAULT),
                )
            })?;
            let mem_region = kvm_userspace_memory_region {
                slot: slot as u32,
                flags: 0,
                guest_phys_addr: region.start_addr().raw_value(),
                memory_size: region.len(),
                userspace_addr: host as u64,
            };
            // SAFETY: the region is a live mapping of `memory.len()` bytes owned by `memory`,
            // which the returned Vm keeps alive as long as the VM fd; the slots do not overlap.
            unsafe { fd.set_user_memory_region(mem_region) }
                .map_err(|e| VmError::Kvm("registering guest RAM", e))?;
        }
        Ok(Vm {
            kvm,
            fd: Arc::new(fd),
            memory,
        })
    }

    /// The in-kernel IOAPIC's state of `pins` (pins past its table are left out), for
    /// diagnosis: the control socket's `queues` shows each virtio device's pin.
    pub fn ioapic_pins(&self, pins: &[u32]) -> Result<Vec<IoapicPin>, VmError> {
        let mut chip = kvm_irqchip {
            chip_id: KVM_IRQCHIP_IOAPIC,
            ..Default::default()
        };
        self.fd
            .get_irqchip(&mut chip)
            .map_err(|e| VmError::Kvm("reading the IOAPIC state", e))?;
        // SAFETY: with chip_id KVM_IRQCHIP_IOAPIC, KVM filled the union's `ioapic` member; it is
        // plain data (integers and unions of integers) valid for any bit pattern.
        let state = unsafe { chip.chip.ioapic };
        let table: Vec<u64> = state
            .redirtbl
            .iter()
            // SAFETY: both members of the entry union are 8 bytes of plain data; `bits` reads
            // the whole entry.
            .map(|e| unsafe { e.bits })
            .collect();
        Ok(pins
            .iter()
            .filter_map(|p| IoapicPin::from_state(*p, state.irr, &table))
            .collect())
    }
}

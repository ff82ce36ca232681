//! The VM-wide state KVM holds: the two PICs, the IOAPIC, the PIT and the kvmclock.

use kvm_bindings::{
    kvm_clock_data, kvm_irqchip, kvm_pit_state2, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE,
};
use kvm_ioctls::VmFd;
use serde::{Deserialize, Serialize};

/// A VM ioctl failed.
#[derive(Debug, thiserror::Error)]
#[error("{step}: {source}")]
pub struct VmStateError {
    /// What was being read or written.
    pub step: &'static str,
    /// KVM's error.
    #[source]
    pub source: kvm_ioctls::Error,
}

/// The in-kernel interrupt controllers, timer and clock.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KvmVmState {
    /// The master 8259.
    pub pic_master: kvm_irqchip,
    /// The slave 8259.
    pub pic_slave: kvm_irqchip,
    /// The IOAPIC: its redirection table and pending lines.
    pub ioapic: kvm_irqchip,
    /// The 8254 PIT's channels.
    pub pit: kvm_pit_state2,
    /// The kvmclock: the guest's monotonic time base.
    pub clock: kvm_clock_data,
}

fn chip(vm: &VmFd, chip_id: u32, step: &'static str) -> Result<kvm_irqchip, VmStateError> {
    let mut c = kvm_irqchip {
        chip_id,
        ..Default::default()
    };
    vm.get_irqchip(&mut c)
        .map_err(|source| VmStateError { step, source })?;
    Ok(c)
}

impl KvmVmState {
    /// Reads the state (the vCPUs are parked).
    pub fn save(vm: &VmFd) -> Result<Self, VmStateError> {
        let err = |step| move |source| VmStateError { step, source };
        Ok(KvmVmState {
            pic_master: chip(vm, KVM_IRQCHIP_PIC_MASTER, "reading the master PIC")?,
            pic_slave: chip(vm, KVM_IRQCHIP_PIC_SLAVE, "reading the slave PIC")?,
            ioapic: chip(vm, KVM_IRQCHIP_IOAPIC, "reading the IOAPIC")?,
            pit: vm.get_pit2().map_err(err("reading the PIT"))?,
            clock: vm.get_clock().map_err(err("reading the kvmclock"))?,
        })
    }

    /// Writes the state into a VM whose vCPUs have not run. The kvmclock continues from the
    /// snapshot's value: the guest's monotonic time does not jump by the time the snapshot
    /// lay on disk (the wall clock is the agent's to set).
    pub fn restore(&self, vm: &VmFd) -> Result<(), VmStateError> {
        let err = |step| move |source| VmStateError { step, source };
        vm.set_pit2(&self.pit).map_err(err("setting the PIT"))?;
        let clock = kvm_clock_data {
            clock: self.clock.clock,
            ..Default::default()
        };
        vm.set_clock(&clock).map_err(err("setting the kvmclock"))?;
        for (c, step) in [
            (&self.pic_master, "setting the master PIC"),
            (&self.pic_slave, "setting the slave PIC"),
            (&self.ioapic, "setting the IOAPIC"),
        ] {
            vm.set_irqchip(c).map_err(err(step))?;
        }
        Ok(())
    }
}

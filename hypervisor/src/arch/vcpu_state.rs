//! The register state a vCPU needs to enter the Linux 64-bit boot protocol.

use kvm_bindings::{kvm_fpu, kvm_msr_entry, kvm_regs, CpuId, Msrs};
use kvm_ioctls::VcpuFd;
use vm_memory::GuestAddress;

use super::cpuid;
use super::gdt::{segment, BOOT_GDT, CODE_INDEX, DATA_INDEX, TSS_INDEX};
use super::layout::{
    BOOT_GDT_START, BOOT_IDT_START, BOOT_STACK_POINTER, PML4_START, ZERO_PAGE_START,
};

const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
const MISC_ENABLE_FAST_STRING: u64 = 1;
const MTRR_ENABLE_WRITEBACK: u64 = (1 << 11) | 6;

const X86_CR0_PE: u64 = 0x1;
const X86_CR0_PG: u64 = 0x8000_0000;
const X86_CR4_PAE: u64 = 0x20;
const EFER_LME: u64 = 0x100;
const EFER_LMA: u64 = 0x400;

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

/// A KVM call that failed while setting up a vCPU, naming the step.
#[derive(Debug, thiserror::Error)]
#[error("vCPU {vcpu}: {step}: {source}")]
pub struct VcpuSetupError {
    /// The vCPU index.
    pub vcpu: u8,
    /// What was being set.
    pub step: &'static str,
    /// The KVM error.
    pub source: kvm_ioctls::Error,
}

/// The MSR values at boot.
pub fn boot_msrs() -> Vec<kvm_msr_entry> {
    let zero = [
        MSR_IA32_SYSENTER_CS,
        MSR_IA32_SYSENTER_ESP,
        MSR_IA32_SYSENTER_EIP,
        MSR_STAR,
        MSR_CSTAR,
        MSR_KERNEL_GS_BASE,
        MSR_SYSCALL_MASK,
        MSR_LSTAR,
        MSR_IA32_TSC,
    ];
    let mut msrs: Vec<kvm_msr_entry> = zero
        .iter()
        .map(|&index| kvm_msr_entry {
            index,
            data: 0,
            ..Default::default()
        })
        .collect();
    msrs.push(kvm_msr_entry {
        index: MSR_IA32_MISC_ENABLE,
        data: MISC_ENABLE_FAST_STRING,
        ..Default::default()
    });
    msrs.push(kvm_msr_entry {
        index: MSR_MTRR_DEF_TYPE,
        data: MTRR_ENABLE_WRITEBACK,
        ..Default::default()
    });
    msrs
}

fn set_apic_delivery_mode(regs: &mut [std::os::raw::c_char], offset: usize, mode: u32) {
    let mut bytes = [0u8; 4];
    for (i, b) in bytes.iter_mut().enumerate() {
        *b = regs[offset + i] as u8;
    }
    let value = (u32::from_le_bytes(bytes) & !0x700) | (mode << 8);
    for (i, b) in value.to_le_bytes().iter().enumerate() {
        regs[offset + i] = *b as std::os::raw::c_char;
    }
}

/// Configures vCPU `id` of `count` to start at `entry` in 64-bit mode with the zero page in RSI.
pub fn configure(
    vcpu: &VcpuFd,
    supported_cpuid: &CpuId,
    caps: cpuid::HostCaps,
    id: u8,
    count: u8,
    entry: GuestAddress,
) -> Result<(), VcpuSetupError> {
    let fail = |step: &'static str| {
        move |source| VcpuSetupError {
            vcpu: id,
            step,
            source,
        }
    };

    let mut cpuid = supported_cpuid.clone();
    cpuid::patch(cpuid.as_mut_slice(), id, count, caps);
    vcpu.set_cpuid2(&cpuid).map_err(fail("set CPUID"))?;

    let entries = boot_msrs();
    let msrs = Msrs::from_entries(&entries).map_err(|_| VcpuSetupError {
        vcpu: id,
        step: "build MSR list",
        source: kvm_ioctls::Error::new(libc::EINVAL),
    })?;
    let written = vcpu.set_msrs(&msrs).map_err(fail("set MSRs"))?;
    if written != entries.len() {
        let index = entries[written].index;
        return Err(VcpuSetupError {
            vcpu: id,
            step: if index == MSR_IA32_MISC_ENABLE {
                "set MSR IA32_MISC_ENABLE"
            } else {
                "set boot MSRs"
            },
            source: kvm_ioctls::Error::new(libc::EINVAL),
        });
    }

    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(fail("set FPU"))?;

    let regs = kvm_regs {
        rflags: 0x2,
        rip: entry.0,
        rsp: BOOT_STACK_POINTER,
        rbp: BOOT_STACK_POINTER,
        rsi: ZERO_PAGE_START,
        ..Default::default()
    };
    vcpu.set_regs(&regs).map_err(fail("set registers"))?;

    let mut sregs = vcpu.get_sregs().map_err(fail("get special registers"))?;
    sregs.gdt.base = BOOT_GDT_START;
    sregs.gdt.limit = (std::mem::size_of_val(&BOOT_GDT) - 1) as u16;
    sregs.idt.base = BOOT_IDT_START;
    sregs.idt.limit = 7;
    sregs.cs = segment(CODE_INDEX);
    let data = segment(DATA_INDEX);
    (sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss) = (data, data, data, data, data);
    sregs.tr = segment(TSS_INDEX);
    sregs.cr3 = PML4_START;
    sregs.cr4 |= X86_CR4_PAE;
    sregs.cr0 |= X86_CR0_PE | X86_CR0_PG;
    sregs.efer |= EFER_LME | EFER_LMA;
    vcpu.set_sregs(&sregs)
        .map_err(fail("set special registers"))?;

    let mut lapic = vcpu.get_lapic().map_err(fail("get LAPIC"))?;
    set_apic_delivery_mode(&mut lapic.regs, APIC_LVT0, APIC_MODE_EXTINT);
    set_apic_delivery_mode(&mut lapic.regs, APIC_LVT1, APIC_MODE_NMI);
    vcpu.set_lapic(&lapic).map_err(fail("set LAPIC"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lint_delivery_modes_keep_other_bits() {
        let mut regs = [0 as std::os::raw::c_char; 1024];
        regs[APIC_LVT0] = 0x20; // vector bits stay
        regs[APIC_LVT0 + 1] = 0x01; // a stale mode bit is replaced
        set_apic_delivery_mode(&mut regs, APIC_LVT0, APIC_MODE_EXTINT);
        set_apic_delivery_mode(&mut regs, APIC_LVT1, APIC_MODE_NMI);
        assert_eq!(regs[APIC_LVT0] as u8, 0x20);
        assert_eq!(regs[APIC_LVT0 + 1] as u8, 0x07);
        assert_eq!(regs[APIC_LVT1 + 1] as u8, 0x04);
    }

    #[test]
    fn boot_msrs_enable_fast_strings_and_writeback() {
        let msrs = boot_msrs();
        let get = |i: u32| msrs.iter().find(|m| m.index == i).map(|m| m.data);
        assert_eq!(get(MSR_IA32_MISC_ENABLE), Some(1));
        assert_eq!(get(MSR_MTRR_DEF_TYPE), Some((1 << 11) | 6));
        assert_eq!(get(MSR_LSTAR), Some(0));
    }
}

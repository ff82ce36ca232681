//! Per-vCPU adjustments to the CPUID KVM supports: APIC ids, topology, and the hypervisor bit.

use kvm_bindings::kvm_cpuid_entry2;

const LEAF_FEATURES: u32 = 0x1;
const LEAF_THERMAL: u32 = 0x6;
const LEAF_TOPOLOGY: u32 = 0xb;
const ECX_HYPERVISOR: u32 = 1 << 31;
const ECX_TSC_DEADLINE: u32 = 1 << 24;
const EDX_HTT: u32 = 1 << 28;
const ECX_EPB: u32 = 1 << 3;
const CLFLUSH_LINE_8_QWORDS: u32 = 8 << 8;

/// Host facts that CPUID must reflect but KVM's supported-CPUID list leaves out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HostCaps {
    /// KVM emulates the LAPIC TSC-deadline timer (KVM_CAP_TSC_DEADLINE_TIMER). KVM reports it
    /// as a capability, not in CPUID; without the bit the guest calibrates its APIC timer
    /// against the PIT at boot, which costs hundreds of milliseconds.
    pub tsc_deadline: bool,
}

/// Patches `entries` (KVM's supported CPUID) for vCPU `id` of `count`.
pub fn patch(entries: &mut [kvm_cpuid_entry2], id: u8, count: u8, caps: HostCaps) {
    for e in entries.iter_mut() {
        match e.function {
            LEAF_FEATURES => {
                e.ebx = (u32::from(id) << 24) | CLFLUSH_LINE_8_QWORDS;
                if count > 1 {
                    e.ebx |= u32::from(count) << 16;
                    e.edx |= EDX_HTT;
                } else {
                    e.edx &= !EDX_HTT;
                }
                e.ecx |= ECX_HYPERVISOR;
                if caps.tsc_deadline {
                    e.ecx |= ECX_TSC_DEADLINE;
                }
            }
            // The guest cannot use the energy/performance bias MSR.
            LEAF_THERMAL => e.ecx &= !ECX_EPB,
            // x2APIC id of this vCPU in every topology level.
            LEAF_TOPOLOGY => e.edx = u32::from(id),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(function: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            ebx: 0xffff_ffff,
            edx: EDX_HTT,
            ecx: ECX_EPB,
            ..Default::default()
        }
    }

    #[test]
    fn apic_id_count_and_hypervisor_bit() {
        let mut e = [
            leaf(LEAF_FEATURES),
            leaf(LEAF_THERMAL),
            leaf(LEAF_TOPOLOGY),
            leaf(0x8000_0001),
        ];
        patch(&mut e, 3, 4, HostCaps { tsc_deadline: true });
        assert_eq!(e[0].ebx >> 24, 3);
        assert_eq!((e[0].ebx >> 16) & 0xff, 4);
        assert_ne!(e[0].ecx & ECX_HYPERVISOR, 0);
        assert_ne!(e[0].edx & EDX_HTT, 0);
        assert_eq!(e[1].ecx & ECX_EPB, 0);
        assert_eq!(e[2].edx, 3);
        assert_ne!(e[0].ecx & ECX_TSC_DEADLINE, 0);
        assert_eq!(e[3].ebx, 0xffff_ffff, "other leaves are untouched");
    }

    #[test]
    fn a_single_vcpu_has_no_htt() {
        let mut e = [leaf(LEAF_FEATURES)];
        e[0].ecx = 0;
        patch(&mut e, 0, 1, HostCaps::default());
        assert_eq!(
            e[0].ecx & ECX_TSC_DEADLINE,
            0,
            "not offered unless KVM has it"
        );
        assert_eq!(e[0].edx & EDX_HTT, 0);
        assert_eq!((e[0].ebx >> 16) & 0xff, 0);
    }
}

//! Whether a snapshot can run on this host: the CPU features KVM offers and the KVM
//! capabilities restore relies on must be the ones the snapshot was taken with. A guest kernel
//! picks its code paths (XSAVE layout, TSC deadline timer, AVX) at boot; restored on a host
//! that lacks one, it would fault somewhere far from the cause. So the check is strict: the
//! whole supported-CPUID table must match (its CRC-32), and every recorded capability.

use kvm_bindings::KVM_MAX_CPUID_ENTRIES;
use kvm_ioctls::{Cap, Kvm};
use serde::{Deserialize, Serialize};

/// The capabilities a restore depends on.
const CAPS: [Cap; 7] = [
    Cap::Xsave,
    Cap::Xcrs,
    Cap::VcpuEvents,
    Cap::Debugregs,
    Cap::AdjustClock,
    Cap::TscDeadlineTimer,
    Cap::TscControl,
];

/// The CPUID words that describe what the CPU is and can do: `(leaf, subleaf, register)` with
/// registers 0 to 3 for EAX, EBX, ECX, EDX.
const FEATURE_WORDS: [(u32, u32, u8); 16] = [
    (0, 0, 1),
    (0, 0, 2),
    (0, 0, 3),
    (1, 0, 0),
    (1, 0, 2),
    (1, 0, 3),
    (7, 0, 1),
    (7, 0, 2),
    (7, 0, 3),
    (7, 1, 0),
    (0xd, 0, 0),
    (0xd, 0, 3),
    (0xd, 1, 0),
    (0x8000_0001, 0, 2),
    (0x8000_0001, 0, 3),
    (0x8000_0008, 0, 1),
];

/// What a snapshot records of the host it was taken on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostFingerprint {
    /// The CPU's vendor and brand string, for messages.
    pub cpu: String,
    /// The feature words of KVM's supported CPUID ([`FEATURE_WORDS`]), in that order (`None`:
    /// the leaf is absent).
    pub cpuid: Vec<Option<u32>>,
    /// Each capability of [`CAPS`] by name, and whether KVM has it.
    pub caps: Vec<(String, bool)>,
}

/// The host differs from the snapshot's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CompatError {
    /// KVM's CPUID differs.
    #[error("the snapshot was taken on a host whose KVM offers other CPU features: CPUID leaf {leaf:#x}.{subleaf} {reg} is {saved} there and {here} here ({cpu_saved} there, {cpu_here} here): cold-boot instead")]
    Cpuid {
        /// The leaf.
        leaf: u32,
        /// The subleaf.
        subleaf: u32,
        /// The register.
        reg: &'static str,
        /// The snapshot host's value.
        saved: String,
        /// This host's value.
        here: String,
        /// The snapshot host's CPU.
        cpu_saved: String,
        /// This host's CPU.
        cpu_here: String,
    },
    /// A capability differs.
    #[error("KVM capability {name} was {saved} when the snapshot was taken and is {here} here")]
    Cap {
        /// The capability.
        name: String,
        /// Present then.
        saved: bool,
        /// Present now.
        here: bool,
    },
    /// KVM could not be asked.
    #[error("reading KVM's supported CPUID: {0}")]
    Kvm(String),
}

fn brand(entries: &[kvm_bindings::kvm_cpuid_entry2]) -> String {
    let regs = |f: u32| {
        entries
            .iter()
            .find(|e| e.function == f && e.index == 0)
            .map(|e| (e.eax, e.ebx, e.ecx, e.edx))
    };
    let mut bytes = Vec::new();
    if let Some((_, b, c, d)) = regs(0) {
        for r in [b, d, c] {
            bytes.extend_from_slice(&r.to_le_bytes());
        }
        bytes.push(b' ');
    }
    for f in 0x8000_0002..=0x8000_0004 {
        if let Some((a, b, c, d)) = regs(f) {
            for r in [a, b, c, d] {
                bytes.extend_from_slice(&r.to_le_bytes());
            }
        }
    }
    let text: String = String::from_utf8_lossy(&bytes)
        .chars()
        .filter(|c| !c.is_control())
        .collect();
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

impl HostFingerprint {
    /// This host's fingerprint.
    pub fn of(kvm: &Kvm) -> Result<Self, CompatError> {
        let cpuid = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(|e| CompatError::Kvm(e.to_string()))?;
        let entries = cpuid.as_slice();
        let caps = CAPS
            .iter()
            .map(|c| (format!("{c:?}"), kvm.check_extension(*c)))
            .collect();
        Ok(Self::from_parts(entries, caps))
    }

    /// The fingerprint of a CPUID table and capability list.
    pub fn from_parts(
        entries: &[kvm_bindings::kvm_cpuid_entry2],
        caps: Vec<(String, bool)>,
    ) -> Self {
        let cpuid = FEATURE_WORDS
            .iter()
            .map(|&(function, index, reg)| {
                entries
                    .iter()
                    .find(|e| e.function == function && e.index == index)
                    .map(|e| [e.eax, e.ebx, e.ecx, e.edx][usize::from(reg)])
            })
            .collect();
        HostFingerprint {
            cpu: brand(entries),
            cpuid,
            caps,
        }
    }

    /// Whether a snapshot taken on `saved` can be restored here (on `self`).
    pub fn accepts(&self, saved: &HostFingerprint) -> Result<(), CompatError> {
        let show = |w: Option<&Option<u32>>| match w {
            Some(Some(v)) => format!("{v:#010x}"),
            _ => "absent".to_string(),
        };
        for (i, &(leaf, subleaf, reg)) in FEATURE_WORDS.iter().enumerate() {
            let (there, here) = (saved.cpuid.get(i), self.cpuid.get(i));
            if there != here {
                return Err(CompatError::Cpuid {
                    leaf,
                    subleaf,
                    reg: ["EAX", "EBX", "ECX", "EDX"][usize::from(reg)],
                    saved: show(there),
                    here: show(here),
                    cpu_saved: saved.cpu.clone(),
                    cpu_here: self.cpu.clone(),
                });
            }
        }
        for (name, was) in &saved.caps {
            let here = self
                .caps
                .iter()
                .find(|(n, _)| n == name)
                .is_some_and(|(_, h)| *h);
            if here != *was {
                return Err(CompatError::Cap {
                    name: name.clone(),
                    saved: *was,
                    here,
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use kvm_bindings::kvm_cpuid_entry2;

    use super::*;

    fn entry(function: u32, eax: u32, ebx: u32, ecx: u32, edx: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            eax,
            ebx,
            ecx,
            edx,
            ..Default::default()
        }
    }

    fn host(ecx1: u32, tsc_deadline: bool) -> HostFingerprint {
        // Leaf 0: "AuthenticAMD" in ebx, edx, ecx.
        let vendor = entry(0, 0x10, 0x6874_7541, 0x444d_4163, 0x6974_6e65);
        let features = entry(1, 0, 0, ecx1, 0);
        HostFingerprint::from_parts(
            &[vendor, features],
            vec![("TscDeadlineTimer".into(), tsc_deadline)],
        )
    }

    #[test]
    fn the_same_host_accepts_its_own_snapshot() {
        assert_eq!(host(1, true).accepts(&host(1, true)), Ok(()));
        assert!(host(1, true).cpu.starts_with("AuthenticAMD"));
    }

    #[test]
    fn the_apic_id_of_the_cpu_that_asked_does_not_count() {
        let on = |apic: u32| {
            let leaf1 = kvm_cpuid_entry2 {
                function: 1,
                ebx: apic << 24 | 0x0800,
                ecx: 1,
                ..Default::default()
            };
            let leaf_b = entry(0xb, 0, 0, 0, apic);
            HostFingerprint::from_parts(&[leaf1, leaf_b], vec![])
        };
        assert_eq!(on(0).accepts(&on(5)), Ok(()));
    }

    #[test]
    fn another_cpuid_or_capability_is_refused_by_name() {
        let e = host(1, true).accepts(&host(3, true)).unwrap_err();
        assert!(
            e.to_string().contains(
                "other CPU features: CPUID leaf 0x1.0 ECX is 0x00000003 there and 0x00000001 here"
            ),
            "{e}"
        );
        let e = host(1, false).accepts(&host(1, true)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "KVM capability TscDeadlineTimer was true when the snapshot was taken and is false here"
        );
    }
}

//! One vCPU's complete state, read on its own thread while it is parked, and written back into
//! a fresh vCPU before it first runs.
//!
//! Reading first completes any exit the vCPU is in the middle of: after a port or MMIO read
//! exit, the value the VMM supplied only reaches the guest's register on the next KVM_RUN.
//! A KVM_RUN with `immediate_exit` set does that completion and returns at once (EINTR)
//! without running guest code.
//!
//! Writing follows the order KVM's dependencies need: CPUID first (it decides which MSRs and
//! XSAVE features exist), special registers before the LAPIC (APIC_BASE decides xAPIC or
//! x2APIC), MSRs in ascending index (IA32_TSC before IA32_TSC_DEADLINE, which is relative to
//! it), and the pending events last.

use kvm_bindings::{
    kvm_cpuid_entry2, kvm_debugregs, kvm_lapic_state, kvm_mp_state, kvm_msr_entry, kvm_regs,
    kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave, CpuId, Msrs, KVM_MAX_CPUID_ENTRIES,
};
use kvm_ioctls::VcpuFd;
use serde::{Deserialize, Serialize};

/// MSRs per KVM_GET_MSRS / KVM_SET_MSRS call (below the FAM wrapper's bound).
const MSR_CHUNK: usize = 128;

/// MSRs left out of a snapshot: the kvmclock wall-clock MSRs (old and new numbers). Writing
/// one makes KVM write the host's time into guest RAM at once, and Linux reads that only at
/// boot; restored, it would change RAM the snapshot holds for nothing.
const NOT_SAVED: [u32; 2] = [0x11, 0x4b56_4d00];

/// A vCPU ioctl failed.
#[derive(Debug, thiserror::Error)]
#[error("vCPU {vcpu}: {step}: {source}")]
pub struct VcpuStateError {
    /// The vCPU.
    pub vcpu: u8,
    /// What was being read or written.
    pub step: &'static str,
    /// KVM's error.
    #[source]
    pub source: kvm_ioctls::Error,
}

/// Everything KVM holds for one vCPU.
#[derive(Debug, Serialize, Deserialize)]
pub struct VcpuState {
    /// The CPUID the guest sees.
    pub cpuid: Vec<kvm_cpuid_entry2>,
    /// Every MSR KVM could read, by ascending index.
    pub msrs: Vec<kvm_msr_entry>,
    /// General-purpose registers.
    pub regs: kvm_regs,
    /// Segment, control and descriptor-table registers, EFER, APIC base.
    pub sregs: kvm_sregs,
    /// FPU, SSE and AVX state.
    pub xsave: kvm_xsave,
    /// Extended control registers (XCR0).
    pub xcrs: kvm_xcrs,
    /// Debug registers.
    pub debugregs: kvm_debugregs,
    /// The local APIC's registers.
    pub lapic: kvm_lapic_state,
    /// Running, halted or waiting for INIT/SIPI.
    pub mp_state: kvm_mp_state,
    /// Pending exceptions, interrupts, NMIs and SMIs.
    pub events: kvm_vcpu_events,
    /// The guest TSC frequency, where KVM reports it.
    pub tsc_khz: Option<u32>,
}

impl VcpuState {
    /// Reads vCPU `id`'s state; `msr_index` is KVM's list of MSRs to try (those it cannot read
    /// are left out). Call only on the vCPU's thread while it is parked.
    pub fn save(id: u8, fd: &mut VcpuFd, msr_index: &[u32]) -> Result<Self, VcpuStateError> {
        let err = |step| {
            move |source| VcpuStateError {
                vcpu: id,
                step,
                source,
            }
        };
        fd.set_kvm_immediate_exit(1);
        let completed = match fd.run() {
            Err(e) if e.errno() == libc::EINTR => Ok(()),
            Err(e) => Err(e),
            // KVM promises EINTR; an exit here would have run guest code.
            Ok(_) => Err(kvm_ioctls::Error::new(libc::EBUSY)),
        };
        fd.set_kvm_immediate_exit(0);
        completed.map_err(err("completing the last exit"))?;

        let cpuid = fd
            .get_cpuid2(KVM_MAX_CPUID_ENTRIES)
            .map_err(err("reading CPUID"))?
            .as_slice()
            .to_vec();
        Ok(VcpuState {
            cpuid,
            msrs: read_msrs(fd, msr_index).map_err(err("reading MSRs"))?,
            regs: fd.get_regs().map_err(err("reading registers"))?,
            sregs: fd.get_sregs().map_err(err("reading special registers"))?,
            xsave: fd.get_xsave().map_err(err("reading XSAVE state"))?,
            xcrs: fd.get_xcrs().map_err(err("reading XCRs"))?,
            debugregs: fd
                .get_debug_regs()
                .map_err(err("reading debug registers"))?,
            lapic: fd.get_lapic().map_err(err("reading the LAPIC"))?,
            mp_state: fd.get_mp_state().map_err(err("reading the MP state"))?,
            events: fd
                .get_vcpu_events()
                .map_err(err("reading pending events"))?,
            tsc_khz: fd.get_tsc_khz().ok(),
        })
    }

    /// Writes the state into `fd`, a vCPU that has not run. MSRs this KVM refuses are named in
    /// the returned list (the restore goes on without them).
    pub fn restore(&self, id: u8, fd: &VcpuFd) -> Result<Vec<u32>, VcpuStateError> {
        let err = |step| {
            move |source| VcpuStateError {
                vcpu: id,
                step,
                source,
            }
        };
        let cpuid = CpuId::from_entries(&self.cpuid)
            .map_err(|_| kvm_ioctls::Error::new(libc::E2BIG))
            .map_err(err("building CPUID"))?;
        fd.set_cpuid2(&cpuid).map_err(err("setting CPUID"))?;
        if let Some(khz) = self.tsc_khz {
            if fd.get_tsc_khz().ok() != Some(khz) {
                fd.set_tsc_khz(khz)
                    .map_err(err("setting the TSC frequency (the host's differs)"))?;
            }
        }
        fd.set_mp_state(self.mp_state)
            .map_err(err("setting the MP state"))?;
        fd.set_regs(&self.regs).map_err(err("setting registers"))?;
        fd.set_sregs(&self.sregs)
            .map_err(err("setting special registers"))?;
        // SAFETY: `xsave` is a kvm_xsave read by KVM_GET_XSAVE (no extended area past the
        // 4 KiB region), so KVM_SET_XSAVE reads exactly the struct's size.
        unsafe { fd.set_xsave(&self.xsave) }.map_err(err("setting XSAVE state"))?;
        fd.set_xcrs(&self.xcrs).map_err(err("setting XCRs"))?;
        fd.set_debug_regs(&self.debugregs)
            .map_err(err("setting debug registers"))?;
        fd.set_lapic(&self.lapic)
            .map_err(err("setting the LAPIC"))?;
        let refused = write_msrs(fd, &self.msrs).map_err(err("setting MSRs"))?;
        fd.set_vcpu_events(&self.events)
            .map_err(err("setting pending events"))?;
        Ok(refused)
    }
}

/// Reads every MSR of `index` KVM can read: a KVM_GET_MSRS stops at the first it cannot, so
/// that one is skipped and the rest are read again.
fn read_msrs(fd: &VcpuFd, index: &[u32]) -> Result<Vec<kvm_msr_entry>, kvm_ioctls::Error> {
    let mut sorted: Vec<u32> = index
        .iter()
        .copied()
        .filter(|i| !NOT_SAVED.contains(i))
        .collect();
    sorted.sort_unstable();
    sorted.dedup();
    let mut out = Vec::with_capacity(sorted.len());
    let mut rest = &sorted[..];
    while !rest.is_empty() {
        let chunk = &rest[..rest.len().min(MSR_CHUNK)];
        let entries: Vec<kvm_msr_entry> = chunk
            .iter()
            .map(|&index| kvm_msr_entry {
                index,
                ..Default::default()
            })
            .collect();
        let mut msrs =
            Msrs::from_entries(&entries).map_err(|_| kvm_ioctls::Error::new(libc::E2BIG))?;
        let read = fd.get_msrs(&mut msrs)?;
        out.extend_from_slice(&msrs.as_slice()[..read]);
        // Entry `read` could not be read (when short): skip it.
        rest = &rest[(read + usize::from(read < chunk.len())).min(rest.len())..];
    }
    Ok(out)
}

/// Writes `msrs` in order; returns the indices KVM refused (each skipped, the rest written).
fn write_msrs(fd: &VcpuFd, msrs: &[kvm_msr_entry]) -> Result<Vec<u32>, kvm_ioctls::Error> {
    let mut refused = Vec::new();
    let mut rest = msrs;
    while !rest.is_empty() {
        let chunk = &rest[..rest.len().min(MSR_CHUNK)];
        let wrapped = Msrs::from_entries(chunk).map_err(|_| kvm_ioctls::Error::new(libc::E2BIG))?;
        let written = fd.set_msrs(&wrapped)?;
        if written < chunk.len() {
            refused.push(chunk[written].index);
        }
        rest = &rest[(written + usize::from(written < chunk.len())).min(rest.len())..];
    }
    Ok(refused)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::format;

    /// A state whose every field holds something other than zeroes.
    fn busy_state() -> VcpuState {
        let mut s = VcpuState {
            cpuid: vec![kvm_cpuid_entry2 {
                function: 0x4000_0001,
                eax: 0x0102_0304,
                ..Default::default()
            }],
            msrs: (0..40)
                .map(|i| kvm_msr_entry {
                    index: 0xc000_0080 + i,
                    data: u64::MAX - u64::from(i),
                    ..Default::default()
                })
                .collect(),
            regs: kvm_regs {
                rip: 0xffff_ffff_8100_0000,
                rflags: 2,
                ..Default::default()
            },
            sregs: kvm_sregs::default(),
            xsave: kvm_xsave::default(),
            xcrs: kvm_xcrs::default(),
            debugregs: kvm_debugregs::default(),
            lapic: kvm_lapic_state::default(),
            mp_state: kvm_mp_state { mp_state: 3 },
            events: kvm_vcpu_events::default(),
            tsc_khz: Some(2_000_000),
        };
        s.sregs.cr3 = 0x1234_5000;
        for (i, w) in s.xsave.region.iter_mut().enumerate() {
            *w = (i as u32).wrapping_mul(0x9e37_79b9);
        }
        for (i, b) in s.lapic.regs.iter_mut().enumerate() {
            *b = i as libc::c_char;
        }
        s.xcrs.nr_xcrs = 1;
        s.xcrs.xcrs[0].value = 7;
        s.debugregs.dr7 = 0x400;
        s.events.exception.nr = 14;
        s
    }

    #[test]
    fn a_vcpus_state_survives_the_state_file_bit_for_bit() {
        let state = busy_state();
        let mut file = Vec::new();
        format::write(&mut file, &state).unwrap();
        let back: VcpuState = format::read(&mut &file[..]).unwrap();
        let mut again = Vec::new();
        format::write(&mut again, &back).unwrap();
        assert_eq!(file, again);
        assert_eq!(back.regs.rip, state.regs.rip);
        assert_eq!(back.sregs.cr3, 0x1234_5000);
        assert_eq!(back.xsave.region[..], state.xsave.region[..]);
        assert_eq!(back.lapic.regs[..], state.lapic.regs[..]);
        assert_eq!(back.msrs.len(), 40);
        assert_eq!(back.msrs[39].data, u64::MAX - 39);
        assert_eq!(back.tsc_khz, Some(2_000_000));
        // The binary state is small: the XSAVE area and the LAPIC page are raw bytes.
        let raw = std::mem::size_of::<kvm_xsave>() + std::mem::size_of::<kvm_lapic_state>();
        assert!(file.len() < raw + 2048, "{} bytes", file.len());
    }
}

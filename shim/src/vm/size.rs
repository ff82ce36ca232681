//! How big a sandbox's VM is.
//!
//! Read from the annotations of the container that boots the VM (for a pod, the sandbox
//! container), in this order:
//!
//! 1. `io.husk.vcpus` / `io.husk.memory` (MiB) name the VM's size outright (a pod sets them
//!    through `pod_annotations = ["io.husk.*"]`; `ctr run --annotation` works too).
//! 2. Otherwise the pod's declared resources, which kubelet sends and containerd's CRI copies
//!    into `io.kubernetes.cri.sandbox-cpu-quota` / `-cpu-period` and
//!    `io.kubernetes.cri.sandbox-memory` (bytes, the sum of the containers' limits), are
//!    added to the configured base (`vcpus`, `memory_mib` in config.toml): the base carries
//!    the guest kernel, the agent and containers without limits, as Kata's default memory
//!    does. A pod without limits gets the base alone.
//!
//! Every value is validated and a bad one is named: a non-number, zero where a count is
//! needed, more than husk-vmm can do, or more memory than the host has. More vCPUs than the
//! host has are capped at the host's count (runc does not refuse such a pod either; it only
//! cannot get more CPU time than exists).

use std::collections::HashMap;
use std::path::PathBuf;

use husk_protocol::vm_config::{MAX_MEMORY_MIB, MAX_VCPUS, MIN_MEMORY_MIB};

use crate::config::{ConfigError, HuskConfig};

/// Annotation: vCPUs of the VM.
pub const ANNOTATION_VCPUS: &str = "io.husk.vcpus";
/// Annotation: guest RAM in MiB.
pub const ANNOTATION_MEMORY: &str = "io.husk.memory";
/// CRI: the pod's CPU quota (µs per period), from its containers' limits.
pub const CRI_CPU_QUOTA: &str = "io.kubernetes.cri.sandbox-cpu-quota";
/// CRI: the CFS period the quota is relative to (µs).
pub const CRI_CPU_PERIOD: &str = "io.kubernetes.cri.sandbox-cpu-period";
/// CRI: the pod's memory limit in bytes.
pub const CRI_MEMORY: &str = "io.kubernetes.cri.sandbox-memory";

const MIB: u64 = 1024 * 1024;

/// How big a VM is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmSize {
    /// vCPUs.
    pub vcpus: u8,
    /// Guest RAM in MiB.
    pub memory_mib: u32,
}

/// What the host has, the ceiling of any VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostLimits {
    /// Online CPUs.
    pub cpus: u32,
    /// `MemTotal` in MiB.
    pub memory_mib: u64,
}

impl HostLimits {
    /// This host's online CPUs and total memory (generous fallbacks when unreadable, so a
    /// broken /proc does not refuse every pod; husk-vmm still fails on an impossible size).
    pub fn probe() -> HostLimits {
        let cpus = std::thread::available_parallelism()
            .map(|n| n.get() as u32)
            .unwrap_or(u32::from(MAX_VCPUS));
        let memory_mib = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| mem_total_kib(&m))
            .map(|kib| kib / 1024)
            .unwrap_or(u64::from(MAX_MEMORY_MIB));
        HostLimits { cpus, memory_mib }
    }
}

/// `MemTotal:` of /proc/meminfo, in KiB.
fn mem_total_kib(meminfo: &str) -> Option<u64> {
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
}

/// One annotation, parsed and range-checked; `None` when absent.
fn annotation<T: std::str::FromStr + PartialOrd + std::fmt::Display + Copy>(
    annotations: &HashMap<String, String>,
    key: &str,
    unit: &str,
    range: (T, T),
) -> Result<Option<T>, ConfigError> {
    let Some(value) = annotations.get(key) else {
        return Ok(None);
    };
    let n: T = value.trim().parse().map_err(|_| {
        bad(
            key,
            value,
            format!(
                "must be a whole number of {unit} ({}..={})",
                range.0, range.1
            ),
        )
    })?;
    if n < range.0 || n > range.1 {
        return Err(bad(
            key,
            value,
            format!("{n} {unit} is out of range ({}..={})", range.0, range.1),
        ));
    }
    Ok(Some(n))
}

fn bad(key: &str, value: &str, message: String) -> ConfigError {
    ConfigError::Annotation {
        key: key.to_string(),
        value: value.to_string(),
        message,
    }
}

/// The vCPUs the pod's CPU limit needs (quota / period, rounded up); 0 without a limit.
/// CRI writes quota 0 or -1 for "no limit".
fn cri_cpus(annotations: &HashMap<String, String>) -> Result<u64, ConfigError> {
    let quota = annotation(annotations, CRI_CPU_QUOTA, "µs", (i64::MIN, i64::MAX))?;
    let period = annotation(annotations, CRI_CPU_PERIOD, "µs", (0u64, u64::MAX))?;
    match (quota, period) {
        (Some(q), Some(p)) if q > 0 => {
            if p == 0 {
                return Err(bad(
                    CRI_CPU_PERIOD,
                    "0",
                    format!("a period of 0 µs with a quota of {q} µs"),
                ));
            }
            Ok((q as u64).div_ceil(p))
        }
        _ => Ok(0),
    }
}

/// The MiB the pod's memory limit needs, rounded up; 0 without a limit.
fn cri_memory_mib(annotations: &HashMap<String, String>) -> Result<u64, ConfigError> {
    let bytes = annotation(annotations, CRI_MEMORY, "bytes", (i64::MIN, i64::MAX))?;
    Ok(bytes
        .filter(|b| *b > 0)
        .map_or(0, |b| (b as u64).div_ceil(MIB)))
}

/// The VM size for these annotations on this host.
pub fn size(
    config: &HuskConfig,
    annotations: &HashMap<String, String>,
    host: &HostLimits,
) -> Result<VmSize, ConfigError> {
    let default_bad = |message: String| ConfigError::Value {
        path: PathBuf::from("vcpus/memory_mib"),
        message,
    };
    if config.vcpus == 0 || config.vcpus > MAX_VCPUS {
        return Err(default_bad(format!(
            "vcpus = {} is out of range (1..={MAX_VCPUS})",
            config.vcpus
        )));
    }
    if !(MIN_MEMORY_MIB..=MAX_MEMORY_MIB).contains(&config.memory_mib) {
        return Err(default_bad(format!(
            "memory_mib = {} is out of range ({MIN_MEMORY_MIB}..={MAX_MEMORY_MIB})",
            config.memory_mib
        )));
    }

    let vcpus = match annotation(annotations, ANNOTATION_VCPUS, "vCPUs", (1u8, MAX_VCPUS))? {
        Some(n) => u64::from(n),
        None => u64::from(config.vcpus) + cri_cpus(annotations)?,
    };
    let (memory, memory_from) = match annotation(
        annotations,
        ANNOTATION_MEMORY,
        "MiB",
        (MIN_MEMORY_MIB, MAX_MEMORY_MIB),
    )? {
        Some(n) => (u64::from(n), ANNOTATION_MEMORY),
        None => (
            u64::from(config.memory_mib) + cri_memory_mib(annotations)?,
            CRI_MEMORY,
        ),
    };

    let host_cpus = u64::from(host.cpus.max(1));
    let vcpus = vcpus.min(host_cpus).min(u64::from(MAX_VCPUS));
    if memory > host.memory_mib || memory > u64::from(MAX_MEMORY_MIB) {
        let value = annotations.get(memory_from).cloned().unwrap_or_default();
        return Err(bad(
            memory_from,
            &value,
            format!(
                "the VM would need {memory} MiB of guest RAM (base {} MiB + the pod's \
                 limit), more than this host has ({} MiB)",
                config.memory_mib, host.memory_mib
            ),
        ));
    }
    Ok(VmSize {
        vcpus: vcpus as u8,
        memory_mib: memory as u32,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST: HostLimits = HostLimits {
        cpus: 4,
        memory_mib: 8192,
    };

    fn ann(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn sz(vcpus: u8, memory_mib: u32) -> VmSize {
        VmSize { vcpus, memory_mib }
    }

    #[test]
    fn husk_annotations_override_the_config() {
        let c = HuskConfig::default();
        assert_eq!(size(&c, &ann(&[]), &HOST).unwrap(), sz(1, 256));
        let a = ann(&[(ANNOTATION_VCPUS, "2"), (ANNOTATION_MEMORY, " 512 ")]);
        assert_eq!(size(&c, &a, &HOST).unwrap(), sz(2, 512));
    }

    #[test]
    fn cri_limits_are_added_to_the_base() {
        let c = HuskConfig::default();
        let a = ann(&[
            (CRI_CPU_QUOTA, "150000"),
            (CRI_CPU_PERIOD, "100000"),
            (CRI_MEMORY, &(200 * MIB + 1).to_string()),
        ]);
        assert_eq!(size(&c, &a, &HOST).unwrap(), sz(3, 256 + 201));
        // No limits: CRI writes 0 (or -1) and the base is the whole VM.
        let none = ann(&[
            (CRI_CPU_QUOTA, "0"),
            (CRI_CPU_PERIOD, "100000"),
            (CRI_MEMORY, "0"),
        ]);
        assert_eq!(size(&c, &none, &HOST).unwrap(), sz(1, 256));
        let unlimited = ann(&[(CRI_CPU_QUOTA, "-1"), (CRI_CPU_PERIOD, "100000")]);
        assert_eq!(size(&c, &unlimited, &HOST).unwrap(), sz(1, 256));
        // An explicit husk annotation wins over the pod's limits.
        let mut both = a.clone();
        both.insert(ANNOTATION_MEMORY.into(), "1024".into());
        assert_eq!(size(&c, &both, &HOST).unwrap().memory_mib, 1024);
    }

    #[test]
    fn vcpus_are_capped_at_the_host() {
        let c = HuskConfig::default();
        let a = ann(&[(CRI_CPU_QUOTA, "1600000"), (CRI_CPU_PERIOD, "100000")]);
        assert_eq!(size(&c, &a, &HOST).unwrap().vcpus, 4);
        assert_eq!(
            size(&c, &ann(&[(ANNOTATION_VCPUS, "8")]), &HOST)
                .unwrap()
                .vcpus,
            4
        );
    }

    #[test]
    fn bad_annotations_are_named() {
        let c = HuskConfig::default();
        let cases = [
            (ANNOTATION_VCPUS, "two", "whole number of vCPUs (1..=32)"),
            (ANNOTATION_VCPUS, "0", "0 vCPUs is out of range"),
            (ANNOTATION_VCPUS, "64", "out of range"),
            (ANNOTATION_MEMORY, "1G", "whole number of MiB"),
            (ANNOTATION_MEMORY, "16", "16 MiB is out of range (64..="),
            (
                ANNOTATION_MEMORY,
                "65536",
                "more than this host has (8192 MiB)",
            ),
            (CRI_MEMORY, "lots", "whole number of bytes"),
            (CRI_MEMORY, "17179869184", "more than this host has"),
            (CRI_CPU_QUOTA, "1.5", "whole number of µs"),
        ];
        for (key, value, words) in cases {
            let e = size(&c, &ann(&[(key, value)]), &HOST)
                .unwrap_err()
                .to_string();
            assert!(e.contains(key) && e.contains(words), "{key}={value}: {e}");
        }
        let zero_period = ann(&[(CRI_CPU_QUOTA, "50000"), (CRI_CPU_PERIOD, "0")]);
        let e = size(&c, &zero_period, &HOST).unwrap_err().to_string();
        assert!(e.contains(CRI_CPU_PERIOD), "{e}");
        let bad = HuskConfig {
            memory_mib: 8,
            ..Default::default()
        };
        assert!(size(&bad, &ann(&[]), &HOST).is_err());
    }

    #[test]
    fn meminfo_is_read_in_kib() {
        let m = "MemFree:  10 kB\nMemTotal:       16303412 kB\n";
        assert_eq!(mem_total_kib(m), Some(16303412));
        assert_eq!(mem_total_kib("nothing"), None);
        assert!(HostLimits::probe().memory_mib > 0);
    }
}

//! vCPU pinning (`pin_vcpus` in the husk config): each vCPU thread of a pod's husk-vmm runs on
//! one host CPU, chosen from the CPUs the shim itself may run on (its affinity mask, which
//! containerd's cpuset and the node's isolation settings have already narrowed). Pods start at
//! different CPUs, derived from a hash of the sandbox id, so pinned pods spread over the host
//! rather than piling onto its first CPU.
//!
//! Why pin at all: a vCPU thread that keeps its CPU keeps its caches and its place in the
//! host's (or, nested, the outer hypervisor's) per-CPU state. On the nested test host,
//! guest boots whose vCPU threads may migrate between the test host's CPUs died in early
//! kernel setup about one time in twenty; pinned, about one in a hundred or none (issue 3).

/// The host CPUs this process may run on, in ascending order.
pub fn allowed_cpus() -> nix::Result<Vec<u32>> {
    let set = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0))?;
    Ok((0..nix::sched::CpuSet::count())
        .filter(|&cpu| set.is_set(cpu).unwrap_or(false))
        .filter_map(|cpu| u32::try_from(cpu).ok())
        .collect())
}

/// The host CPU for each of `vcpus` vCPUs of `sandbox`: consecutive CPUs of `allowed`
/// (wrapping), starting at one chosen by the sandbox id. Empty when `allowed` is.
pub fn choose(allowed: &[u32], vcpus: u8, sandbox: &str) -> Vec<u32> {
    if allowed.is_empty() {
        return Vec::new();
    }
    let start = (fnv1a(sandbox.as_bytes()) % allowed.len() as u64) as usize;
    (0..usize::from(vcpus))
        .map(|i| allowed[(start + i) % allowed.len()])
        .collect()
}

/// FNV-1a: a stable hash (std's `DefaultHasher` may change between Rust releases).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_vcpu_gets_an_allowed_cpu_and_they_differ_while_cpus_last() {
        let allowed = [2, 3, 5, 7];
        let cpus = choose(&allowed, 3, "sandbox-a");
        assert_eq!(cpus.len(), 3);
        assert!(cpus.iter().all(|c| allowed.contains(c)));
        let mut unique = cpus.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), 3);
        // More vCPUs than CPUs: they wrap around.
        assert_eq!(choose(&[4], 3, "x"), [4, 4, 4]);
        assert!(choose(&[], 2, "x").is_empty());
    }

    #[test]
    fn the_choice_is_stable_and_pods_spread() {
        let allowed: Vec<u32> = (0..4).collect();
        assert_eq!(choose(&allowed, 1, "pod-1"), choose(&allowed, 1, "pod-1"));
        let firsts: std::collections::HashSet<u32> = (0..32)
            .map(|i| choose(&allowed, 1, &format!("pod-{i}"))[0])
            .collect();
        assert_eq!(firsts.len(), 4, "32 pods must use every CPU: {firsts:?}");
    }

    #[test]
    fn this_process_may_run_somewhere() {
        let cpus = allowed_cpus().unwrap();
        assert!(!cpus.is_empty());
        assert!(cpus.windows(2).all(|w| w[0] < w[1]));
    }
}

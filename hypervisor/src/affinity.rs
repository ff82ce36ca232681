//! Pinning vCPU threads to host CPUs (`VmConfig::vcpu_affinity`): checked against the CPUs
//! this process may use before any thread starts, so a bad list is a setup error naming the
//! CPU; then the main thread restricts itself to the list's CPUs, so every thread it starts
//! (device workers, control) runs there too, and each vCPU thread pins itself to its own.
//!
//! Keeping the device workers on the vCPUs' CPUs matters for interrupts: a worker that
//! completes a request signals its irqfd, and KVM must kick a vCPU that is in guest mode on
//! another CPU with a reschedule IPI to inject it. On the vCPU's own CPU the vCPU is not in
//! guest mode while the worker runs, so the interrupt goes in on its next entry without an
//! IPI. The pod's VM also stays within its CPUs, as Firecracker's jailer cpuset keeps it.

use std::mem::{size_of, zeroed};

/// Errors checking an affinity list.
#[derive(Debug, thiserror::Error)]
pub enum AffinityError {
    /// sched_getaffinity failed.
    #[error("reading this process's CPU affinity: {0}")]
    Read(std::io::Error),
    /// The list names a CPU the process may not run on.
    #[error("host CPU {cpu} is not one this process may run on (allowed: {allowed:?})")]
    NotAllowed {
        /// The CPU asked for.
        cpu: u32,
        /// The CPUs allowed.
        allowed: Vec<u32>,
    },
}

/// The host CPU of vCPU `id` under `affinity` (`None`: not pinned).
pub fn cpu_of(affinity: &[u32], id: usize) -> Option<u32> {
    (!affinity.is_empty()).then(|| affinity[id % affinity.len()])
}

/// The CPUs the calling thread may run on, ascending.
pub fn allowed() -> std::io::Result<Vec<u32>> {
    // SAFETY: cpu_set_t is plain data; all zeroes is the empty set.
    let mut set: libc::cpu_set_t = unsafe { zeroed() };
    // SAFETY: `set` is a valid, writable cpu_set_t and the size passed is its size.
    let rc = unsafe { libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut set) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let cpus = (0..libc::CPU_SETSIZE as usize)
        // SAFETY: `cpu` is below CPU_SETSIZE, the number of CPUs a cpu_set_t holds.
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .map(|cpu| cpu as u32)
        .collect();
    Ok(cpus)
}

/// Checks that every CPU of `affinity` is one this process may run on.
pub fn check(affinity: &[u32]) -> Result<(), AffinityError> {
    if affinity.is_empty() {
        return Ok(());
    }
    let allowed = allowed().map_err(AffinityError::Read)?;
    check_against(affinity, &allowed)
}

fn check_against(affinity: &[u32], allowed: &[u32]) -> Result<(), AffinityError> {
    match affinity.iter().find(|c| !allowed.contains(c)) {
        Some(&cpu) => Err(AffinityError::NotAllowed {
            cpu,
            allowed: allowed.to_vec(),
        }),
        None => Ok(()),
    }
}

/// Restricts the calling thread to host CPU `cpu`.
pub fn pin_current_thread(cpu: u32) -> std::io::Result<()> {
    restrict_current_thread(&[cpu])
}

/// Restricts the calling thread (and every thread it starts afterwards) to `cpus`.
pub fn restrict_current_thread(cpus: &[u32]) -> std::io::Result<()> {
    // SAFETY: cpu_set_t is plain data; all zeroes is the empty set.
    let mut set: libc::cpu_set_t = unsafe { zeroed() };
    for &cpu in cpus {
        if cpu as usize >= libc::CPU_SETSIZE as usize {
            return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
        }
        // SAFETY: `cpu` was checked to be below CPU_SETSIZE just above.
        unsafe { libc::CPU_SET(cpu as usize, &mut set) };
    }
    // SAFETY: pid 0 is the calling thread; `set` is a valid cpu_set_t of the size passed.
    let rc = unsafe { libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vcpus_wrap_around_the_list() {
        assert_eq!(cpu_of(&[], 0), None);
        assert_eq!(cpu_of(&[3, 5], 0), Some(3));
        assert_eq!(cpu_of(&[3, 5], 3), Some(5));
    }

    #[test]
    fn a_cpu_outside_the_allowed_set_is_named() {
        check_against(&[0, 1], &[0, 1, 2]).unwrap();
        let e = check_against(&[1, 7], &[0, 1]).unwrap_err().to_string();
        assert!(e.contains("host CPU 7 is not one"), "{e}");
        assert!(check(&[]).is_ok());
        assert!(check(&[u32::MAX]).is_err());
    }

    #[test]
    fn a_thread_pins_itself_to_an_allowed_cpu() {
        let first = allowed().unwrap()[0];
        std::thread::spawn(move || {
            pin_current_thread(first).unwrap();
            assert_eq!(allowed().unwrap(), [first]);
        })
        .join()
        .unwrap();
        assert!(pin_current_thread(u32::MAX).is_err());
    }

    #[test]
    fn threads_started_by_a_restricted_thread_inherit_its_cpus() {
        let cpus = allowed().unwrap();
        let some: Vec<u32> = cpus.iter().copied().take(2).collect();
        std::thread::spawn(move || {
            restrict_current_thread(&some).unwrap();
            let child = std::thread::spawn(allowed).join().unwrap().unwrap();
            assert_eq!(child, some);
        })
        .join()
        .unwrap();
    }
}

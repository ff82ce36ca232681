//! husk-vmm's capabilities once the VM is set up.
//!
//! Setup needs root: `/dev/kvm`, the tap in the pod's network namespace (`setns` needs
//! `CAP_SYS_ADMIN`, the tap `CAP_NET_ADMIN`), the state directory. After it, what the guest can
//! reach runs with far less. [`drop_after_setup`] runs on the main thread once setup is done
//! (after it entered the jail, `crate::jail`) and before any thread that serves the guest
//! starts (the device workers, the control socket, the vCPUs), so every one of them inherits
//! the result, since capabilities are per thread and inherited at `clone`:
//!
//! - `no_new_privs`, an empty ambient and inheritable set;
//! - a bounding and permitted set of exactly [`FILE_SERVER`], and an *empty* effective set;
//! - the virtio-fs worker alone raises [`FILE_SERVER`] into its effective set
//!   ([`raise_file_server`]): it serves the guest's users' files as those users.
//!
//! So `CAP_SYS_ADMIN`, `CAP_NET_ADMIN`, `CAP_SYS_PTRACE`, `CAP_SYS_MODULE`, `CAP_MKNOD`, ... are
//! gone from every thread for good, and no thread but the file server acts with any capability
//! at all. A thread that a bug lets run code could raise its permitted set into its effective
//! one with `capset`, but only the file server's seccomp filter (`crate::seccomp`) allows
//! `capset`: it drops and raises `CAP_FSETID` around writes.

use std::io;

/// `CAP_CHOWN`.
pub const CAP_CHOWN: u32 = 0;
/// `CAP_DAC_OVERRIDE`.
pub const CAP_DAC_OVERRIDE: u32 = 1;
/// `CAP_FOWNER`.
pub const CAP_FOWNER: u32 = 3;
/// `CAP_FSETID`.
pub const CAP_FSETID: u32 = 4;
/// `CAP_SETGID`.
pub const CAP_SETGID: u32 = 6;
/// `CAP_SETUID`.
pub const CAP_SETUID: u32 = 7;
/// `CAP_SETPCAP`.
const CAP_SETPCAP: u32 = 8;

/// What the virtio-fs worker needs to serve the guest's files as the guest's users, and why
/// each one (fuse-backend-rs's passthrough switches the thread's effective uid and gid to the
/// requesting guest user around each operation that creates something):
pub const FILE_SERVER: &[(u32, &str)] = &[
    (
        CAP_CHOWN,
        "SETATTR with a new owner or group, as the guest's root asks (chown in the guest)",
    ),
    (
        CAP_DAC_OVERRIDE,
        "opening and searching files whatever their mode: the guest kernel has already \
         checked its users' permissions, and the server must not refuse what the guest allowed",
    ),
    (
        CAP_FOWNER,
        "chmod, utimes and O_NOATIME on files the thread's current uid does not own",
    ),
    (
        CAP_FSETID,
        "keeping set-user-ID and set-group-ID bits when the guest's root writes or chmods",
    ),
    (
        CAP_SETGID,
        "switching the thread's effective gid to the requesting guest user's",
    ),
    (
        CAP_SETUID,
        "switching the thread's effective uid to the requesting guest user's",
    ),
];

/// [`FILE_SERVER`] as a capability mask (bit N = capability N).
pub fn file_server_mask() -> u64 {
    FILE_SERVER.iter().fold(0, |m, (cap, _)| m | 1 << cap)
}

/// `_LINUX_CAPABILITY_VERSION_3`: two 32-bit words per set.
const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// The calling thread's (effective, permitted, inheritable) sets.
pub fn thread_sets() -> io::Result<(u64, u64, u64)> {
    let mut header = CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: capget writes one header and two data words, which `header` and `data` are.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_capget,
            &mut header as *mut CapHeader,
            data.as_mut_ptr(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    let join = |f: fn(&CapData) -> u32| u64::from(f(&data[0])) | u64::from(f(&data[1])) << 32;
    Ok((
        join(|d| d.effective),
        join(|d| d.permitted),
        join(|d| d.inheritable),
    ))
}

/// Sets the calling thread's sets (pid 0 in capset is the calling thread, not the process).
fn set_thread_sets(effective: u64, permitted: u64, inheritable: u64) -> io::Result<()> {
    let mut header = CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    let word = |m: u64, i: usize| (m >> (32 * i)) as u32;
    let data = [0, 1].map(|i| CapData {
        effective: word(effective, i),
        permitted: word(permitted, i),
        inheritable: word(inheritable, i),
    });
    // SAFETY: capset reads one header and two data words, which `header` and `data` are.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_capset,
            &mut header as *mut CapHeader,
            data.as_ptr(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn prctl(option: libc::c_int, arg: libc::c_ulong) -> io::Result<()> {
    // SAFETY: prctl with integer arguments only; no memory is passed.
    let rc = unsafe { libc::prctl(option, arg, 0 as libc::c_ulong, 0 as libc::c_ulong, 0) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The highest capability this kernel knows: the last one `PR_CAPBSET_READ` accepts (it fails
/// with `EINVAL` past the end). Asked of the kernel rather than read from
/// `/proc/sys/kernel/cap_last_cap`, which the jail does not hold.
fn last_cap() -> u32 {
    let known = |cap: u32| {
        // SAFETY: PR_CAPBSET_READ only reads the calling thread's bounding set.
        unsafe { libc::prctl(libc::PR_CAPBSET_READ, libc::c_ulong::from(cap), 0, 0, 0) >= 0 }
    };
    (0..=63).take_while(|&cap| known(cap)).last().unwrap_or(0)
}

/// Drops, for the calling thread and every thread it starts afterwards, everything but
/// [`FILE_SERVER`] (bounding and permitted) and every effective capability; sets
/// `no_new_privs`. Call on the main thread when setup is done, before other threads start.
pub fn drop_after_setup() -> io::Result<()> {
    let step =
        |what: &'static str| move |e: io::Error| io::Error::new(e.kind(), format!("{what}: {e}"));
    prctl(libc::PR_SET_NO_NEW_PRIVS, 1).map_err(step("setting no_new_privs"))?;
    prctl(
        libc::PR_CAP_AMBIENT,
        libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
    )
    .map_err(step("clearing the ambient capabilities"))?;
    let keep = file_server_mask();
    let (effective, _, _) = thread_sets().map_err(step("reading the capabilities"))?;
    // Dropping from the bounding set needs CAP_SETPCAP; without it (an unprivileged husk-vmm)
    // nothing can be gained anyway: no_new_privs is set and execve is never called.
    if effective & (1 << CAP_SETPCAP) != 0 {
        for cap in (0..=last_cap()).filter(|c| keep & (1 << c) == 0) {
            prctl(libc::PR_CAPBSET_DROP, libc::c_ulong::from(cap))
                .map_err(step("dropping from the bounding set"))?;
        }
    }
    let (_, permitted, _) = thread_sets().map_err(step("reading the capabilities"))?;
    set_thread_sets(0, permitted & keep, 0).map_err(step("setting the capabilities"))
}

/// Makes [`FILE_SERVER`] (as far as the thread's permitted set has it) the calling thread's
/// effective and permitted sets: the virtio-fs worker's capabilities, and no `CAP_MKNOD`, so
/// guest MKNOD requests for character and block devices fail with `EPERM`.
pub fn raise_file_server() -> io::Result<()> {
    let (_, permitted, _) = thread_sets()?;
    let sets = permitted & file_server_mask();
    set_thread_sets(sets, sets, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_capability_is_the_kernels() {
        let want: u32 = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert_eq!(last_cap(), want);
    }

    #[test]
    fn the_file_server_set_is_six_capabilities_without_mknod_or_sys_admin() {
        let m = file_server_mask();
        assert_eq!(m, 0b1101_1011, "{m:#x}");
        assert_eq!(m & (1 << 27), 0, "no CAP_MKNOD");
        assert_eq!(m & (1 << 21), 0, "no CAP_SYS_ADMIN");
    }

    /// In a thread of its own (capabilities are per thread), as a process would after setup.
    #[test]
    fn after_setup_a_thread_keeps_only_the_file_server_set_and_raises_it_alone() {
        std::thread::spawn(|| {
            let root = thread_sets().unwrap().0 & (1 << CAP_SETPCAP) != 0;
            drop_after_setup().unwrap();
            let (eff, prm, inh) = thread_sets().unwrap();
            assert_eq!((eff, inh), (0, 0));
            assert_eq!(prm & !file_server_mask(), 0, "{prm:#x}");
            let nnp = std::fs::read_to_string("/proc/thread-self/status").unwrap();
            assert!(nnp.contains("NoNewPrivs:\t1"), "{nnp}");
            std::thread::spawn(|| {
                raise_file_server().unwrap();
                let (eff, prm, _) = thread_sets().unwrap();
                assert_eq!(eff, prm);
                assert_eq!(eff & !file_server_mask(), 0);
            })
            .join()
            .unwrap();
            if root {
                assert_eq!(prm, file_server_mask());
                let bnd = std::fs::read_to_string("/proc/thread-self/status").unwrap();
                let line = bnd.lines().find(|l| l.starts_with("CapBnd:")).unwrap();
                let mask = u64::from_str_radix(line[7..].trim(), 16).unwrap();
                assert_eq!(mask, file_server_mask(), "{line}");
            }
        })
        .join()
        .unwrap();
    }
}

//! A restored guest becomes its pod's own: the host's entropy into the kernel's pool (credited,
//! then a CRNG reseed, so no byte of `/dev/urandom` or `getrandom` after this call derives
//! only from the template's state), the wall clock, and a boot id made after both.
//!
//! A template guest (`husk.template` on the kernel command line) never reads its boot id
//! before [`Identity::restored`]: the kernel makes it from the CRNG on the first read.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::error::{AgentError, Result};

/// Fewest and most entropy bytes a restore takes.
pub const ENTROPY_BYTES: std::ops::RangeInclusive<usize> = 32..=512;

/// `RNDADDENTROPY`: `_IOW('R', 0x03, int[2])`.
const RNDADDENTROPY: libc::c_ulong = 0x4008_5203;
/// `RNDRESEEDCRNG`: `_IO('R', 0x07)`.
const RNDRESEEDCRNG: libc::c_ulong = 0x5207;

/// Whether kernel command line `cmdline` makes this a template's guest (the shim's
/// `TEMPLATE_CMDLINE`).
pub fn template_on(cmdline: &str) -> bool {
    cmdline.split_whitespace().any(|a| a == "husk.template")
}

/// Whether this guest is a template's and whether it was restored.
#[derive(Debug)]
pub struct Identity {
    template: bool,
    restored: AtomicBool,
}

impl Identity {
    /// `cmdline` is the kernel command line.
    pub fn from_cmdline(cmdline: &str) -> Self {
        Identity {
            template: template_on(cmdline),
            restored: AtomicBool::new(false),
        }
    }

    /// The boot id Check reports: none in a template guest that was not restored yet.
    pub fn boot_id(&self) -> String {
        if self.template && !self.restored.load(Ordering::SeqCst) {
            return String::new();
        }
        read_boot_id()
    }

    /// Takes the pod's entropy and clock, once; returns the boot id.
    pub fn restored(&self, entropy: &[u8], realtime_ns: i64) -> Result<String> {
        if !ENTROPY_BYTES.contains(&entropy.len()) {
            return Err(AgentError::InvalidArgument(format!(
                "Restored: {} bytes of entropy (32 to 512)",
                entropy.len()
            )));
        }
        if realtime_ns <= 0 {
            return Err(AgentError::InvalidArgument(format!(
                "Restored: wall clock {realtime_ns} ns is not after the epoch"
            )));
        }
        if self.restored.swap(true, Ordering::SeqCst) {
            return Err(AgentError::Precondition(
                "Restored was already called in this VM".into(),
            ));
        }
        add_entropy(entropy)?;
        set_clock(realtime_ns)?;
        Ok(read_boot_id())
    }
}

fn read_boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// `struct rand_pool_info` with room for 512 bytes.
#[repr(C)]
struct PoolInfo {
    entropy_count: libc::c_int,
    buf_size: libc::c_int,
    buf: [u8; 512],
}

fn add_entropy(bytes: &[u8]) -> Result<()> {
    let random = File::options()
        .write(true)
        .open("/dev/urandom")
        .map_err(AgentError::io("opening /dev/urandom"))?;
    let mut info = PoolInfo {
        entropy_count: (bytes.len() * 8) as libc::c_int,
        buf_size: bytes.len() as libc::c_int,
        buf: [0; 512],
    };
    info.buf[..bytes.len()].copy_from_slice(bytes);
    // SAFETY: RNDADDENTROPY reads a rand_pool_info whose buf_size bytes follow its header;
    // `info` holds that many and lives across the call.
    if unsafe { libc::ioctl(random.as_raw_fd(), RNDADDENTROPY, &info) } != 0 {
        return Err(AgentError::io("adding the host's entropy (RNDADDENTROPY)")(
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: RNDRESEEDCRNG takes no argument.
    if unsafe { libc::ioctl(random.as_raw_fd(), RNDRESEEDCRNG) } != 0 {
        return Err(AgentError::io("reseeding the CRNG (RNDRESEEDCRNG)")(
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

fn set_clock(ns: i64) -> Result<()> {
    let ts = libc::timespec {
        tv_sec: ns / 1_000_000_000,
        tv_nsec: ns % 1_000_000_000,
    };
    // SAFETY: clock_settime reads the timespec owned by this frame.
    if unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &ts) } != 0 {
        return Err(AgentError::io("setting the wall clock")(
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_template_guest_hides_its_boot_id_until_restored() {
        let id = Identity::from_cmdline("console=ttyS0 husk.template quiet");
        assert_eq!(id.boot_id(), "");
        let plain = Identity::from_cmdline("console=ttyS0 husk.templates=x");
        assert!(!plain.template, "only the exact word counts");
    }

    #[test]
    fn bad_requests_are_refused_before_anything_changes() {
        let id = Identity::from_cmdline("husk.template");
        let e = id.restored(&[0; 8], 1).unwrap_err().to_string();
        assert!(e.contains("8 bytes of entropy"), "{e}");
        let e = id.restored(&[0; 32], 0).unwrap_err().to_string();
        assert!(e.contains("not after the epoch"), "{e}");
        assert!(!id.restored.load(Ordering::SeqCst), "still not restored");
    }

    #[test]
    fn the_ioctl_numbers_are_the_kernels() {
        // _IOW('R', 3, int[2]): dir 1 (write) << 30 | size 8 << 16 | 'R' << 8 | 3.
        assert_eq!(RNDADDENTROPY, (1 << 30) | (8 << 16) | (0x52 << 8) | 3);
        assert_eq!(RNDRESEEDCRNG, (0x52 << 8) | 7);
    }
}

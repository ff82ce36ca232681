//! The host side of a virtio-net device: an existing tap device, opened by name.
//!
//! `TUNSETIFF` with `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR` attaches to the tap, then
//! `TUNSETVNETHDRSZ 12` makes the tap's vnet header the guest's `virtio_net_hdr_v1` (x86 is
//! little-endian, which is what a tap uses for the header by default), and the descriptor is
//! non-blocking for the worker's epoll loop.
//!
//! `TUNSETIFF` on a name that does not exist *creates* a tap, which would give the guest a
//! NIC wired to nothing. So the name is looked up first, and a missing tap is an error that
//! names it. The lookup and the attach use the network namespace of the calling thread, and a
//! pod's tap lives in the pod's namespace (CNI's netns): [`Tap::open`] does both from a
//! short-lived thread that joined that namespace with `setns(CLONE_NEWNET)`, so the VMM's other
//! threads stay where they are. The descriptor keeps working after the thread is gone: a tap
//! belongs to the namespace it was attached in.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use super::header::HDR_LEN;
use super::{NetError, PollableTap, TapIo};

/// An open tap device.
#[derive(Debug)]
pub struct Tap {
    fd: OwnedFd,
    name: String,
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Why [`attach`] failed, in words for the error message.
fn explain(step: &str, e: &io::Error) -> String {
    match (step, e.raw_os_error()) {
        ("TUNSETIFF", Some(libc::EINVAL)) => {
            "exists but is not a single-queue tap device (TUNSETIFF: invalid argument)".into()
        }
        ("TUNSETIFF", Some(libc::EBUSY)) => "is already in use by another process".into(),
        (_, Some(libc::EPERM)) => format!("{step}: permission denied (needs CAP_NET_ADMIN)"),
        _ => format!("{step}: {e}"),
    }
}

/// Attaches to tap `name` in the calling thread's network namespace.
fn attach(name: &str) -> Result<OwnedFd, String> {
    let c_name = CString::new(name).map_err(|_| "the name contains a NUL byte".to_string())?;
    if name.len() >= libc::IFNAMSIZ {
        return Err(format!(
            "the name is longer than {} bytes",
            libc::IFNAMSIZ - 1
        ));
    }
    // SAFETY: `c_name` is a valid NUL-terminated string; if_nametoindex only reads it.
    if unsafe { libc::if_nametoindex(c_name.as_ptr()) } == 0 {
        return Err("no such network interface (create the tap first)".into());
    }
    let path = CString::new("/dev/net/tun").map_err(|e| e.to_string())?;
    // SAFETY: a valid path; open returns a new descriptor or -1.
    let raw = unsafe {
        libc::open(
            path.as_ptr(),
            libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
        )
    };
    if raw < 0 {
        return Err(explain("opening /dev/net/tun", &io::Error::last_os_error()));
    }
    // SAFETY: `raw` was just returned by open and nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: ifreq is plain data (an array and a union of plain data); zero is valid.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(c_name.as_bytes()) {
        *dst = *src as libc::c_char;
    }
    req.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as i16;
    // SAFETY: TUNSETIFF reads and writes an ifreq, and `req` is one that lives across the call.
    check(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut req) })
        .map_err(|e| explain("TUNSETIFF", &e))?;
    let size = HDR_LEN as libc::c_int;
    // SAFETY: TUNSETVNETHDRSZ reads one int through the pointer, which points at `size`.
    check(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETVNETHDRSZ, &size) })
        .map_err(|e| explain("TUNSETVNETHDRSZ", &e))?;
    // No guest-side offloads until a driver accepts some (activation sets them).
    // SAFETY: TUNSETOFFLOAD takes its argument by value.
    check(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETOFFLOAD, 0 as libc::c_ulong) })
        .map_err(|e| explain("TUNSETOFFLOAD", &e))?;
    Ok(fd)
}

/// Moves the calling thread into the network namespace at `path`.
fn join_netns(path: &Path) -> Result<(), String> {
    let ns = File::open(path).map_err(|e| format!("opening the network namespace: {e}"))?;
    // SAFETY: setns on a descriptor we own; it only changes this thread's namespace.
    check(unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) }).map_err(|e| {
        if e.raw_os_error() == Some(libc::EINVAL) {
            "the path is not a network namespace".to_string()
        } else {
            format!("joining the network namespace: {e}")
        }
    })
}

impl Tap {
    /// Opens tap `name`, in the network namespace at `netns` if given.
    pub fn open(name: &str, netns: Option<&Path>) -> Result<Tap, NetError> {
        let err = |what: String| NetError::Tap {
            tap: name.to_string(),
            netns: netns.map(|p| p.display().to_string()),
            what,
        };
        let fd = match netns {
            None => attach(name),
            Some(path) => {
                let (owned_name, owned_path): (String, PathBuf) = (name.into(), path.into());
                // Network namespaces are per thread: this one joins, attaches and ends.
                std::thread::Builder::new()
                    .name("husk-net-open".into())
                    .spawn(move || {
                        join_netns(&owned_path)?;
                        attach(&owned_name)
                    })
                    .map_err(|e| err(format!("starting the namespace thread: {e}")))?
                    .join()
                    .map_err(|_| err("the namespace thread panicked".into()))?
            }
        }
        .map_err(err)?;
        Ok(Tap {
            fd,
            name: name.to_string(),
        })
    }

    /// The tap's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl TapIo for Tap {
    fn read_frame(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: reading at most `buf.len()` bytes into `buf`, which is valid for writes.
        let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        usize::try_from(n).map_err(|_| io::Error::last_os_error())
    }

    fn write_frame(&self, frame: &[u8]) -> io::Result<usize> {
        // SAFETY: writing `frame.len()` bytes from `frame`, which is valid for reads.
        let n = unsafe { libc::write(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len()) };
        usize::try_from(n).map_err(|_| io::Error::last_os_error())
    }

    fn set_offload(&self, flags: u32) -> io::Result<()> {
        // SAFETY: TUNSETOFFLOAD takes its argument by value.
        check(unsafe {
            libc::ioctl(
                self.fd.as_raw_fd(),
                libc::TUNSETOFFLOAD,
                libc::c_ulong::from(flags),
            )
        })
    }
}

impl PollableTap for Tap {
    fn poll_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_tap_is_named_in_the_error() {
        let e = Tap::open("husk-nosuch0", None).unwrap_err().to_string();
        assert!(e.contains("\"husk-nosuch0\""), "{e}");
        assert!(e.contains("no such network interface"), "{e}");
    }

    #[test]
    fn a_missing_namespace_is_named_in_the_error() {
        let e = Tap::open("tap0", Some(Path::new("/nonexistent/netns/x")))
            .unwrap_err()
            .to_string();
        assert!(e.contains("\"tap0\""), "{e}");
        assert!(e.contains("/nonexistent/netns/x"), "{e}");
        let e = Tap::open("tap0", Some(Path::new("/proc/self/status")))
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a network namespace"), "{e}");
    }

    #[test]
    fn an_interface_that_is_not_a_tap_is_refused() {
        // `lo` exists everywhere and is not a tap. Without CAP_NET_ADMIN (or without
        // /dev/net/tun) the attach fails too, with a message that says so; either way nothing
        // is created.
        let e = Tap::open("lo", None).unwrap_err().to_string();
        assert!(
            e.contains("not a single-queue tap")
                || e.contains("permission denied")
                || e.contains("/dev/net/tun"),
            "{e}"
        );
    }
}

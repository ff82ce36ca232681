//! Persistent taps for husk-vmm: created with the flags its virtio-net device attaches with
//! (`IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`), made persistent, and the descriptor closed, so the
//! VMM opens the same device by name later. Used for pods' NICs (`network`) and for template
//! builders' (`vm::template::nics`).

use std::os::fd::AsRawFd;

use husk_rtnl::route::link::{LinkAttribute, LinkMessage};
use husk_rtnl::route::RouteNetlinkMessage;
use husk_rtnl::Netlink;

/// The tap of the pod's `n`th NIC (≤ 15 bytes).
pub fn tap_name(n: usize) -> String {
    format!("husktap{n}")
}

/// Creates persistent tap `name` in the calling thread's network namespace.
pub fn create(name: &str) -> std::io::Result<()> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("tap name {name:?}"),
        ));
    }
    let tun = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")?;
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    req.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as i16;
    // SAFETY: TUNSETIFF reads and writes an ifreq; `req` lives across the call.
    if unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETIFF, &mut req) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: TUNSETPERSIST takes its argument by value.
    if unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETPERSIST, 1 as libc::c_ulong) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Deletes link `name` (RTM_DELLINK by name); a link that is already gone is fine.
pub fn delete(nl: &mut dyn Netlink, name: &str) -> std::io::Result<()> {
    let mut m = LinkMessage::default();
    m.attributes.push(LinkAttribute::IfName(name.to_string()));
    match nl.request(RouteNetlinkMessage::DelLink(m), 0) {
        Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(()),
        other => other,
    }
}

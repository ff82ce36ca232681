//! Guest networking and SetupSandbox: the loopback interface (brought up at boot), the pod's
//! hostname, guest mounts (virtio-fs shares), the pod's NICs and routes ([`iface`]: matched by
//! MAC, renamed, MTU, addresses, up, then routes, over rtnetlink) and resolv.conf. The whole
//! network request is validated before anything changes (INVALID_ARGUMENT naming the bad
//! value; NOT_FOUND for a MAC no NIC has).

pub mod iface;

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use husk_protocol::agent::api;

use crate::error::{AgentError, Result};

/// Brings an interface up (SIOCGIFFLAGS / SIOCSIFFLAGS).
pub fn link_up(name: &str) -> Result<()> {
    let what = || format!("bringing {name} up");
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(AgentError::InvalidArgument(format!(
            "interface name {name:?}"
        )));
    }
    // SAFETY: socket(2) with constant arguments; the result is checked before use.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(AgentError::io(what())(std::io::Error::last_os_error()));
    }
    // SAFETY: `fd` is a new descriptor that nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS reads the name from and writes the flags into `req`, a live local.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } < 0 {
        return Err(AgentError::io(what())(std::io::Error::last_os_error()));
    }
    // SAFETY: the kernel just filled ifru_flags (SIOCGIFFLAGS), so reading that union field is
    // reading initialised data.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    req.ifr_ifru.ifru_flags = flags | libc::IFF_UP as libc::c_short;
    // SAFETY: SIOCSIFFLAGS reads name and flags from `req`, a live local.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) } < 0 {
        return Err(AgentError::io(what())(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// SetupSandbox. In host mode nothing of the host may change: only an empty request passes.
pub fn setup_sandbox(req: &api::SetupSandboxRequest, guest: bool) -> Result<()> {
    let (ifaces, routes) = iface::plan(req)?;
    let empty = req.hostname.is_empty()
        && req.mounts.is_empty()
        && req.resolv_conf.is_empty()
        && ifaces.is_empty()
        && routes.is_empty();
    if !guest {
        return if empty {
            Ok(())
        } else {
            Err(AgentError::Unimplemented(
                "SetupSandbox in host mode (it would change the host)".into(),
            ))
        };
    }
    if !req.hostname.is_empty() {
        nix::unistd::sethostname(&req.hostname)
            .map_err(|e| AgentError::io(format!("sethostname {:?}", req.hostname))(e.into()))?;
    }
    for m in &req.mounts {
        guest_mount(m)?;
    }
    if !ifaces.is_empty() || !routes.is_empty() {
        let mut nl =
            husk_rtnl::Rtnl::open().map_err(AgentError::io("opening an rtnetlink socket"))?;
        iface::apply(&mut nl, &ifaces, &routes)?;
    }
    if !req.resolv_conf.is_empty() {
        std::fs::write("/etc/resolv.conf", &req.resolv_conf)
            .map_err(AgentError::io("writing /etc/resolv.conf"))?;
    }
    Ok(())
}

/// mount(8)-style options split into flags and data.
pub fn parse_options(options: &[String]) -> (nix::mount::MsFlags, String) {
    use nix::mount::MsFlags as F;
    let mut flags = F::empty();
    let mut data = Vec::new();
    for o in options {
        match o.as_str() {
            "ro" => flags |= F::MS_RDONLY,
            "rw" => flags &= !F::MS_RDONLY,
            "nosuid" => flags |= F::MS_NOSUID,
            "nodev" => flags |= F::MS_NODEV,
            "noexec" => flags |= F::MS_NOEXEC,
            "relatime" => flags |= F::MS_RELATIME,
            "noatime" => flags |= F::MS_NOATIME,
            other => data.push(other.to_string()),
        }
    }
    (flags, data.join(","))
}

fn guest_mount(m: &api::GuestMount) -> Result<()> {
    if !m.target.starts_with('/') || m.target.split('/').any(|c| c == "..") {
        return Err(AgentError::InvalidArgument(format!(
            "mount target {:?}",
            m.target
        )));
    }
    std::fs::create_dir_all(&m.target).map_err(AgentError::io(format!("mkdir {}", m.target)))?;
    let (flags, data) = parse_options(&m.options);
    nix::mount::mount(
        Some(m.source.as_str()),
        m.target.as_str(),
        Some(m.fstype.as_str()),
        flags,
        (!data.is_empty()).then_some(data.as_str()),
    )
    .map_err(|e| {
        AgentError::io(format!("mount {} ({}) on {}", m.source, m.fstype, m.target))(e.into())
    })
}

#[cfg(test)]
mod tests {
    use nix::mount::MsFlags;

    use super::*;

    #[test]
    fn options_split_into_flags_and_data() {
        let (f, d) = parse_options(&[
            "ro".into(),
            "nosuid".into(),
            "cache=auto".into(),
            "dax".into(),
        ]);
        assert!(f.contains(MsFlags::MS_RDONLY | MsFlags::MS_NOSUID));
        assert_eq!(d, "cache=auto,dax");
    }

    #[test]
    fn host_mode_refuses_changes_and_bad_routes_are_invalid() {
        let mut req = api::SetupSandboxRequest::default();
        assert!(setup_sandbox(&req, false).is_ok());
        req.hostname = "pod".into();
        assert!(matches!(
            setup_sandbox(&req, false),
            Err(AgentError::Unimplemented(_))
        ));
        req.hostname.clear();
        req.routes.push(api::Route::default());
        assert!(matches!(
            setup_sandbox(&req, true),
            Err(AgentError::InvalidArgument(_))
        ));
    }

    #[test]
    fn bad_interface_names_are_refused() {
        assert!(matches!(link_up(""), Err(AgentError::InvalidArgument(_))));
        assert!(matches!(
            link_up(&"x".repeat(20)),
            Err(AgentError::InvalidArgument(_))
        ));
    }
}

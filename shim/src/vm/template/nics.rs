//! The builder VM's NICs. A template has as many virtio-net devices as the pods it serves, so
//! its builder needs taps to attach them to, though its guest never sends a packet: they are
//! made in a network namespace of their own, which no pod and no host interface shares,
//! bind-mounted at `<builder sandbox>/netns` for husk-vmm to open them in. Once that mount is
//! gone (the sandbox's removal unmounts it) and husk-vmm has exited, the namespace ends and
//! its taps with it: nothing of them can outlive the build.
//!
//! Each NIC has the template's MAC (`husk_protocol::template::nic_mac`) and no MTU, so the
//! device does not offer `VIRTIO_NET_F_MTU`: the guest's NIC then takes any pod's MTU later.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use husk_protocol::template::nic_mac;
use husk_protocol::NetConfig;

use crate::tap;

/// The namespace's mount point in the builder's sandbox.
pub fn netns_path(sandbox: &Path) -> PathBuf {
    sandbox.join("netns")
}

/// `nics` NICs for the builder VM whose sandbox is `sandbox`, their taps made in a new
/// network namespace mounted at [`netns_path`]. None without NICs.
pub fn create(sandbox: &Path, nics: u8) -> std::io::Result<Vec<NetConfig>> {
    if nics == 0 {
        return Ok(Vec::new());
    }
    let mount = netns_path(sandbox);
    std::fs::File::create(&mount)?;
    let target = mount.clone();
    // A thread of its own: unshare(CLONE_NEWNET) moves only the calling thread, which ends
    // after making the taps and mounting its namespace.
    std::thread::Builder::new()
        .name("husk-tpl-netns".into())
        .spawn(move || in_new_netns(&target, nics))?
        .join()
        .map_err(|_| std::io::Error::other("the template netns thread panicked"))??;
    Ok((0..nics)
        .map(|n| NetConfig {
            tap: tap::tap_name(usize::from(n)),
            mac: nic_mac(n),
            mtu: None,
            netns: Some(mount.clone()),
        })
        .collect())
}

fn in_new_netns(mount: &Path, nics: u8) -> std::io::Result<()> {
    // SAFETY: unshare(2) with a constant flag; it changes only this thread's namespace.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    for n in 0..nics {
        let name = tap::tap_name(usize::from(n));
        tap::create(&name)
            .map_err(|e| std::io::Error::new(e.kind(), format!("creating tap {name}: {e}")))?;
    }
    let ns = std::fs::File::open("/proc/thread-self/ns/net")?;
    let source = format!("/proc/self/fd/{}", ns.as_raw_fd());
    nix::mount::mount(
        Some(source.as_str()),
        mount,
        None::<&str>,
        nix::mount::MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|e| {
        let what = format!("mounting a network namespace on {}: {e}", mount.display());
        std::io::Error::new(std::io::Error::from(e).kind(), what)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_nics_make_no_namespace() {
        let dir = tempfile::tempdir().unwrap();
        assert!(create(dir.path(), 0).unwrap().is_empty());
        assert!(!netns_path(dir.path()).exists());
    }
}

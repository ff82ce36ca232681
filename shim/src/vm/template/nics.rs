//! The builder VM's NICs. A template has as many virtio-net devices as the pods it serves, so
//! its builder needs taps to attach them to, though its guest never sends a packet: they are
//! made in a network namespace of their own, which no pod and no host interface shares. A
//! thread of the builder's makes the namespace and stays in it ([`Netns`]); husk-vmm joins it
//! through that thread (`/proc/<shim>/task/<thread>/ns/net`) to open the taps. The namespace
//! lives while the thread does and husk-vmm holds the taps open, so when the build ends, or
//! the shim dies in the middle of it (its builder VM dies with it), the namespace goes and its
//! taps with it. Nothing is mounted for it, so nothing of it can be left behind.
//!
//! Each NIC has the template's MAC (`husk_protocol::template::nic_mac`) and no MTU, so the
//! device does not offer `VIRTIO_NET_F_MTU`: the guest's NIC then takes any pod's MTU later.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread::JoinHandle;

use husk_protocol::template::nic_mac;
use husk_protocol::NetConfig;

use crate::tap;

/// A network namespace of the builder's own, held by a thread until this is dropped.
#[derive(Debug)]
pub struct Netns {
    path: PathBuf,
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Netns {
    /// Where husk-vmm finds the namespace: the holding thread's `ns/net`.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // The thread returns once its channel closes.
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `nics` NICs for a builder VM, their taps made in a new network namespace; the namespace
/// lives until the returned [`Netns`] is dropped (and husk-vmm closed the taps). No namespace
/// without NICs.
pub fn create(nics: u8) -> std::io::Result<(Option<Netns>, Vec<NetConfig>)> {
    if nics == 0 {
        return Ok((None, Vec::new()));
    }
    let (made_tx, made_rx) = mpsc::channel();
    let (stop, stopped) = mpsc::channel::<()>();
    // A thread of its own: unshare(CLONE_NEWNET) moves only the calling thread.
    let thread = std::thread::Builder::new()
        .name("husk-tpl-netns".into())
        .spawn(move || {
            let made = in_new_netns(nics);
            let holds = made.is_ok();
            let _ = made_tx.send(made);
            if holds {
                // Until the Netns is dropped (the sender with it).
                let _ = stopped.recv();
            }
        })?;
    let tid = match made_rx.recv() {
        Ok(made) => made,
        Err(_) => Err(std::io::Error::other("the template netns thread panicked")),
    };
    let tid = match tid {
        Ok(tid) => tid,
        Err(e) => {
            let _ = thread.join();
            return Err(e);
        }
    };
    let netns = Netns {
        path: PathBuf::from(format!("/proc/{}/task/{tid}/ns/net", std::process::id())),
        stop: Some(stop),
        thread: Some(thread),
    };
    let net = (0..nics)
        .map(|n| NetConfig {
            tap: tap::tap_name(usize::from(n)),
            mac: nic_mac(n),
            mtu: None,
            netns: Some(netns.path.clone()),
        })
        .collect();
    Ok((Some(netns), net))
}

/// Moves the calling thread into a new network namespace and makes the taps there; returns
/// the thread's id.
fn in_new_netns(nics: u8) -> std::io::Result<nix::unistd::Pid> {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
        .map_err(|e| std::io::Error::other(format!("a new network namespace: {e}")))?;
    for n in 0..nics {
        let name = tap::tap_name(usize::from(n));
        tap::create(&name)
            .map_err(|e| std::io::Error::new(e.kind(), format!("creating tap {name}: {e}")))?;
    }
    Ok(nix::unistd::gettid())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_nics_make_no_namespace() {
        let (ns, net) = create(0).unwrap();
        assert!(ns.is_none() && net.is_empty());
    }

    /// Root only (creating namespaces and taps): the taps are in a namespace that is not the
    /// caller's, and it is gone once its guard is dropped.
    #[test]
    fn the_taps_live_in_a_namespace_of_their_own_that_ends_with_its_guard() {
        if !nix::unistd::geteuid().is_root() || !Path::new("/dev/net/tun").exists() {
            eprintln!("*** SKIPPED: needs root and /dev/net/tun (make e2e builds templates) ***");
            return;
        }
        let (ns, net) = create(2).unwrap();
        let ns = ns.unwrap();
        assert_eq!(
            net.iter().map(|n| n.tap.as_str()).collect::<Vec<_>>(),
            ["husktap0", "husktap1"]
        );
        assert!(net.iter().all(|n| n.netns.as_deref() == Some(ns.path())));
        assert_eq!(net[1].mac, "02:68:75:73:6b:01");
        let ours = std::fs::read_link("/proc/thread-self/ns/net").unwrap();
        let theirs = std::fs::read_link(ns.path()).unwrap();
        assert_ne!(ours, theirs, "a namespace of its own");
        // Its links, seen from inside: lo and the two taps.
        let path = ns.path().to_path_buf();
        let links = std::thread::spawn(move || {
            let f = std::fs::File::open(&path).unwrap();
            nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            let mut names: Vec<String> = std::fs::read_dir("/proc/thread-self/net/dev_snmp6")
                .map(|d| {
                    d.flatten()
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .collect()
                })
                .unwrap_or_default();
            if names.is_empty() {
                // Without IPv6: /proc/net/dev names every link.
                let dev = std::fs::read_to_string("/proc/thread-self/net/dev").unwrap();
                names = dev
                    .lines()
                    .skip(2)
                    .filter_map(|l| Some(l.split(':').next()?.trim().to_string()))
                    .collect();
            }
            names.sort();
            names
        })
        .join()
        .unwrap();
        assert_eq!(links, ["husktap0", "husktap1", "lo"]);
        let path = ns.path().to_path_buf();
        drop(ns);
        assert!(
            std::fs::read_link(&path).is_err(),
            "the holding thread is gone"
        );
    }
}

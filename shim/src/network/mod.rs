//! Pod networking on the host (Kata's "tcfilter" model). The sandbox's network namespace
//! (`linux.namespaces[type=network].path` in its spec, e.g. CNI's `/var/run/netns/cni-...`)
//! holds the interfaces CNI made (the veth `eth0`). For each of them the shim creates a
//! persistent tap (`husktap<n>`, which husk-vmm's virtio-net opens by name in that namespace),
//! gives it the veth's MTU, and connects the two with tc: an ingress qdisc on both and a
//! filter on each matching everything
//! (u32) that redirects every packet to the other ([`tc`]). The guest NIC
//! takes the veth's MAC; the agent gives it the veth's addresses and routes, so the pod keeps
//! the identity CNI gave it and the veth's own IP stack sees nothing.
//!
//! All netlink work runs on a dedicated thread inside the namespace ([`netns`]), never on a
//! tokio worker. What was created is recorded in `<state>/net.json` ([`record`]) before it is
//! created; [`teardown`] removes the taps and the veths' qdiscs (a namespace that is already
//! gone is fine: CRI deletes it after the sandbox task exits). No namespace path, or a namespace
//! with only `lo`, gives the VM no NIC.

pub mod discover;
pub mod forward;
pub mod netns;
pub mod record;
pub mod tc;

use std::path::{Path, PathBuf};

use husk_protocol::agent::api;
use husk_protocol::NetConfig;
use husk_rtnl::route::link::{LinkAttribute, LinkFlags, LinkMessage};
use husk_rtnl::route::RouteNetlinkMessage;
use husk_rtnl::{format_mac, Netlink, Rtnl};

use crate::error::ShimError;
use crate::paths::SandboxPaths;
use crate::tap;
use discover::Nic;
use record::NetRecord;

/// Why the pod network could not be set up or torn down.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The network namespace cannot be opened or entered.
    #[error("network namespace {path}: {source}")]
    Netns {
        /// Its path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A netlink request failed.
    #[error("{what}: {source}")]
    Netlink {
        /// What the shim was doing.
        what: String,
        /// The kernel's answer.
        #[source]
        source: std::io::Error,
    },
    /// `<state>/net.json` cannot be written or read.
    #[error("pod network record {path}: {source}")]
    Record {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The namespace thread panicked.
    #[error("the network namespace thread panicked")]
    Panicked,
}

fn nl_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> NetError {
    let what = what.into();
    move |source| NetError::Netlink { what, source }
}

impl From<NetError> for ShimError {
    fn from(e: NetError) -> Self {
        match e {
            NetError::Netns { ref source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                ShimError::InvalidArgument(e.to_string())
            }
            NetError::Netns { source, path } => {
                ShimError::host(format!("network namespace {}", path.display()))(source)
            }
            NetError::Netlink { what, source } => ShimError::host(what)(source),
            NetError::Record { path, source } => {
                ShimError::host(format!("pod network record {}", path.display()))(source)
            }
            NetError::Panicked => ShimError::host("pod network")(std::io::Error::other(
                "the network namespace thread panicked",
            )),
        }
    }
}

/// What the VM and the agent get.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PodNetwork {
    /// The VM's NICs.
    pub net: Vec<NetConfig>,
    /// SetupSandbox `interfaces`.
    pub interfaces: Vec<api::Interface>,
    /// SetupSandbox `routes`.
    pub routes: Vec<api::Route>,
}

/// The VM's and the agent's view of `nics` (tap `n` for NIC `n`).
pub fn describe(netns: &Path, nics: &[Nic]) -> PodNetwork {
    let mut out = PodNetwork::default();
    for (n, nic) in nics.iter().enumerate() {
        let mac = format_mac(&nic.mac);
        out.net.push(NetConfig {
            tap: tap::tap_name(n),
            mac: mac.clone(),
            mtu: u16::try_from(nic.mtu).ok(),
            netns: Some(netns.to_path_buf()),
        });
        let mut i = api::Interface::new();
        i.mac = mac;
        i.name = nic.name.clone();
        i.mtu = nic.mtu;
        i.addresses = nic.addresses.clone();
        out.interfaces.push(i);
        for r in &nic.routes {
            let mut route = api::Route::new();
            route.destination = r.destination.clone();
            route.gateway = r.gateway.clone();
            route.device = nic.name.clone();
            out.routes.push(route);
        }
    }
    out
}

fn link_index(nl: &mut dyn Netlink, name: &str) -> std::io::Result<u32> {
    let links = nl.dump(RouteNetlinkMessage::GetLink(LinkMessage::default()))?;
    links
        .iter()
        .find_map(|m| match m {
            RouteNetlinkMessage::NewLink(l)
                if l.attributes.contains(&LinkAttribute::IfName(name.into())) =>
            {
                Some(l.header.index)
            }
            _ => None,
        })
        .ok_or_else(|| std::io::Error::from_raw_os_error(libc::ENODEV))
}

/// Creates tap `n` for `nic` and wires it to the veth (inside the namespace).
fn plumb(nl: &mut dyn Netlink, n: usize, nic: &Nic) -> Result<(), NetError> {
    let name = tap::tap_name(n);
    tap::create(&name).map_err(nl_err(format!("creating tap {name}")))?;
    let index = link_index(nl, &name).map_err(nl_err(format!("finding tap {name}")))?;
    let mut m = LinkMessage::default();
    m.header.index = index;
    m.header.flags = LinkFlags::Up;
    m.header.change_mask = LinkFlags::Up;
    m.attributes.push(LinkAttribute::Mtu(nic.mtu));
    nl.request(RouteNetlinkMessage::SetLink(m), 0)
        .map_err(nl_err(format!("setting {name} up with MTU {}", nic.mtu)))?;
    tc::connect(nl, nic.index, index).map_err(nl_err(format!(
        "redirecting between {} and {name} (tc ingress + mirred)",
        nic.name
    )))?;
    tracing::info!(veth = %nic.name, tap = %name, mtu = nic.mtu, "pod NIC plumbed");
    Ok(())
}

/// Undoes `rec` inside the current namespace; returns the first error after trying all.
fn unplumb(nl: &mut dyn Netlink, rec: &NetRecord) -> Result<(), NetError> {
    let mut first = None;
    for t in &rec.taps {
        if let Err(e) = tap::delete(nl, t) {
            first.get_or_insert(NetError::Netlink {
                what: format!("deleting tap {t}"),
                source: e,
            });
        }
    }
    for v in &rec.veths {
        let res = match link_index(nl, v) {
            Ok(i) => tc::disconnect(nl, i),
            Err(_) => Ok(()),
        };
        if let Err(e) = res {
            first.get_or_insert(NetError::Netlink {
                what: format!("removing the ingress qdisc of {v}"),
                source: e,
            });
        }
    }
    first.map_or(Ok(()), Err)
}

/// Sets up the pod network of `netns` for the sandbox at `paths` (see the module docs).
/// On failure nothing is left behind.
pub async fn setup(netns: Option<&Path>, paths: &SandboxPaths) -> Result<PodNetwork, NetError> {
    let Some(netns) = netns else {
        return Ok(PodNetwork::default());
    };
    let nics = netns::run_in_async(netns, || {
        let mut nl = Rtnl::open().map_err(nl_err("opening rtnetlink"))?;
        discover::discover(&mut nl).map_err(nl_err("listing the pod's interfaces"))
    })
    .await?;
    tracing::info!(netns = %netns.display(), nics = ?nics, "pod network discovered");
    if nics.is_empty() {
        return Ok(PodNetwork::default());
    }
    let rec = NetRecord {
        netns: netns.to_path_buf(),
        taps: (0..nics.len()).map(tap::tap_name).collect(),
        veths: nics.iter().map(|n| n.name.clone()).collect(),
    };
    let root = paths.root();
    std::fs::create_dir_all(root)
        .and_then(|()| {
            std::fs::set_permissions(root, std::os::unix::fs::PermissionsExt::from_mode(0o700))
        })
        .map_err(|source| NetError::Record {
            path: root.to_path_buf(),
            source,
        })?;
    rec.write(root)?;
    let plan = nics.clone();
    let undo = rec.clone();
    let made = netns::run_in_async(netns, move || {
        let mut nl = Rtnl::open().map_err(nl_err("opening rtnetlink"))?;
        let r = plan
            .iter()
            .enumerate()
            .try_for_each(|(n, nic)| plumb(&mut nl, n, nic));
        if r.is_err() {
            if let Err(e) = unplumb(&mut nl, &undo) {
                tracing::warn!("undoing the pod network: {e}");
            }
        }
        r
    })
    .await;
    if let Err(e) = made {
        NetRecord::remove(root);
        return Err(e);
    }
    Ok(describe(netns, &nics))
}

fn netns_gone(e: &NetError) -> bool {
    matches!(e, NetError::Netns { source, .. }
        if matches!(source.raw_os_error(), Some(libc::ENOENT) | Some(libc::EINVAL)))
}

/// Removes what `<state>/net.json` records (blocking: for the `delete` action and stale state).
pub fn teardown_blocking(root: &Path) -> Result<(), NetError> {
    let Some(rec) = NetRecord::read(root)? else {
        return Ok(());
    };
    let r = rec.clone();
    match netns::run_in(&rec.netns, move || {
        let mut nl = Rtnl::open().map_err(nl_err("opening rtnetlink"))?;
        unplumb(&mut nl, &r)
    }) {
        Err(e) if netns_gone(&e) => {
            tracing::info!(netns = %rec.netns.display(), "the pod network namespace is gone");
        }
        Err(e) => return Err(e),
        Ok(()) => tracing::info!(netns = %rec.netns.display(), "pod network removed"),
    }
    NetRecord::remove(root);
    Ok(())
}

/// [`teardown_blocking`] for async callers (on a blocking thread of its own).
pub async fn teardown(root: &Path) -> Result<(), NetError> {
    let root = root.to_path_buf();
    tokio::task::spawn_blocking(move || teardown_blocking(&root))
        .await
        .map_err(|_| NetError::Panicked)?
}

#[cfg(test)]
mod tests;

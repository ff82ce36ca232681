//! What CNI left in the pod's network namespace: the non-loopback Ethernet links (the veth
//! `eth0`), their global addresses, and the main-table routes through them. [`plan`] is pure
//! (dump messages in, NICs out) so it is tested without root; [`discover`] runs the dumps.

use std::net::IpAddr;

use husk_rtnl::route::address::{AddressAttribute, AddressMessage, AddressScope};
use husk_rtnl::route::link::{
    InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkLayerType, LinkMessage,
};
use husk_rtnl::route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteType,
};
use husk_rtnl::route::RouteNetlinkMessage;
use husk_rtnl::Netlink;

/// A route through a NIC, as the agent takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NicRoute {
    /// CIDR; empty for the default route.
    pub destination: String,
    /// Next hop; empty for a link-scope route.
    pub gateway: String,
}

/// One of the pod's interfaces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nic {
    /// Its name in the namespace (and in the guest), e.g. `eth0`.
    pub name: String,
    /// Its link index in the namespace.
    pub index: u32,
    /// Its MAC, which the guest NIC takes over.
    pub mac: [u8; 6],
    /// Its MTU.
    pub mtu: u32,
    /// Global addresses in CIDR form.
    pub addresses: Vec<String>,
    /// Main-table routes through it, link-scope ones first.
    pub routes: Vec<NicRoute>,
}

fn ip_of(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

fn link_nic(l: &LinkMessage) -> Option<Nic> {
    if l.header.link_layer_type != LinkLayerType::Ether
        || l.header.flags.contains(LinkFlags::Loopback)
    {
        return None;
    }
    let mut nic = Nic {
        name: String::new(),
        index: l.header.index,
        mac: [0; 6],
        mtu: 1500,
        addresses: Vec::new(),
        routes: Vec::new(),
    };
    let mut has_mac = false;
    for a in &l.attributes {
        match a {
            LinkAttribute::IfName(n) => nic.name = n.clone(),
            LinkAttribute::Mtu(m) => nic.mtu = *m,
            LinkAttribute::Address(b) => {
                if let Ok(mac) = <[u8; 6]>::try_from(b.as_slice()) {
                    nic.mac = mac;
                    has_mac = true;
                }
            }
            // A tap (ours from an earlier run, or anyone's) is not a pod interface.
            LinkAttribute::LinkInfo(infos)
                if infos
                    .iter()
                    .any(|i| matches!(i, LinkInfo::Kind(InfoKind::Tun))) =>
            {
                return None;
            }
            _ => {}
        }
    }
    (has_mac && !nic.name.is_empty() && !nic.name.starts_with("husktap")).then_some(nic)
}

fn address_of(a: &AddressMessage) -> Option<(u32, String)> {
    if a.header.scope != AddressScope::Universe {
        return None;
    }
    let local = a.attributes.iter().find_map(|x| match x {
        AddressAttribute::Local(ip) => Some(*ip),
        _ => None,
    });
    let addr = a.attributes.iter().find_map(|x| match x {
        AddressAttribute::Address(ip) => Some(*ip),
        _ => None,
    });
    let ip = local.or(addr)?;
    Some((a.header.index, format!("{ip}/{}", a.header.prefix_len)))
}

fn route_of(r: &RouteMessage) -> Option<(u32, NicRoute)> {
    let table = r
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(r.header.table));
    // Kernel routes (the subnet of an address) the guest makes itself when it gets the address.
    if table != u32::from(RouteHeader::RT_TABLE_MAIN)
        || r.header.kind != RouteType::Unicast
        || r.header.protocol == RouteProtocol::Kernel
    {
        return None;
    }
    let mut oif = None;
    let mut dst = None;
    let mut gw = None;
    for a in &r.attributes {
        match a {
            RouteAttribute::Oif(i) => oif = Some(*i),
            RouteAttribute::Destination(d) => dst = ip_of(d),
            RouteAttribute::Gateway(g) => gw = ip_of(g),
            RouteAttribute::MultiPath(_) => return None,
            _ => {}
        }
    }
    let destination = match dst {
        Some(ip) => format!("{ip}/{}", r.header.destination_prefix_length),
        None if r.header.destination_prefix_length == 0 => String::new(),
        None => return None,
    };
    Some((
        oif?,
        NicRoute {
            destination,
            gateway: gw.map(|g| g.to_string()).unwrap_or_default(),
        },
    ))
}

/// The pod's NICs from link, address and route dumps.
pub fn plan(
    links: &[RouteNetlinkMessage],
    addrs: &[RouteNetlinkMessage],
    routes: &[RouteNetlinkMessage],
) -> Vec<Nic> {
    let mut nics: Vec<Nic> = links
        .iter()
        .filter_map(|m| match m {
            RouteNetlinkMessage::NewLink(l) => link_nic(l),
            _ => None,
        })
        .collect();
    for m in addrs {
        if let RouteNetlinkMessage::NewAddress(a) = m {
            if let Some((index, cidr)) = address_of(a) {
                if let Some(n) = nics.iter_mut().find(|n| n.index == index) {
                    n.addresses.push(cidr);
                }
            }
        }
    }
    for m in routes {
        if let RouteNetlinkMessage::NewRoute(r) = m {
            if let Some((index, route)) = route_of(r) {
                if let Some(n) = nics.iter_mut().find(|n| n.index == index) {
                    n.routes.push(route);
                }
            }
        }
    }
    for n in &mut nics {
        n.routes.sort_by_key(|r| !r.gateway.is_empty());
    }
    nics.sort_by_key(|n| n.index);
    nics
}

/// Dumps links, addresses and routes and plans the NICs.
pub fn discover(nl: &mut dyn Netlink) -> std::io::Result<Vec<Nic>> {
    let links = nl.dump(RouteNetlinkMessage::GetLink(LinkMessage::default()))?;
    let addrs = nl.dump(RouteNetlinkMessage::GetAddress(AddressMessage::default()))?;
    let routes = nl.dump(RouteNetlinkMessage::GetRoute(RouteMessage::default()))?;
    Ok(plan(&links, &addrs, &routes))
}

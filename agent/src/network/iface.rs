//! The pod's NICs and routes (SetupSandbox `interfaces` and `routes`), over rtnetlink.
//!
//! The request is checked completely first ([`plan`]: MACs, CIDRs, names, gateways), so bad
//! input is refused before anything changes. Then [`apply`], for each interface: find the
//! link by MAC (its `current_mac` when the shim gives one: a NIC restored from a template,
//! which then takes the pod's MAC while down; NOT_FOUND naming the MAC if none), take it
//! down and rename it if asked, set
//! the MTU, add the addresses (IPv6 ones without DAD: see [`address_message`]), bring it up; then add the routes in request order (the shim
//! sends link-scope routes first, so gateways are reachable). Routes are added with
//! `NLM_F_REPLACE`, so a route the kernel already made for an address is not an error.

use std::collections::HashMap;
use std::net::IpAddr;

use husk_protocol::agent::api;
use husk_rtnl::core::{NLM_F_CREATE, NLM_F_REPLACE};
use husk_rtnl::route::address::{AddressAttribute, AddressFlags, AddressMessage};
use husk_rtnl::route::link::{LinkAttribute, LinkFlags, LinkMessage};
use husk_rtnl::route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use husk_rtnl::route::{AddressFamily, RouteNetlinkMessage};
use husk_rtnl::{format_mac, parse_mac, Netlink};

use crate::error::{AgentError, Result};

/// One interface to configure, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IfacePlan {
    /// The NIC's hardware address.
    pub mac: [u8; 6],
    /// The address it has now, when that is another (a restored template's NIC): found by
    /// this, it is given `mac`.
    pub current: Option<[u8; 6]>,
    /// The name to give it (None: keep the kernel's).
    pub name: Option<String>,
    /// The MTU (None: leave it).
    pub mtu: Option<u32>,
    /// Addresses with their prefix lengths.
    pub addresses: Vec<(IpAddr, u8)>,
}

/// One route to add, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutePlan {
    /// Destination and prefix length (None: the default route).
    pub destination: Option<(IpAddr, u8)>,
    /// Next hop (None: link scope).
    pub gateway: Option<IpAddr>,
    /// The guest interface name.
    pub device: String,
}

/// Parses `10.88.0.5/16` or `fd00::5/64`.
pub fn parse_cidr(s: &str) -> Result<(IpAddr, u8)> {
    let bad = || AgentError::InvalidArgument(format!("address {s:?} is not in CIDR form"));
    let (ip, len) = s.split_once('/').ok_or_else(bad)?;
    let ip: IpAddr = ip.parse().map_err(|_| bad())?;
    let len: u8 = len.parse().map_err(|_| bad())?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    if len > max {
        return Err(bad());
    }
    Ok((ip, len))
}

fn check_name(name: &str) -> Result<()> {
    if name.len() >= libc::IFNAMSIZ || name.contains(['/', ' ', '\0']) || name == "." {
        return Err(AgentError::InvalidArgument(format!(
            "interface name {name:?}"
        )));
    }
    Ok(())
}

/// Validates the request's interfaces and routes.
pub fn plan(req: &api::SetupSandboxRequest) -> Result<(Vec<IfacePlan>, Vec<RoutePlan>)> {
    let mut ifaces = Vec::new();
    for i in &req.interfaces {
        let mac = parse_mac(&i.mac).ok_or_else(|| {
            AgentError::InvalidArgument(format!("interface MAC address {:?}", i.mac))
        })?;
        let current = if i.current_mac.is_empty() {
            None
        } else {
            let current = parse_mac(&i.current_mac).ok_or_else(|| {
                AgentError::InvalidArgument(format!(
                    "interface current MAC address {:?}",
                    i.current_mac
                ))
            })?;
            (current != mac).then_some(current)
        };
        if !i.name.is_empty() {
            check_name(&i.name)?;
        }
        if i.mtu != 0 && !(68..=65535).contains(&i.mtu) {
            return Err(AgentError::InvalidArgument(format!(
                "MTU {} of interface {} (68..=65535)",
                i.mtu, i.mac
            )));
        }
        ifaces.push(IfacePlan {
            mac,
            current,
            name: (!i.name.is_empty()).then(|| i.name.clone()),
            mtu: (i.mtu != 0).then_some(i.mtu),
            addresses: i
                .addresses
                .iter()
                .map(|a| parse_cidr(a))
                .collect::<Result<_>>()?,
        });
    }
    let mut routes = Vec::new();
    for r in &req.routes {
        let destination = if r.destination.is_empty() {
            None
        } else {
            Some(parse_cidr(&r.destination)?)
        };
        let gateway = if r.gateway.is_empty() {
            None
        } else {
            Some(r.gateway.parse::<IpAddr>().map_err(|_| {
                AgentError::InvalidArgument(format!("route gateway {:?}", r.gateway))
            })?)
        };
        if r.device.is_empty() {
            return Err(AgentError::InvalidArgument(format!(
                "route to {:?} names no device",
                r.destination
            )));
        }
        check_name(&r.device)?;
        if let (Some((d, _)), Some(g)) = (destination, gateway) {
            if d.is_ipv4() != g.is_ipv4() {
                return Err(AgentError::InvalidArgument(format!(
                    "route to {} via {}: mixed address families",
                    r.destination, r.gateway
                )));
            }
        }
        routes.push(RoutePlan {
            destination,
            gateway,
            device: r.device.clone(),
        });
    }
    Ok((ifaces, routes))
}

fn family(ip: IpAddr) -> AddressFamily {
    if ip.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    }
}

/// The guest's links: MAC → (index, name).
fn links(nl: &mut dyn Netlink) -> Result<Vec<([u8; 6], u32, String)>> {
    let dump = nl
        .dump(RouteNetlinkMessage::GetLink(LinkMessage::default()))
        .map_err(AgentError::io("listing network links"))?;
    Ok(dump
        .into_iter()
        .filter_map(|m| match m {
            RouteNetlinkMessage::NewLink(l) => {
                let mut mac = None;
                let mut name = String::new();
                for a in &l.attributes {
                    match a {
                        LinkAttribute::Address(b) if b.len() == 6 => {
                            mac = <[u8; 6]>::try_from(b.as_slice()).ok()
                        }
                        LinkAttribute::IfName(n) => name = n.clone(),
                        _ => {}
                    }
                }
                mac.map(|m| (m, l.header.index, name))
            }
            _ => None,
        })
        .collect())
}

fn set_link(
    nl: &mut dyn Netlink,
    index: u32,
    up: Option<bool>,
    attrs: Vec<LinkAttribute>,
) -> std::io::Result<()> {
    let mut m = LinkMessage::default();
    m.header.index = index;
    if let Some(up) = up {
        m.header.change_mask = LinkFlags::Up;
        m.header.flags = if up {
            LinkFlags::Up
        } else {
            LinkFlags::empty()
        };
    }
    m.attributes = attrs;
    nl.request(RouteNetlinkMessage::SetLink(m), 0)
}

/// The RTM_NEWADDR message for `ip/len` on link `index`. An IPv6 address goes in without
/// duplicate address detection (`IFA_F_NODAD`): CNI already owns it in the pod's namespace,
/// and DAD would leave it tentative for a second or more, in which a container binding it
/// fails with EADDRNOTAVAIL and traffic from it leaves with another source.
pub fn address_message(index: u32, ip: IpAddr, len: u8) -> AddressMessage {
    let mut m = AddressMessage::default();
    m.header.family = family(ip);
    m.header.prefix_len = len;
    m.header.index = index;
    m.attributes.push(AddressAttribute::Local(ip));
    m.attributes.push(AddressAttribute::Address(ip));
    if ip.is_ipv6() {
        m.attributes
            .push(AddressAttribute::Flags(AddressFlags::Nodad));
    }
    m
}

fn add_address(nl: &mut dyn Netlink, index: u32, ip: IpAddr, len: u8) -> std::io::Result<()> {
    nl.request(
        RouteNetlinkMessage::NewAddress(address_message(index, ip, len)),
        NLM_F_CREATE | NLM_F_REPLACE,
    )
}

/// The RTM_NEWROUTE message for `r` on link `oif`.
pub fn route_message(r: &RoutePlan, oif: u32) -> RouteMessage {
    let mut m = RouteMessage::default();
    let fam_ip = r
        .destination
        .map(|(ip, _)| ip)
        .or(r.gateway)
        .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
    m.header.address_family = family(fam_ip);
    m.header.table = RouteHeader::RT_TABLE_MAIN;
    m.header.protocol = RouteProtocol::Boot;
    m.header.kind = RouteType::Unicast;
    m.header.scope = if r.gateway.is_some() {
        RouteScope::Universe
    } else {
        RouteScope::Link
    };
    if let Some((ip, len)) = r.destination {
        m.header.destination_prefix_length = len;
        m.attributes
            .push(RouteAttribute::Destination(RouteAddress::from(ip)));
    }
    if let Some(gw) = r.gateway {
        m.attributes
            .push(RouteAttribute::Gateway(RouteAddress::from(gw)));
    }
    m.attributes.push(RouteAttribute::Oif(oif));
    m
}

/// Configures the interfaces, then the routes (see the module docs).
pub fn apply(nl: &mut dyn Netlink, ifaces: &[IfacePlan], routes: &[RoutePlan]) -> Result<()> {
    let found = links(nl)?;
    let mut by_name: HashMap<String, u32> = found.iter().map(|(_, i, n)| (n.clone(), *i)).collect();
    for i in ifaces {
        let mac = format_mac(&i.mac);
        let now = i.current.unwrap_or(i.mac);
        let (_, index, current) = found.iter().find(|(m, _, _)| *m == now).ok_or_else(|| {
            AgentError::NotFound(format!(
                "no network interface with MAC {}",
                format_mac(&now)
            ))
        })?;
        let name = i.name.clone().unwrap_or_else(|| current.clone());
        tracing::info!(mac = %mac, index, name = %name, mtu = ?i.mtu, "configuring interface");
        if i.current.is_some() {
            // Down first: a NIC takes a new address only while down (and nothing may have
            // used the old one: the link comes up below, with the pod's).
            set_link(
                nl,
                *index,
                Some(false),
                vec![LinkAttribute::Address(i.mac.to_vec())],
            )
            .map_err(AgentError::io(format!(
                "giving {current} ({}) the MAC {mac}",
                format_mac(&now)
            )))?;
        }
        if name != *current {
            set_link(
                nl,
                *index,
                Some(false),
                vec![LinkAttribute::IfName(name.clone())],
            )
            .map_err(AgentError::io(format!(
                "renaming {current} ({mac}) to {name}"
            )))?;
            by_name.remove(current);
            by_name.insert(name.clone(), *index);
        }
        if let Some(mtu) = i.mtu {
            set_link(nl, *index, None, vec![LinkAttribute::Mtu(mtu)]).map_err(AgentError::io(
                format!("setting the MTU of {name} to {mtu}"),
            ))?;
        }
        for (ip, len) in &i.addresses {
            add_address(nl, *index, *ip, *len)
                .map_err(AgentError::io(format!("adding {ip}/{len} to {name}")))?;
        }
        set_link(nl, *index, Some(true), Vec::new())
            .map_err(AgentError::io(format!("bringing {name} up")))?;
    }
    for r in routes {
        let oif = *by_name.get(&r.device).ok_or_else(|| {
            AgentError::NotFound(format!("route device {:?} is no interface", r.device))
        })?;
        let what = format!(
            "adding the route to {} via {} dev {}",
            r.destination
                .map(|(ip, len)| format!("{ip}/{len}"))
                .unwrap_or_else(|| "default".into()),
            r.gateway
                .map(|g| g.to_string())
                .unwrap_or_else(|| "-".into()),
            r.device
        );
        tracing::info!(route = %what, "adding route");
        nl.request(
            RouteNetlinkMessage::NewRoute(route_message(r, oif)),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
        .map_err(AgentError::io(what))?;
    }
    Ok(())
}

#[cfg(test)]
#[path = "iface_tests.rs"]
mod tests;

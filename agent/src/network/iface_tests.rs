//! Planning and applying interfaces and routes against a fake rtnetlink.

use std::io;

use husk_rtnl::route::link::{LinkAttribute, LinkMessage};
use husk_rtnl::route::RouteNetlinkMessage;
use husk_rtnl::Netlink;

use super::*;

#[derive(Default)]
struct Fake {
    links: Vec<(u32, &'static str, [u8; 6])>,
    sent: Vec<RouteNetlinkMessage>,
}

impl Netlink for Fake {
    fn request(&mut self, msg: RouteNetlinkMessage, _flags: u16) -> io::Result<()> {
        self.sent.push(msg);
        Ok(())
    }
    fn dump(&mut self, _msg: RouteNetlinkMessage) -> io::Result<Vec<RouteNetlinkMessage>> {
        Ok(self
            .links
            .iter()
            .map(|(i, n, mac)| {
                let mut l = LinkMessage::default();
                l.header.index = *i;
                l.attributes.push(LinkAttribute::IfName(n.to_string()));
                l.attributes.push(LinkAttribute::Address(mac.to_vec()));
                RouteNetlinkMessage::NewLink(l)
            })
            .collect())
    }
}

fn request(mac: &str, addrs: &[&str], routes: &[(&str, &str, &str)]) -> api::SetupSandboxRequest {
    let mut req = api::SetupSandboxRequest::new();
    let mut i = api::Interface::new();
    i.mac = mac.into();
    i.name = "eth0".into();
    i.mtu = 1400;
    i.addresses = addrs.iter().map(|a| a.to_string()).collect();
    req.interfaces.push(i);
    for (d, g, dev) in routes {
        let mut r = api::Route::new();
        r.destination = d.to_string();
        r.gateway = g.to_string();
        r.device = dev.to_string();
        req.routes.push(r);
    }
    req
}

#[test]
fn cidrs_parse_and_bad_ones_are_refused() {
    assert_eq!(
        parse_cidr("10.88.0.5/16").unwrap(),
        ("10.88.0.5".parse().unwrap(), 16)
    );
    assert_eq!(parse_cidr("fd00::5/64").unwrap().1, 64);
    for bad in ["10.0.0.1", "10.0.0.1/33", "fd00::1/129", "x/8", "10.0.0.1/"] {
        let e = parse_cidr(bad).unwrap_err();
        assert!(matches!(e, AgentError::InvalidArgument(_)), "{bad}");
        assert!(e.to_string().contains(bad), "{e}");
    }
}

#[test]
fn bad_requests_are_refused_naming_the_value() {
    let e = plan(&request("02:00:00:00:00", &[], &[])).unwrap_err();
    assert!(e.to_string().contains("02:00:00:00:00"), "{e}");
    let e = plan(&request("02:00:00:00:00:01", &["10.0.0.2"], &[])).unwrap_err();
    assert!(e.to_string().contains("10.0.0.2"), "{e}");
    let e = plan(&request("02:00:00:00:00:01", &[], &[("", "nope", "eth0")])).unwrap_err();
    assert!(e.to_string().contains("nope"), "{e}");
    let e = plan(&request("02:00:00:00:00:01", &[], &[("", "fd00::1", "")])).unwrap_err();
    assert!(matches!(e, AgentError::InvalidArgument(_)));
    let e = plan(&request(
        "02:00:00:00:00:01",
        &[],
        &[("10.0.0.0/8", "fd00::1", "eth0")],
    ))
    .unwrap_err();
    assert!(e.to_string().contains("mixed"), "{e}");
}

#[test]
fn an_unknown_mac_is_not_found() {
    let req = request("02:00:00:00:00:09", &["10.0.0.2/24"], &[]);
    let (i, r) = plan(&req).unwrap();
    let mut nl = Fake {
        links: vec![(1, "lo", [0; 6]), (2, "eth0", [2, 0, 0, 0, 0, 1])],
        ..Fake::default()
    };
    let e = apply(&mut nl, &i, &r).unwrap_err();
    assert!(matches!(e, AgentError::NotFound(_)));
    assert!(e.to_string().contains("02:00:00:00:00:09"), "{e}");
    assert!(nl.sent.is_empty(), "nothing changes");
}

#[test]
fn the_nic_is_renamed_configured_brought_up_and_routed() {
    let req = request(
        "02:00:00:00:00:01",
        &["10.99.0.2/24"],
        &[("", "10.99.0.1", "eth0")],
    );
    let (i, r) = plan(&req).unwrap();
    let mut nl = Fake {
        links: vec![(1, "lo", [0; 6]), (7, "enp0", [2, 0, 0, 0, 0, 1])],
        ..Fake::default()
    };
    apply(&mut nl, &i, &r).unwrap();
    let kinds: Vec<&str> = nl
        .sent
        .iter()
        .map(|m| match m {
            RouteNetlinkMessage::SetLink(l)
                if l.attributes.contains(&LinkAttribute::IfName("eth0".into())) =>
            {
                assert!(l.header.flags.is_empty(), "renamed while down");
                "rename"
            }
            RouteNetlinkMessage::SetLink(l) if l.attributes.contains(&LinkAttribute::Mtu(1400)) => {
                "mtu"
            }
            RouteNetlinkMessage::SetLink(l) if l.header.flags.contains(LinkFlags::Up) => "up",
            RouteNetlinkMessage::NewAddress(a) => {
                assert_eq!((a.header.index, a.header.prefix_len), (7, 24));
                "addr"
            }
            RouteNetlinkMessage::NewRoute(r) => {
                assert!(r.attributes.contains(&RouteAttribute::Oif(7)));
                assert_eq!(r.header.destination_prefix_length, 0);
                assert_eq!(r.header.scope, RouteScope::Universe);
                "route"
            }
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(kinds, ["rename", "mtu", "addr", "up", "route"]);
}

#[test]
fn a_restored_nic_is_found_by_its_current_mac_and_takes_the_pods_while_down() {
    let mut req = request("02:00:00:00:00:01", &["10.99.0.2/24"], &[]);
    req.interfaces[0].current_mac = "02:68:75:73:6b:00".into();
    let (i, r) = plan(&req).unwrap();
    assert_eq!(i[0].current, Some([2, 0x68, 0x75, 0x73, 0x6b, 0]));
    let mut nl = Fake {
        links: vec![
            (1, "lo", [0; 6]),
            (7, "eth0", [2, 0x68, 0x75, 0x73, 0x6b, 0]),
        ],
        ..Fake::default()
    };
    apply(&mut nl, &i, &r).unwrap();
    let RouteNetlinkMessage::SetLink(first) = &nl.sent[0] else {
        panic!("first {:?}", nl.sent[0]);
    };
    assert_eq!(first.header.index, 7);
    assert!(first.header.change_mask.contains(LinkFlags::Up));
    assert!(first.header.flags.is_empty(), "the MAC changes while down");
    assert!(first
        .attributes
        .contains(&LinkAttribute::Address(vec![2, 0, 0, 0, 0, 1])));
    let RouteNetlinkMessage::SetLink(last) = nl.sent.last().unwrap() else {
        panic!("last {:?}", nl.sent.last());
    };
    assert!(last.header.flags.contains(LinkFlags::Up), "up last");

    // A current MAC equal to the pod's changes nothing; a bad one is refused by name; a
    // current MAC no NIC has is NOT_FOUND naming it.
    req.interfaces[0].current_mac = "02:00:00:00:00:01".into();
    assert_eq!(plan(&req).unwrap().0[0].current, None);
    req.interfaces[0].current_mac = "02:68".into();
    let e = plan(&req).unwrap_err();
    assert!(
        e.to_string().contains("current MAC address \"02:68\""),
        "{e}"
    );
    req.interfaces[0].current_mac = "02:68:75:73:6b:05".into();
    let (i, r) = plan(&req).unwrap();
    let e = apply(&mut nl, &i, &r).unwrap_err();
    assert!(matches!(e, AgentError::NotFound(_)));
    assert!(e.to_string().contains("02:68:75:73:6b:05"), "{e}");
}

#[test]
fn a_route_without_gateway_is_link_scope() {
    let r = RoutePlan {
        destination: Some(("fd00::".parse().unwrap(), 64)),
        gateway: None,
        device: "eth0".into(),
    };
    let m = route_message(&r, 3);
    assert_eq!(m.header.scope, RouteScope::Link);
    assert_eq!(m.header.address_family, AddressFamily::Inet6);
    assert_eq!(m.header.destination_prefix_length, 64);
}

#[test]
fn ipv6_addresses_skip_dad_and_ipv4_ones_carry_no_flags() {
    let flags = |m: &AddressMessage| {
        m.attributes
            .iter()
            .filter_map(|a| match a {
                AddressAttribute::Flags(f) => Some(*f),
                _ => None,
            })
            .collect::<Vec<_>>()
    };
    let v6 = address_message(3, "fd00:99::2".parse().unwrap(), 64);
    assert_eq!(v6.header.family, AddressFamily::Inet6);
    assert_eq!(v6.header.prefix_len, 64);
    assert_eq!(flags(&v6), [AddressFlags::Nodad]);
    let v4 = address_message(3, "10.99.0.2".parse().unwrap(), 24);
    assert_eq!(v4.header.family, AddressFamily::Inet);
    assert!(flags(&v4).is_empty());
}

//! Planning, messages and teardown against fakes (no root needed).

use std::io;
use std::net::IpAddr;
use std::path::PathBuf;

use husk_rtnl::core::{Emitable, NetlinkMessage, NetlinkPayload};
use husk_rtnl::route::address::{AddressAttribute, AddressMessage, AddressScope};
use husk_rtnl::route::link::{LinkAttribute, LinkFlags, LinkLayerType, LinkMessage};
use husk_rtnl::route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteType,
};
use husk_rtnl::route::tc::{TcAttribute, TcHandle};
use husk_rtnl::route::RouteNetlinkMessage;

use super::*;

fn link(index: u32, name: &str, mac: [u8; 6], mtu: u32, lo: bool) -> RouteNetlinkMessage {
    let mut l = LinkMessage::default();
    l.header.index = index;
    l.header.link_layer_type = if lo {
        LinkLayerType::Loopback
    } else {
        LinkLayerType::Ether
    };
    if lo {
        l.header.flags = LinkFlags::Loopback;
    }
    l.attributes = vec![
        LinkAttribute::IfName(name.into()),
        LinkAttribute::Mtu(mtu),
        LinkAttribute::Address(mac.to_vec()),
    ];
    RouteNetlinkMessage::NewLink(l)
}

fn addr(index: u32, ip: &str, len: u8, scope: AddressScope) -> RouteNetlinkMessage {
    let ip: IpAddr = ip.parse().unwrap();
    let mut a = AddressMessage::default();
    a.header.index = index;
    a.header.prefix_len = len;
    a.header.scope = scope;
    a.attributes = vec![AddressAttribute::Address(ip), AddressAttribute::Local(ip)];
    RouteNetlinkMessage::NewAddress(a)
}

fn route(
    oif: u32,
    dst: Option<(&str, u8)>,
    gw: Option<&str>,
    proto: RouteProtocol,
) -> RouteNetlinkMessage {
    let mut r = RouteMessage::default();
    r.header.table = RouteHeader::RT_TABLE_MAIN;
    r.header.kind = RouteType::Unicast;
    r.header.protocol = proto;
    if let Some((d, len)) = dst {
        r.header.destination_prefix_length = len;
        r.attributes
            .push(RouteAttribute::Destination(RouteAddress::from(
                d.parse::<IpAddr>().unwrap(),
            )));
    }
    if let Some(g) = gw {
        r.attributes
            .push(RouteAttribute::Gateway(RouteAddress::from(
                g.parse::<IpAddr>().unwrap(),
            )));
    }
    r.attributes.push(RouteAttribute::Oif(oif));
    RouteNetlinkMessage::NewRoute(r)
}

const MAC: [u8; 6] = [0x0a, 0x58, 0x0a, 0x63, 0x00, 0x02];

fn cni_namespace() -> Vec<Nic> {
    discover::plan(
        &[
            link(1, "lo", [0; 6], 65536, true),
            link(3, "eth0", MAC, 1400, false),
        ],
        &[
            addr(1, "127.0.0.1", 8, AddressScope::Host),
            addr(3, "10.99.0.2", 24, AddressScope::Universe),
            addr(3, "fd00::2", 64, AddressScope::Universe),
            addr(3, "fe80::1", 64, AddressScope::Link),
        ],
        &[
            route(3, None, Some("10.99.0.1"), RouteProtocol::Boot),
            route(3, Some(("10.99.0.0", 24)), None, RouteProtocol::Kernel),
            route(3, Some(("10.100.0.0", 16)), None, RouteProtocol::Boot),
            route(1, Some(("10.5.0.0", 16)), None, RouteProtocol::Boot),
        ],
    )
}

#[test]
fn the_veth_is_found_with_its_addresses_and_routes() {
    let nics = cni_namespace();
    assert_eq!(nics.len(), 1, "{nics:?}");
    let n = &nics[0];
    assert_eq!(
        (n.name.as_str(), n.index, n.mac, n.mtu),
        ("eth0", 3, MAC, 1400)
    );
    assert_eq!(n.addresses, ["10.99.0.2/24", "fd00::2/64"]);
    let routes: Vec<(&str, &str)> = n
        .routes
        .iter()
        .map(|r| (r.destination.as_str(), r.gateway.as_str()))
        .collect();
    // The kernel's subnet route is left to the guest kernel; link routes come first.
    assert_eq!(routes, [("10.100.0.0/16", ""), ("", "10.99.0.1")]);
}

#[test]
fn only_lo_means_no_nic() {
    let nics = discover::plan(&[link(1, "lo", [0; 6], 65536, true)], &[], &[]);
    assert!(nics.is_empty());
    assert_eq!(describe(Path::new("/x"), &nics), PodNetwork::default());
}

#[test]
fn the_vm_gets_the_tap_and_the_agent_the_veth_identity() {
    let p = describe(Path::new("/var/run/netns/cni-1"), &cni_namespace());
    assert_eq!(
        p.net,
        [NetConfig {
            tap: "husktap0".into(),
            mac: "0a:58:0a:63:00:02".into(),
            mtu: Some(1400),
            netns: Some("/var/run/netns/cni-1".into()),
        }]
    );
    assert_eq!(p.interfaces[0].mac, "0a:58:0a:63:00:02");
    assert_eq!(p.interfaces[0].name, "eth0");
    assert_eq!(p.interfaces[0].mtu, 1400);
    assert_eq!(p.routes.len(), 2);
    assert!(p.routes.iter().all(|r| r.device == "eth0"));
    assert!(tap::tap_name(99).len() < 16);
}

/// Emits a message as the kernel would receive it and parses it back.
fn round_trip(m: RouteNetlinkMessage) -> RouteNetlinkMessage {
    let mut nl = NetlinkMessage::from(m);
    nl.finalize();
    let mut buf = vec![0; nl.buffer_len()];
    nl.emit(&mut buf);
    match NetlinkMessage::<RouteNetlinkMessage>::deserialize(&buf)
        .unwrap()
        .payload
    {
        NetlinkPayload::InnerMessage(m) => m,
        other => panic!("{other:?}"),
    }
}

#[test]
fn tc_messages_are_ingress_and_match_all_u32_redirects() {
    match round_trip(tc::add_ingress_msg(3)) {
        RouteNetlinkMessage::NewQueueDiscipline(q) => {
            assert_eq!(q.header.index, 3);
            assert_eq!(q.header.parent, TcHandle::INGRESS);
            assert_eq!(
                q.header.handle,
                TcHandle {
                    major: 0xffff,
                    minor: 0
                }
            );
            assert!(q.attributes.contains(&TcAttribute::Kind("ingress".into())));
        }
        other => panic!("{other:?}"),
    }
    let sent = tc::redirect_msg(3, 9);
    assert_eq!(round_trip(sent.clone()), sent);
    let RouteNetlinkMessage::NewTrafficFilter(f) = sent else {
        panic!()
    };
    assert_eq!(f.header.index, 3);
    assert_eq!(f.header.info, 0x0001_0300, "prio 1, protocol all");
    let text = format!("{f:?}");
    assert!(
        text.contains("EgressRedir") && text.contains("ifindex: 9"),
        "{text}"
    );
    assert!(
        text.contains("Stolen") && text.contains("\"u32\"") && text.contains("nkeys: 1"),
        "{text}"
    );
}

#[derive(Default)]
struct Fake {
    links: Vec<RouteNetlinkMessage>,
    sent: Vec<RouteNetlinkMessage>,
    errno: Option<i32>,
}

impl Netlink for Fake {
    fn request(&mut self, msg: RouteNetlinkMessage, _flags: u16) -> io::Result<()> {
        self.sent.push(msg);
        self.errno
            .map_or(Ok(()), |e| Err(io::Error::from_raw_os_error(e)))
    }
    fn dump(&mut self, _msg: RouteNetlinkMessage) -> io::Result<Vec<RouteNetlinkMessage>> {
        Ok(self.links.clone())
    }
}

#[test]
fn unplumbing_deletes_taps_and_qdiscs_and_tolerates_missing_ones() {
    let rec = NetRecord {
        netns: "/x".into(),
        taps: vec!["husktap0".into()],
        veths: vec!["eth0".into(), "gone0".into()],
    };
    let mut nl = Fake {
        links: vec![link(3, "eth0", MAC, 1400, false)],
        ..Fake::default()
    };
    unplumb(&mut nl, &rec).unwrap();
    assert!(matches!(nl.sent[0], RouteNetlinkMessage::DelLink(_)));
    assert!(
        matches!(&nl.sent[1], RouteNetlinkMessage::DelQueueDiscipline(q) if q.header.index == 3)
    );
    assert_eq!(nl.sent.len(), 2, "a veth that is gone needs nothing");
    for errno in [libc::ENODEV, libc::ENOENT] {
        let mut nl = Fake {
            links: vec![link(3, "eth0", MAC, 1400, false)],
            errno: Some(errno),
            ..Fake::default()
        };
        if errno == libc::ENODEV {
            unplumb(&mut nl, &rec).unwrap();
        } else {
            // ENOENT is fine for the qdisc, not for the tap.
            let e = unplumb(&mut nl, &rec).unwrap_err();
            assert!(e.to_string().contains("husktap0"), "{e}");
        }
    }
}

#[test]
fn records_round_trip_and_missing_is_none() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(NetRecord::read(dir.path()).unwrap(), None);
    let rec = NetRecord {
        netns: "/var/run/netns/x".into(),
        taps: vec!["husktap0".into()],
        veths: vec!["eth0".into()],
    };
    rec.write(dir.path()).unwrap();
    assert_eq!(NetRecord::read(dir.path()).unwrap(), Some(rec));
    teardown_blocking(dir.path()).unwrap();
    assert!(
        !dir.path().join(record::FILE).exists(),
        "a gone namespace is fine"
    );
}

#[tokio::test]
async fn no_namespace_means_no_nic_and_a_missing_one_fails_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let paths = SandboxPaths::new(dir.path(), "sb");
    assert_eq!(setup(None, &paths).await.unwrap(), PodNetwork::default());
    let missing = dir.path().join("netns/cni-missing");
    let e = setup(Some(&missing), &paths).await.unwrap_err();
    let shim = ShimError::from(e);
    assert!(shim.to_string().contains("cni-missing"), "{shim}");
    assert!(matches!(shim, ShimError::InvalidArgument(_)));
    assert!(!paths.root().exists(), "nothing is left behind");
}

fn sh(args: &[&str]) -> String {
    let out = std::process::Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// The real thing in a namespace of its own: run with `--ignored` as root (iproute2 needed).
#[tokio::test]
#[ignore = "needs root and iproute2: creates a network namespace"]
async fn a_real_namespace_is_plumbed_and_unplumbed() {
    let ns = format!("husk-unit-{}", std::process::id());
    let host = format!("hu{}", std::process::id() % 100_000);
    assert!(sh(&["ip", "netns", "add", &ns]).is_empty());
    sh(&[
        "ip", "link", "add", &host, "type", "veth", "peer", "name", "eth0", "netns", &ns,
    ]);
    sh(&["ip", "-n", &ns, "link", "set", "eth0", "mtu", "1400", "up"]);
    sh(&[
        "ip",
        "-n",
        &ns,
        "addr",
        "add",
        "10.99.0.2/24",
        "dev",
        "eth0",
    ]);
    sh(&[
        "ip",
        "-n",
        &ns,
        "route",
        "add",
        "default",
        "via",
        "10.99.0.1",
    ]);
    let dir = tempfile::tempdir().unwrap();
    let paths = SandboxPaths::new(dir.path(), "sb");
    let path = PathBuf::from("/run/netns").join(&ns);
    let net = setup(Some(&path), &paths).await;
    let links = sh(&["ip", "-n", &ns, "-d", "link"]);
    let filters = sh(&[
        "ip", "netns", "exec", &ns, "tc", "filter", "show", "dev", "eth0", "ingress",
    ]);
    let tap_filters = sh(&[
        "ip", "netns", "exec", &ns, "tc", "filter", "show", "dev", "husktap0", "ingress",
    ]);
    let down = teardown(paths.root()).await;
    let after = sh(&["ip", "-n", &ns, "link"]);
    let qdiscs = sh(&[
        "ip", "netns", "exec", &ns, "tc", "qdisc", "show", "dev", "eth0",
    ]);
    sh(&["ip", "netns", "del", &ns]);
    let net = net.unwrap();
    down.unwrap();
    assert_eq!(net.net[0].tap, "husktap0");
    assert_eq!(net.net[0].mtu, Some(1400));
    assert_eq!(net.interfaces[0].addresses, ["10.99.0.2/24"]);
    assert_eq!(net.routes.len(), 1, "{:?}", net.routes);
    assert_eq!(net.routes[0].gateway, "10.99.0.1");
    assert!(
        links.contains("husktap0") && links.contains("mtu 1400"),
        "{links}"
    );
    assert!(
        filters.contains("mirred") && filters.contains("husktap0"),
        "{filters}"
    );
    assert!(
        tap_filters.contains("mirred") && tap_filters.contains("eth0"),
        "{tap_filters}"
    );
    assert!(!after.contains("husktap0"), "{after}");
    assert!(!qdiscs.contains("ingress"), "{qdiscs}");
    assert!(!paths.root().join(record::FILE).exists());
}

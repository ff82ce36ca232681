//! The tc "redirect" plumbing between the pod's veth and its tap (Kata's tcfilter model): an
//! ingress qdisc on each, and on each a u32 filter matching everything (`match u32 0 0`, as
//! Kata does; `cls_u32` is built nearly everywhere, `cls_matchall` is not) whose mirred action
//! redirects every packet to the other's egress. What arrives on the veth leaves through the
//! tap (to the VM); what the VM sends into the tap leaves through the veth. Built as rtnetlink
//! messages (no `tc` binary).

use husk_rtnl::core::{NLM_F_CREATE, NLM_F_EXCL};
use husk_rtnl::route::tc::{
    TcAction, TcActionAttribute, TcActionMirrorOption, TcActionOption, TcActionType, TcAttribute,
    TcFilterU32Option, TcHandle, TcMessage, TcMirror, TcMirrorActionType, TcOption, TcU32Key,
    TcU32Selector, TcU32SelectorFlags,
};
use husk_rtnl::route::RouteNetlinkMessage;
use husk_rtnl::Netlink;

/// The ingress qdisc's handle, `ffff:`.
const INGRESS_HANDLE: TcHandle = TcHandle {
    major: 0xffff,
    minor: 0,
};
/// `ETH_P_ALL`, in network byte order as tcm_info carries it.
const ETH_P_ALL_BE: u16 = 0x0003u16.to_be();
/// The filter's priority.
const PRIO: u32 = 1;

fn qdisc(index: u32) -> TcMessage {
    let mut m = TcMessage::with_index(index as i32);
    m.header.handle = INGRESS_HANDLE;
    m.header.parent = TcHandle::INGRESS;
    m.attributes.push(TcAttribute::Kind("ingress".into()));
    m
}

/// `tc qdisc add dev <index> ingress`.
pub fn add_ingress_msg(index: u32) -> RouteNetlinkMessage {
    RouteNetlinkMessage::NewQueueDiscipline(qdisc(index))
}

/// `tc qdisc del dev <index> ingress` (its filters go with it).
pub fn del_ingress_msg(index: u32) -> RouteNetlinkMessage {
    RouteNetlinkMessage::DelQueueDiscipline(qdisc(index))
}

/// `tc filter add dev <from> parent ffff: prio 1 protocol all u32 match u32 0 0 action mirred
/// egress redirect dev <to>`.
pub fn redirect_msg(from: u32, to: u32) -> RouteNetlinkMessage {
    let mut m = TcMessage::with_index(from as i32);
    m.header.parent = INGRESS_HANDLE;
    m.header.info = (PRIO << 16) | u32::from(ETH_P_ALL_BE);
    let mut parms = TcMirror::default();
    parms.generic.action = TcActionType::Stolen;
    parms.eaction = TcMirrorActionType::EgressRedir;
    parms.ifindex = to;
    let mut action = TcAction::default();
    action.attributes = vec![
        TcActionAttribute::Kind("mirred".into()),
        TcActionAttribute::Options(vec![TcActionOption::Mirror(TcActionMirrorOption::Parms(
            parms,
        ))]),
    ];
    let mut sel = TcU32Selector::default();
    sel.flags = TcU32SelectorFlags::Terminal;
    sel.nkeys = 1;
    sel.keys = vec![TcU32Key::default()];
    m.attributes = vec![
        TcAttribute::Kind("u32".into()),
        TcAttribute::Options(vec![
            TcOption::U32(TcFilterU32Option::Selector(sel)),
            TcOption::U32(TcFilterU32Option::Action(vec![action])),
        ]),
    ];
    RouteNetlinkMessage::NewTrafficFilter(m)
}

/// Wires `veth` and `tap` (link indexes) to each other.
pub fn connect(nl: &mut dyn Netlink, veth: u32, tap: u32) -> std::io::Result<()> {
    for index in [veth, tap] {
        nl.request(add_ingress_msg(index), NLM_F_CREATE | NLM_F_EXCL)?;
    }
    nl.request(redirect_msg(veth, tap), NLM_F_CREATE | NLM_F_EXCL)?;
    nl.request(redirect_msg(tap, veth), NLM_F_CREATE | NLM_F_EXCL)
}

/// Removes the ingress qdisc (and so the redirect) from link `index`; none there is fine.
pub fn disconnect(nl: &mut dyn Netlink, index: u32) -> std::io::Result<()> {
    match nl.request(del_ingress_msg(index), 0) {
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::ENOENT) | Some(libc::EINVAL) | Some(libc::ENODEV)
            ) =>
        {
            Ok(())
        }
        other => other,
    }
}

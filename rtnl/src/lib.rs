//! husk-rtnl: a small synchronous rtnetlink client, one request at a time, answered by an ACK or
//! a dump. It crosses no process boundary, so it is not part of `husk-protocol`: it is a leaf
//! library (it depends on no husk crate) that the shim and the agent each link. The shim (pod taps and tc redirect in the pod's network namespace) and the
//! agent (guest addresses and routes) use it through the [`Netlink`] trait, so their logic can
//! be unit-tested against a fake without root.
//!
//! A socket belongs to the network namespace of the thread that opened it, and keeps talking to
//! that namespace whatever the thread does later.

use std::io;

pub use netlink_packet_core as core;
pub use netlink_packet_route as route;

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

/// Requests the shim and the agent send. Errors are `std::io::Error`s: the kernel's errno
/// (e.g. `ENOENT`, `EEXIST`), or `InvalidData` for an answer that does not parse.
pub trait Netlink {
    /// Sends `msg` with `NLM_F_REQUEST | NLM_F_ACK | flags` and waits for the ACK.
    fn request(&mut self, msg: RouteNetlinkMessage, flags: u16) -> io::Result<()>;
    /// Sends `msg` as a dump request and collects every answer until `NLMSG_DONE`.
    fn dump(&mut self, msg: RouteNetlinkMessage) -> io::Result<Vec<RouteNetlinkMessage>>;
}

/// An `AF_NETLINK`/`NETLINK_ROUTE` socket in the caller's network namespace.
#[derive(Debug)]
pub struct Rtnl {
    sock: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl Rtnl {
    /// Opens and binds the socket (in the calling thread's network namespace).
    pub fn open() -> io::Result<Rtnl> {
        let mut sock = Socket::new(NETLINK_ROUTE)?;
        sock.bind_auto()?;
        sock.connect(&SocketAddr::new(0, 0))?;
        Ok(Rtnl {
            sock,
            seq: 0,
            buf: vec![0; 64 * 1024],
        })
    }

    fn send(&mut self, msg: RouteNetlinkMessage, flags: u16) -> io::Result<u32> {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags;
        header.sequence_number = self.seq;
        let mut nl = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
        nl.finalize();
        let mut bytes = vec![0; nl.buffer_len()];
        nl.serialize(&mut bytes);
        self.sock.send(&bytes, 0)?;
        Ok(self.seq)
    }

    /// Reads answers to `seq`, handing each inner message to `each`, until the ACK/error
    /// (`ack`) or `NLMSG_DONE` (dump).
    fn receive(&mut self, seq: u32, mut each: impl FnMut(RouteNetlinkMessage)) -> io::Result<()> {
        loop {
            let n = self.sock.recv(&mut &mut self.buf[..], 0)?;
            let mut off = 0;
            while off < n {
                let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&self.buf[off..n])
                    .map_err(|e| {
                        io::Error::new(io::ErrorKind::InvalidData, format!("rtnetlink: {e}"))
                    })?;
                let len = msg.header.length as usize;
                if len == 0 {
                    break;
                }
                off += (len + 3) & !3;
                if msg.header.sequence_number != seq {
                    continue;
                }
                match msg.payload {
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            None => Ok(()),
                            Some(code) => Err(io::Error::from_raw_os_error(-code.get())),
                        };
                    }
                    NetlinkPayload::Done(_) => return Ok(()),
                    NetlinkPayload::InnerMessage(m) => each(m),
                    _ => {}
                }
            }
        }
    }
}

impl Netlink for Rtnl {
    fn request(&mut self, msg: RouteNetlinkMessage, flags: u16) -> io::Result<()> {
        let seq = self.send(msg, NLM_F_ACK | flags)?;
        self.receive(seq, |_| {})
    }

    fn dump(&mut self, msg: RouteNetlinkMessage) -> io::Result<Vec<RouteNetlinkMessage>> {
        let seq = self.send(msg, NLM_F_DUMP)?;
        let mut out = Vec::new();
        self.receive(seq, |m| out.push(m))?;
        Ok(out)
    }
}

/// Parses `aa:bb:cc:dd:ee:ff` (either case).
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in mac.iter_mut() {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// Formats a MAC as `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &[u8]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_round_trip_and_bad_ones_are_refused() {
        let m = parse_mac("02:AB:cd:00:11:ff").unwrap();
        assert_eq!(format_mac(&m), "02:ab:cd:00:11:ff");
        for bad in [
            "",
            "02:ab:cd:00:11",
            "02:ab:cd:00:11:ff:00",
            "0g:00:00:00:00:00",
            "2:00:00:00:00:000",
        ] {
            assert!(parse_mac(bad).is_none(), "{bad}");
        }
    }
}

//! The muxer: every vsock connection of one device, each tied to a Unix stream, behind one
//! epoll descriptor the device's worker polls.
//!
//! - Host-initiated: the VM's listening socket accepts a stream; its first line must be
//!   `CONNECT <port>\n` (read exactly, with a peek, so payload after it is not swallowed); the
//!   muxer allocates a host port in `[2^30, 2^31)` and sends REQUEST to the guest. The guest's
//!   RESPONSE makes the connection answer `OK <host port>\n`; its RST closes the stream.
//! - Guest-initiated: a REQUEST to host port P connects (without blocking) to `<socket>_<P>`
//!   if P is allowed; otherwise, or if nothing listens there, the guest gets RST.
//! - Packets for connections that do not exist get RST; packets that do not address this
//!   guest and the host are dropped.
//!
//! What the guest is owed waits as a key in a queue (each connection at most once, resets
//! without a connection up to a bound), so RX bookkeeping never grows past the connection
//! limit however the guest behaves.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::{self, Read};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::time::Instant;

use husk_protocol::hybrid;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use super::limits::{
    HANDSHAKE_TIMEOUT, MAX_CONNECTIONS, MAX_PENDING_HANDSHAKES, MAX_QUEUED_RESETS,
};
use super::{connect_nonblocking, peek, MuxerError};
use crate::devices::virtio::vsock::csm::connection::Connection;
use crate::devices::virtio::vsock::csm::{ConnState, CONN_BUF_ALLOC};
use crate::devices::virtio::vsock::defs::{op, HOST_CID, TYPE_STREAM};
use crate::devices::virtio::vsock::packet::{check_tx_header, HeaderError, VsockHeader};
use crate::devices::virtio::vsock::VsockBackend;

/// First host port for host-initiated connections.
const LOCAL_PORT_FIRST: u32 = 1 << 30;
/// One past the last.
const LOCAL_PORT_END: u32 = 1 << 31;
/// Where a restored VM's muxer starts: half way up the range. The guest of a template may
/// still hold sockets of its template's connections (host ports from [`LOCAL_PORT_FIRST`] up)
/// after the transport reset: Linux marks them reset but keeps them in its table of connected
/// sockets until the agent closes them, and answers a new connection request with the same
/// port pair with a reset. A fresh muxer counting from the same first port would have its
/// first connection (the shim's Check) refused that way.
const RESTORED_PORT_FIRST: u32 = LOCAL_PORT_FIRST + (LOCAL_PORT_END - LOCAL_PORT_FIRST) / 2;

/// Where a muxer's host port allocation starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortStart {
    /// A booted VM's: the start of the range.
    Boot,
    /// A restored VM's: clear of the ports its template's guest may still hold.
    Restored,
}

impl PortStart {
    fn first(self) -> u32 {
        match self {
            PortStart::Boot => LOCAL_PORT_FIRST,
            PortStart::Restored => RESTORED_PORT_FIRST,
        }
    }
}

/// A connection's identity: host port and guest port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnKey {
    /// The host side's port.
    pub local_port: u32,
    /// The guest side's port.
    pub peer_port: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FdKind {
    Listener,
    Handshake,
    Conn(ConnKey),
}

#[derive(Debug)]
struct FdEntry {
    kind: FdKind,
    /// What is registered with epoll; `None` once removed from it.
    interest: Option<EventSet>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RxItem {
    Conn(ConnKey),
    Reset(ConnKey),
}

/// The backend of one vsock device.
#[derive(Debug)]
pub struct Muxer {
    guest_cid: u64,
    socket: PathBuf,
    allowed: HashSet<u32>,
    listener: UnixListener,
    epoll: Epoll,
    conns: HashMap<ConnKey, Connection<UnixStream>>,
    fds: HashMap<RawFd, FdEntry>,
    handshakes: HashMap<RawFd, (UnixStream, Instant)>,
    rxq: VecDeque<RxItem>,
    queued: HashSet<ConnKey>,
    resets_queued: usize,
    next_local_port: u32,
}

impl Muxer {
    /// A muxer serving `listener` (the VM's socket at `socket`) for guest `guest_cid`,
    /// numbering host-initiated connections from `ports`.
    pub fn new(
        listener: UnixListener,
        socket: PathBuf,
        guest_cid: u64,
        allowed_guest_ports: &[u32],
        ports: PortStart,
    ) -> io::Result<Self> {
        listener.set_nonblocking(true)?;
        let mut m = Muxer {
            guest_cid,
            socket,
            allowed: allowed_guest_ports.iter().copied().collect(),
            listener,
            epoll: Epoll::new()?,
            conns: HashMap::new(),
            fds: HashMap::new(),
            handshakes: HashMap::new(),
            rxq: VecDeque::new(),
            queued: HashSet::new(),
            resets_queued: 0,
            next_local_port: ports.first(),
        };
        let fd = m.listener.as_raw_fd();
        m.register(fd, FdKind::Listener, EventSet::IN)?;
        Ok(m)
    }

    /// The descriptor to poll: readable when [`Muxer::process_events`] has work.
    pub fn epoll_fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }

    /// Number of live connections.
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// The state of the connection `key`, if it exists.
    pub fn state_of(&self, key: ConnKey) -> Option<ConnState> {
        self.conns.get(&key).map(|c| c.state())
    }

    /// What the muxer holds, for diagnosis: a summary line, then one line per connection
    /// (see [`Connection::describe`]), in host-port order.
    pub fn describe(&self) -> Vec<String> {
        let mut lines = vec![format!(
            "{} connections, {} host handshakes pending, {} packets owed to the guest waiting \
             for RX buffers ({} of them resets)",
            self.conns.len(),
            self.handshakes.len(),
            self.rxq.len(),
            self.resets_queued
        )];
        let mut keys: Vec<&ConnKey> = self.conns.keys().collect();
        keys.sort_by_key(|k| (k.local_port, k.peer_port));
        for key in keys {
            let queued = if self.queued.contains(key) {
                " (waits for an RX buffer)"
            } else {
                ""
            };
            lines.push(format!(
                "connection host port {} guest port {}{queued}: {}",
                key.local_port,
                key.peer_port,
                self.conns[key].describe()
            ));
        }
        lines
    }

    fn register(&mut self, fd: RawFd, kind: FdKind, events: EventSet) -> io::Result<()> {
        self.epoll.ctl(
            ControlOperation::Add,
            fd,
            EpollEvent::new(events, fd as u64),
        )?;
        self.fds.insert(
            fd,
            FdEntry {
                kind,
                interest: Some(events),
            },
        );
        Ok(())
    }

    fn forget(&mut self, fd: RawFd) {
        if let Some(entry) = self.fds.remove(&fd) {
            if entry.interest.is_some() {
                let _ = self
                    .epoll
                    .ctl(ControlOperation::Delete, fd, EpollEvent::default());
            }
        }
    }

    /// Handles whatever is ready on the muxer's descriptors (never blocks).
    pub fn process_events(&mut self) {
        let mut events = [EpollEvent::default(); 32];
        loop {
            let n = match self.epoll.wait(0, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return,
            };
            for ev in &events[..n] {
                let fd = ev.data() as RawFd;
                match self.fds.get(&fd).map(|e| e.kind) {
                    Some(FdKind::Listener) => self.accept(),
                    Some(FdKind::Handshake) => self.handshake(fd),
                    Some(FdKind::Conn(key)) => {
                        if let Some(c) = self.conns.get_mut(&key) {
                            c.notify(ev.event_set());
                        }
                        self.update(key);
                    }
                    None => {}
                }
            }
            if n < events.len() {
                return;
            }
        }
    }

    fn accept(&mut self) {
        loop {
            let stream = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return,
            };
            if self.handshakes.len() >= MAX_PENDING_HANDSHAKES
                || stream.set_nonblocking(true).is_err()
            {
                crate::guest_warn!(
                    "vsock: host connection dropped: {MAX_PENDING_HANDSHAKES} handshakes already pending"
                );
                continue;
            }
            let fd = stream.as_raw_fd();
            if self.register(fd, FdKind::Handshake, EventSet::IN).is_ok() {
                self.handshakes.insert(fd, (stream, Instant::now()));
            }
        }
    }

    fn drop_handshake(&mut self, fd: RawFd) {
        self.forget(fd);
        self.handshakes.remove(&fd);
    }

    /// Reads a host connection's `CONNECT <port>\n` line, exactly.
    fn handshake(&mut self, fd: RawFd) {
        let Some((stream, _)) = self.handshakes.get(&fd) else {
            return;
        };
        let mut buf = [0u8; hybrid::MAX_LINE];
        let n = match peek(stream, &mut buf) {
            Ok(0) => return self.drop_handshake(fd),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(_) => return self.drop_handshake(fd),
        };
        let end = match hybrid::line_end(&buf[..n]) {
            Ok(Some(end)) => end,
            Ok(None) => return,
            Err(e) => {
                crate::guest_warn!("vsock: host connection dropped: {e}");
                return self.drop_handshake(fd);
            }
        };
        let Some((mut stream, _)) = self.handshakes.remove(&fd) else {
            return;
        };
        self.forget(fd);
        let mut line = vec![0u8; end];
        if stream.read_exact(&mut line).is_err() {
            return;
        }
        let port = match hybrid::parse_connect(&line) {
            Ok(p) => p,
            Err(e) => {
                crate::guest_warn!("vsock: host connection dropped: {e}");
                return;
            }
        };
        if self.conns.len() >= MAX_CONNECTIONS {
            crate::guest_warn!(
                "vsock: host connection to guest port {port} dropped: {MAX_CONNECTIONS} connections open"
            );
            return;
        }
        let Some(local_port) = self.allocate_local_port() else {
            return;
        };
        let key = ConnKey {
            local_port,
            peer_port: port,
        };
        let conn = Connection::new_local(stream, self.guest_cid, local_port, port);
        self.insert(key, conn);
    }

    fn allocate_local_port(&mut self) -> Option<u32> {
        let in_use: HashSet<u32> = self.conns.keys().map(|k| k.local_port).collect();
        for _ in 0..=MAX_CONNECTIONS {
            let p = self.next_local_port;
            self.next_local_port = if p + 1 >= LOCAL_PORT_END {
                LOCAL_PORT_FIRST
            } else {
                p + 1
            };
            if !in_use.contains(&p) {
                return Some(p);
            }
        }
        None
    }

    fn insert(&mut self, key: ConnKey, conn: Connection<UnixStream>) {
        let fd = conn.stream().as_raw_fd();
        let interest = conn.interest();
        if self.register(fd, FdKind::Conn(key), interest).is_err() {
            return;
        }
        self.conns.insert(key, conn);
        self.update(key);
    }

    /// After anything touched connection `key`: report why it was reset (if nobody has), queue
    /// it for RX, fix its epoll interest, or drop it once it is over.
    fn update(&mut self, key: ConnKey) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        if let Some(why) = conn.take_reset() {
            crate::guest_warn!(
                "vsock connection (host port {}, guest port {}): {why}",
                key.local_port,
                key.peer_port
            );
        }
        let fd = conn.stream().as_raw_fd();
        if conn.is_killed() && !conn.has_pending_rx() {
            self.forget(fd);
            self.conns.remove(&key);
            return;
        }
        if conn.has_pending_rx() && self.queued.insert(key) {
            self.rxq.push_back(RxItem::Conn(key));
        }
        let want = conn.interest();
        // HUP and ERR are reported whatever the interest: stop polling streams that are done.
        let pollable = conn.wants_events();
        let Some(entry) = self.fds.get_mut(&fd) else {
            return;
        };
        let modify = EpollEvent::new(want, fd as u64);
        match (entry.interest, pollable) {
            (Some(have), true)
                if have != want && self.epoll.ctl(ControlOperation::Modify, fd, modify).is_ok() =>
            {
                entry.interest = Some(want);
            }
            (Some(_), false) => {
                let _ = self
                    .epoll
                    .ctl(ControlOperation::Delete, fd, EpollEvent::default());
                entry.interest = None;
            }
            _ => {}
        }
    }

    fn queue_reset(&mut self, key: ConnKey) -> Result<(), MuxerError> {
        if self.resets_queued >= MAX_QUEUED_RESETS {
            return Err(MuxerError::ResetQueueFull);
        }
        self.resets_queued += 1;
        self.rxq.push_back(RxItem::Reset(key));
        Ok(())
    }

    fn guest_request(&mut self, hdr: &VsockHeader) -> Result<(), MuxerError> {
        let key = ConnKey {
            local_port: hdr.dst_port,
            peer_port: hdr.src_port,
        };
        let port = hdr.dst_port;
        if !self.allowed.contains(&port) {
            self.queue_reset(key)?;
            return Err(MuxerError::PortNotAllowed(port));
        }
        if self.conns.len() >= MAX_CONNECTIONS {
            self.queue_reset(key)?;
            return Err(MuxerError::TooManyConnections(port));
        }
        let mut path = self.socket.clone().into_os_string();
        path.push(format!("_{port}"));
        let path = PathBuf::from(path);
        match connect_nonblocking(&path) {
            Ok(stream) => {
                self.insert(key, Connection::new_peer(stream, hdr));
                Ok(())
            }
            Err(e) => {
                self.queue_reset(key)?;
                Err(MuxerError::ConnectFailed {
                    port,
                    path: path.display().to_string(),
                    error: e.kind(),
                })
            }
        }
    }

    /// Earliest deadline of a connection or handshake.
    pub fn next_deadline(&self) -> Option<Instant> {
        let conns = self.conns.values().filter_map(|c| c.expiry());
        let shakes = self
            .handshakes
            .values()
            .map(|(_, t)| *t + HANDSHAKE_TIMEOUT);
        conns.chain(shakes).min()
    }

    /// Resets connections and drops handshakes whose deadline passed.
    pub fn on_timeout(&mut self, now: Instant) {
        let keys: Vec<ConnKey> = self.conns.keys().copied().collect();
        for key in keys {
            if let Some(c) = self.conns.get_mut(&key) {
                c.on_timeout(now);
            }
            self.update(key);
        }
        let late: Vec<RawFd> = self
            .handshakes
            .iter()
            .filter(|(_, (_, t))| *t + HANDSHAKE_TIMEOUT <= now)
            .map(|(fd, _)| *fd)
            .collect();
        for fd in late {
            crate::guest_warn!(
                "vsock: host connection dropped: no CONNECT line within {HANDSHAKE_TIMEOUT:?}"
            );
            self.drop_handshake(fd);
        }
    }

    fn reset_header(&self, key: ConnKey) -> VsockHeader {
        VsockHeader {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: key.local_port,
            dst_port: key.peer_port,
            len: 0,
            type_: TYPE_STREAM,
            op: op::RST,
            flags: 0,
            buf_alloc: CONN_BUF_ALLOC,
            fwd_cnt: 0,
        }
    }
}

impl VsockBackend for Muxer {
    fn send_pkt(&mut self, hdr: &VsockHeader, data: &[u8]) -> Result<(), MuxerError> {
        let key = ConnKey {
            local_port: hdr.dst_port,
            peer_port: hdr.src_port,
        };
        if let Err(why) = check_tx_header(hdr, self.guest_cid) {
            return match why {
                HeaderError::SrcCid(_) | HeaderError::DstCid(_) => {
                    Err(MuxerError::Misaddressed(why))
                }
                _ => {
                    // Whatever the guest meant, the connection (if any) is over.
                    if let Some(c) = self.conns.remove(&key) {
                        self.forget(c.stream().as_raw_fd());
                        self.queued.remove(&key);
                    }
                    if hdr.op != op::RST {
                        self.queue_reset(key)?;
                    }
                    Err(MuxerError::BadHeader {
                        src_port: hdr.src_port,
                        dst_port: hdr.dst_port,
                        why,
                    })
                }
            };
        }
        if let Some(conn) = self.conns.get_mut(&key) {
            let result = conn.send_pkt(hdr, data);
            self.update(key);
            return result.map_err(|source| MuxerError::Conn {
                local_port: key.local_port,
                peer_port: key.peer_port,
                source,
            });
        }
        match hdr.op {
            op::REQUEST => self.guest_request(hdr),
            op::RST => Ok(()),
            other => {
                self.queue_reset(key)?;
                Err(MuxerError::NoConnection {
                    op: other,
                    local_port: key.local_port,
                    peer_port: key.peer_port,
                })
            }
        }
    }

    fn recv_pkt(&mut self, buf: &mut [u8]) -> Option<VsockHeader> {
        while let Some(item) = self.rxq.pop_front() {
            match item {
                RxItem::Reset(key) => {
                    self.resets_queued -= 1;
                    return Some(self.reset_header(key));
                }
                RxItem::Conn(key) => {
                    self.queued.remove(&key);
                    let pkt = self.conns.get_mut(&key).and_then(|c| c.recv_pkt(buf));
                    self.update(key);
                    if pkt.is_some() {
                        return pkt;
                    }
                }
            }
        }
        None
    }

    fn has_pending_rx(&self) -> bool {
        !self.rxq.is_empty()
    }
}

#[cfg(test)]
mod tests;

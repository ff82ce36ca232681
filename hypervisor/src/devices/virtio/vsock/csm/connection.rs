//! One connection: its state, its credit accounting and the bytes in flight.
//!
//! Flow control (virtio 1.2 section 5.10.6.3): every packet carries the sender's receive
//! buffer size (`buf_alloc`) and how many bytes it has consumed (`fwd_cnt`). The device may send
//! the guest at most `peer_buf_alloc - (rx_cnt - peer_fwd_cnt)` bytes, and advertises its own
//! [`CONN_BUF_ALLOC`]: guest data the host stream cannot take at once waits in a [`TxBuf`] of
//! exactly that size. A guest that sends more than its credit allows is reset, before a byte of
//! the excess is queued. Nothing here grows without bound.
//!
//! What the device owes the guest (REQUEST, RESPONSE, RW, SHUTDOWN, CREDIT_UPDATE, RST) is a
//! set of pending flags, not a queue, so a guest that stops taking RX buffers cannot make a
//! connection accumulate packets.
//!
//! Every reset that is not an orderly close says why: [`Connection::send_pkt`] returns the
//! guest's fault, and [`Connection::take_reset`] hands out the rest once (a timeout, a host
//! stream error, the guest resetting a connection that was still open), so a broken stream
//! always leaves a line in the VMM's log naming the side that ended it.

use std::io::{self, Read, Write};
use std::num::Wrapping;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::time::Instant;

use vmm_sys_util::epoll::EventSet;

use super::txbuf::TxBuf;
use super::{
    timeout_in, BadTransition, ConnEvent, ConnState, CLOSE_TIMEOUT, CONN_BUF_ALLOC,
    CREDIT_UPDATE_THRESHOLD, REQUEST_TIMEOUT,
};
use crate::devices::virtio::vsock::defs::{op, HOST_CID, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM};
use crate::devices::virtio::vsock::packet::VsockHeader;

/// The host side of a connection.
pub trait ConnStream: Read + Write + AsRawFd + Send {
    /// Shuts the write direction (the guest will send no more).
    fn shutdown_write(&self) -> io::Result<()>;
}

impl ConnStream for UnixStream {
    fn shutdown_write(&self) -> io::Result<()> {
        self.shutdown(std::net::Shutdown::Write)
    }
}

const P_RST: u8 = 1;
const P_REQUEST: u8 = 2;
const P_RESPONSE: u8 = 4;
const P_RW: u8 = 8;
const P_SHUTDOWN: u8 = 16;
const P_CREDIT_UPDATE: u8 = 32;
const P_CREDIT_REQUEST: u8 = 64;

/// What went wrong on a connection; it is reset in every case.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnError {
    /// The guest sent more than its credit.
    #[error("guest sent {len} bytes with {free} bytes of credit left (it ignores flow control); connection reset")]
    CreditViolation {
        /// Payload bytes sent.
        len: usize,
        /// Credit it had.
        free: usize,
    },
    /// An operation the state does not allow.
    #[error("guest sent operation {op} in state {state}; connection reset")]
    Protocol {
        /// The operation.
        op: u16,
        /// The connection's state.
        state: ConnState,
    },
    /// The host stream failed.
    #[error("host stream: {0}; connection reset")]
    Io(io::ErrorKind),
    /// The host stream reported an error condition (EPOLLERR).
    #[error("host stream reported an error; connection reset")]
    StreamError,
    /// The host stream hung up before the connection was set up.
    #[error("host stream closed in state {0} before the guest answered; connection reset")]
    HungUp(ConnState),
    /// The guest did not answer in time (REQUEST, or RST after our SHUTDOWN).
    #[error("guest did not answer within {limit:?} in state {0}; connection reset", limit = timeout_in(*.0))]
    Timeout(ConnState),
    /// The guest reset a connection that was still open both ways (a Linux guest does this
    /// when its receive queue overflows, or when it closes a socket without shutting it down).
    #[error("guest reset the connection in state {0}")]
    PeerReset(ConnState),
}

/// A connection between guest port `peer_port` and the host stream `S`.
#[derive(Debug)]
pub struct Connection<S> {
    stream: S,
    state: ConnState,
    peer_cid: u64,
    local_port: u32,
    peer_port: u32,
    pending: u8,
    shutdown_flags: u32,
    /// The host stream hit end-of-file: SHUTDOWN(SEND) is owed or sent.
    local_eof: bool,
    /// The host stream hung up: read what is left, then close.
    hup: bool,
    write_shut: bool,
    tx_buf: TxBuf,
    fwd_cnt: Wrapping<u32>,
    last_fwd_cnt_sent: Wrapping<u32>,
    peer_buf_alloc: u32,
    peer_fwd_cnt: Wrapping<u32>,
    rx_cnt: Wrapping<u32>,
    expiry: Option<Instant>,
    /// Why the connection was reset, if [`Connection::send_pkt`] did not already say so.
    reset: Option<ConnError>,
}

impl<S: ConnStream> Connection<S> {
    fn new(stream: S, state: ConnState, peer_cid: u64, local_port: u32, peer_port: u32) -> Self {
        Connection {
            stream,
            state,
            peer_cid,
            local_port,
            peer_port,
            pending: 0,
            shutdown_flags: 0,
            local_eof: false,
            hup: false,
            write_shut: false,
            tx_buf: TxBuf::new(CONN_BUF_ALLOC as usize),
            fwd_cnt: Wrapping(0),
            last_fwd_cnt_sent: Wrapping(0),
            peer_buf_alloc: 0,
            peer_fwd_cnt: Wrapping(0),
            rx_cnt: Wrapping(0),
            expiry: None,
            reset: None,
        }
    }

    /// A host-initiated connection to guest port `peer_port`: REQUEST is owed to the guest,
    /// which has [`REQUEST_TIMEOUT`] to answer.
    pub fn new_local(stream: S, peer_cid: u64, local_port: u32, peer_port: u32) -> Self {
        let mut c = Self::new(
            stream,
            ConnState::LocalInit,
            peer_cid,
            local_port,
            peer_port,
        );
        c.pending = P_REQUEST;
        c.expiry = Some(Instant::now() + REQUEST_TIMEOUT);
        c
    }

    /// A guest-initiated connection (the guest's REQUEST `hdr`) whose host stream is
    /// connected: RESPONSE is owed to the guest.
    pub fn new_peer(stream: S, hdr: &VsockHeader) -> Self {
        let mut c = Self::new(
            stream,
            ConnState::PeerInit,
            hdr.src_cid,
            hdr.dst_port,
            hdr.src_port,
        );
        c.peer_buf_alloc = hdr.buf_alloc;
        c.peer_fwd_cnt = Wrapping(hdr.fwd_cnt);
        c.pending = P_RESPONSE;
        c
    }

    /// The state.
    pub fn state(&self) -> ConnState {
        self.state
    }

    /// The host stream.
    pub fn stream(&self) -> &S {
        &self.stream
    }

    /// Whether the connection owes the guest a packet.
    pub fn has_pending_rx(&self) -> bool {
        self.pending != 0
    }

    /// Whether the host stream still needs polling: not once it hung up (HUP would be
    /// reported forever), nor once the connection is over or only owes the guest its RST
    /// (an errored or closed stream would be reported forever too).
    pub fn wants_events(&self) -> bool {
        !self.is_killed() && !self.hup && self.pending & P_RST == 0
    }

    /// Whether the connection is over and can be dropped.
    pub fn is_killed(&self) -> bool {
        self.state == ConnState::Killed
    }

    /// When the connection times out, if it waits for the guest.
    pub fn expiry(&self) -> Option<Instant> {
        self.expiry
    }

    /// Bytes the guest can still take.
    pub fn peer_credit(&self) -> u32 {
        let in_flight = (self.rx_cnt - self.peer_fwd_cnt).0;
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// Bytes queued for the host stream.
    pub fn queued(&self) -> usize {
        self.tx_buf.len()
    }

    /// Why the connection was reset, once, unless [`Connection::send_pkt`] returned it (an
    /// orderly close has no reason).
    pub fn take_reset(&mut self) -> Option<ConnError> {
        self.reset.take()
    }

    /// The readiness the connection wants from its host stream (empty: deregister it).
    pub fn interest(&self) -> EventSet {
        let mut set = EventSet::empty();
        if self.is_killed() || self.hup {
            return set;
        }
        if self.wants_read() && self.pending & P_RW == 0 && self.peer_credit() > 0 {
            set |= EventSet::IN;
        }
        if !self.tx_buf.is_empty() {
            set |= EventSet::OUT;
        }
        set
    }

    fn wants_read(&self) -> bool {
        self.state.guest_receives() && !self.local_eof && self.pending & P_RST == 0
    }

    /// Resets the connection: RST is the next (and last) packet.
    fn kill(&mut self) {
        if !self.is_killed() {
            self.pending = P_RST;
            self.expiry = None;
        }
    }

    /// Resets the connection for `why`, which nobody has reported yet.
    fn kill_for(&mut self, why: ConnError) {
        if !self.is_killed() && self.pending & P_RST == 0 {
            self.reset = Some(why);
        }
        self.kill();
    }

    fn guest_event(&mut self, event: ConnEvent, op: u16) -> Result<(), ConnError> {
        match self.state.on(event) {
            Ok(s) => {
                self.state = s;
                Ok(())
            }
            Err(BadTransition { from, .. }) => {
                self.kill();
                Err(ConnError::Protocol { op, state: from })
            }
        }
    }

    fn io_error(&mut self, e: &io::Error) -> ConnError {
        self.kill();
        ConnError::Io(e.kind())
    }

    /// Takes a packet from the guest (its header fields already checked by the muxer).
    pub fn send_pkt(&mut self, hdr: &VsockHeader, data: &[u8]) -> Result<(), ConnError> {
        if self.is_killed() || self.pending & P_RST != 0 {
            // Reset already decided; a crossing RST from the guest ends it quietly.
            if hdr.op == op::RST {
                self.pending = 0;
                self.state = ConnState::Killed;
            }
            return Ok(());
        }
        self.peer_buf_alloc = hdr.buf_alloc;
        self.peer_fwd_cnt = Wrapping(hdr.fwd_cnt);
        match hdr.op {
            op::RST => {
                if self.state == ConnState::Established {
                    self.reset = Some(ConnError::PeerReset(self.state));
                }
                self.pending = 0;
                self.expiry = None;
                self.state = ConnState::Killed;
            }
            op::RESPONSE => {
                self.guest_event(ConnEvent::PeerResponse, hdr.op)?;
                self.expiry = None;
                let line = husk_protocol::hybrid::ok_line(self.local_port);
                // The first bytes on a fresh stream: the socket buffer takes them whole.
                match self.stream.write(line.as_bytes()) {
                    Ok(n) if n == line.len() => {}
                    Ok(_) => return Err(self.io_error(&io::ErrorKind::WriteZero.into())),
                    Err(e) => return Err(self.io_error(&e)),
                }
            }
            op::SHUTDOWN => {
                let rcv = hdr.flags & SHUTDOWN_RCV != 0;
                let send = hdr.flags & SHUTDOWN_SEND != 0;
                self.guest_event(ConnEvent::PeerShutdown { rcv, send }, hdr.op)?;
                self.after_guest_shutdown();
            }
            op::RW => {
                if !self.state.guest_sends() {
                    let state = self.state;
                    self.kill();
                    return Err(ConnError::Protocol { op: hdr.op, state });
                }
                let free = self.tx_buf.free();
                if data.len() > free {
                    self.kill();
                    return Err(ConnError::CreditViolation {
                        len: data.len(),
                        free,
                    });
                }
                self.forward(data)?;
            }
            op::CREDIT_UPDATE => {}
            op::CREDIT_REQUEST => self.pending |= P_CREDIT_UPDATE,
            other => {
                let state = self.state;
                self.kill();
                return Err(ConnError::Protocol { op: other, state });
            }
        }
        // New credit may let a hung-up stream's remaining bytes go.
        if self.hup && self.wants_read() && self.peer_credit() > 0 {
            self.pending |= P_RW;
        }
        Ok(())
    }

    fn after_guest_shutdown(&mut self) {
        if let ConnState::PeerClosed { rcv, send } = self.state {
            if send && self.tx_buf.is_empty() && !self.write_shut {
                self.write_shut = true;
                let _ = self.stream.shutdown_write();
            }
            if rcv && send && self.tx_buf.is_empty() {
                // Both directions are done and everything was delivered: finish with RST.
                self.kill();
            }
        }
    }

    fn forward(&mut self, data: &[u8]) -> Result<(), ConnError> {
        let mut written = 0;
        if self.tx_buf.is_empty() {
            while written < data.len() {
                match self.stream.write(&data[written..]) {
                    Ok(0) => break,
                    Ok(n) => written += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(self.io_error(&e)),
                }
            }
        }
        if written < data.len() {
            // Checked against free space by the caller.
            let _ = self.tx_buf.push(&data[written..]);
        }
        self.forwarded(written);
        Ok(())
    }

    fn forwarded(&mut self, n: usize) {
        self.fwd_cnt += Wrapping(n as u32);
        // Linux sends within min(our buf_alloc, its own) and never asks for credit: with a
        // window below the threshold, an update must come after half of it, or the guest
        // waits forever with everything forwarded.
        let window = CONN_BUF_ALLOC.min(self.peer_buf_alloc).max(2);
        let threshold = CREDIT_UPDATE_THRESHOLD.min(window / 2);
        if (self.fwd_cnt - self.last_fwd_cnt_sent).0 >= threshold {
            self.pending |= P_CREDIT_UPDATE;
        }
    }

    fn header(&mut self, op_: u16) -> VsockHeader {
        // Every packet carries the current credit, so a separate update is no longer owed.
        self.last_fwd_cnt_sent = self.fwd_cnt;
        self.pending &= !P_CREDIT_UPDATE;
        VsockHeader {
            src_cid: HOST_CID,
            dst_cid: self.peer_cid,
            src_port: self.local_port,
            dst_port: self.peer_port,
            len: 0,
            type_: TYPE_STREAM,
            op: op_,
            flags: 0,
            buf_alloc: CONN_BUF_ALLOC,
            fwd_cnt: self.fwd_cnt.0,
        }
    }

    /// The next packet the connection owes the guest, with its payload (if any) in `buf`.
    pub fn recv_pkt(&mut self, buf: &mut [u8]) -> Option<VsockHeader> {
        if self.pending & P_RST != 0 {
            self.pending = 0;
            self.state = ConnState::Killed;
            return Some(self.header(op::RST));
        }
        if self.pending & P_REQUEST != 0 {
            self.pending &= !P_REQUEST;
            // The guest's time to answer starts when it has the REQUEST, not while the
            // REQUEST waited for a receive buffer.
            self.expiry = Some(Instant::now() + REQUEST_TIMEOUT);
            return Some(self.header(op::REQUEST));
        }
        if self.pending & P_RESPONSE != 0 {
            self.pending &= !P_RESPONSE;
            if let Ok(s) = self.state.on(ConnEvent::ResponseSent) {
                self.state = s;
            }
            return Some(self.header(op::RESPONSE));
        }
        if self.pending & P_RW != 0 {
            self.pending &= !P_RW;
            if let Some(hdr) = self.read_data(buf) {
                return Some(hdr);
            }
        }
        if self.pending & P_SHUTDOWN != 0 {
            self.pending &= !P_SHUTDOWN;
            // Likewise, its time to send RST starts when it has the SHUTDOWN.
            self.expiry = Some(Instant::now() + CLOSE_TIMEOUT);
            let mut h = self.header(op::SHUTDOWN);
            h.flags = self.shutdown_flags;
            return Some(h);
        }
        if self.pending & P_CREDIT_UPDATE != 0 {
            return Some(self.header(op::CREDIT_UPDATE));
        }
        if self.pending & P_CREDIT_REQUEST != 0 {
            self.pending &= !P_CREDIT_REQUEST;
            return Some(self.header(op::CREDIT_REQUEST));
        }
        None
    }

    fn read_data(&mut self, buf: &mut [u8]) -> Option<VsockHeader> {
        if !self.wants_read() {
            return None;
        }
        let credit = self.peer_credit() as usize;
        if credit == 0 {
            self.pending |= P_CREDIT_REQUEST;
            return None;
        }
        let max = buf.len().min(credit);
        if max == 0 {
            return None;
        }
        loop {
            return match self.stream.read(&mut buf[..max]) {
                Ok(0) => Some(self.local_end()),
                Ok(n) => {
                    self.rx_cnt += Wrapping(n as u32);
                    if n == max || self.hup {
                        // Probably more to come (or a hung-up stream to drain): ask again.
                        self.pending |= P_RW;
                    }
                    let mut h = self.header(op::RW);
                    h.len = n as u32;
                    Some(h)
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.kill_for(ConnError::Io(e.kind()));
                    self.pending = 0;
                    self.state = ConnState::Killed;
                    Some(self.header(op::RST))
                }
            };
        }
    }

    /// The host stream reached end-of-file: a half close (the host still reads) or, after a
    /// hang-up, a full one.
    fn local_end(&mut self) -> VsockHeader {
        self.local_eof = true;
        let mut h = if self.hup {
            match self.state.on(ConnEvent::LocalClosed) {
                Ok(s) => {
                    self.state = s;
                    self.expiry = Some(Instant::now() + CLOSE_TIMEOUT);
                    let mut h = self.header(op::SHUTDOWN);
                    h.flags = SHUTDOWN_RCV | SHUTDOWN_SEND;
                    h
                }
                Err(_) => {
                    self.kill_for(ConnError::HungUp(self.state));
                    self.pending = 0;
                    self.state = ConnState::Killed;
                    self.header(op::RST)
                }
            }
        } else {
            let mut h = self.header(op::SHUTDOWN);
            h.flags = SHUTDOWN_SEND;
            h
        };
        h.len = 0;
        h
    }

    /// Reacts to readiness of the host stream.
    pub fn notify(&mut self, events: EventSet) {
        if self.is_killed() || self.pending & P_RST != 0 {
            return;
        }
        if events.intersects(EventSet::ERROR) {
            self.kill_for(ConnError::StreamError);
            return;
        }
        if events.intersects(EventSet::HANG_UP) && !self.hup {
            self.hup = true;
            match self.state {
                ConnState::LocalInit | ConnState::PeerInit => {
                    self.kill_for(ConnError::HungUp(self.state));
                    return;
                }
                _ if self.local_eof => {
                    // Already half-closed: the stream is gone entirely now.
                    if let Ok(s) = self.state.on(ConnEvent::LocalClosed) {
                        self.state = s;
                        self.expiry = Some(Instant::now() + CLOSE_TIMEOUT);
                        self.shutdown_flags = SHUTDOWN_RCV | SHUTDOWN_SEND;
                        self.pending |= P_SHUTDOWN;
                    }
                    return;
                }
                _ if self.wants_read() => self.pending |= P_RW,
                _ => {
                    if let Ok(s) = self.state.on(ConnEvent::LocalClosed) {
                        self.state = s;
                        self.expiry = Some(Instant::now() + CLOSE_TIMEOUT);
                        self.shutdown_flags = SHUTDOWN_RCV | SHUTDOWN_SEND;
                        self.pending |= P_SHUTDOWN;
                    }
                }
            }
        }
        if events.contains(EventSet::IN) && self.wants_read() {
            if self.peer_credit() > 0 {
                self.pending |= P_RW;
            } else {
                self.pending |= P_CREDIT_REQUEST;
            }
        }
        if events.contains(EventSet::OUT) && !self.tx_buf.is_empty() {
            match self.tx_buf.flush_to(&mut self.stream) {
                Ok(n) => self.forwarded(n),
                Err(e) => {
                    self.kill_for(ConnError::Io(e.kind()));
                    return;
                }
            }
            if self.tx_buf.is_empty() {
                self.after_guest_shutdown();
            }
        }
    }

    /// Resets the connection if its deadline passed.
    pub fn on_timeout(&mut self, now: Instant) {
        if self.expiry.is_some_and(|t| t <= now) {
            self.kill_for(ConnError::Timeout(self.state));
        }
    }
}

mod describe;
#[cfg(test)]
mod tests;

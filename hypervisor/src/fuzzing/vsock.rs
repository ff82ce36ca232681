//! `vsock_packet`: TX and RX chains through [`VsockQueues`] with a scripted backend; and
//! `vsock_connection`: one [`Connection`] over an in-memory host stream, driven by a sequence
//! of guest packets and host-side events.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use vmm_sys_util::epoll::EventSet;

use super::{memory, queue, Input, NullInterrupt, QUEUE_BASE, QUEUE_SPAN};
use crate::devices::virtio::vsock::csm::connection::{ConnStream, Connection};
use crate::devices::virtio::vsock::csm::CONN_BUF_ALLOC;
use crate::devices::virtio::vsock::defs::{op, MAX_PKT_PAYLOAD};
use crate::devices::virtio::vsock::handler::VsockQueues;
use crate::devices::virtio::vsock::packet::{check_tx_header, VsockHeader, HDR_LEN};
use crate::devices::virtio::vsock::unix::MuxerError;
use crate::devices::virtio::vsock::VsockBackend;

/// The guest's CID in these harnesses.
const GUEST_CID: u64 = 3;

/// A backend that checks what the guest sends and owes it scripted packets.
#[derive(Debug, Default)]
struct ScriptBackend {
    owed: VecDeque<VsockHeader>,
}

impl VsockBackend for ScriptBackend {
    fn send_pkt(&mut self, hdr: &VsockHeader, data: &[u8]) -> Result<(), MuxerError> {
        assert_eq!(
            hdr.len as usize,
            data.len(),
            "read_tx keeps len and payload equal"
        );
        assert!(data.len() <= MAX_PKT_PAYLOAD);
        check_tx_header(hdr, GUEST_CID).map_err(MuxerError::Misaddressed)
    }

    fn recv_pkt(&mut self, buf: &mut [u8]) -> Option<VsockHeader> {
        let mut hdr = self.owed.pop_front()?;
        let n = (hdr.len as usize).min(buf.len());
        buf[..n].fill(0xa5);
        hdr.len = n as u32;
        Some(hdr)
    }

    fn has_pending_rx(&self) -> bool {
        !self.owed.is_empty()
    }
}

/// Input: `u8` packets owed to the guest (each a raw 44-byte header), the RX queue, the TX
/// queue, guest RAM.
pub fn vsock_packet(data: &[u8]) {
    let mut input = Input::new(data);
    let Some(mem) = memory() else { return };
    let mut backend = ScriptBackend::default();
    for _ in 0..input.u8() % 8 {
        let raw: [u8; HDR_LEN] = input.array();
        let hdr = VsockHeader::from_bytes(&raw);
        assert_eq!(hdr.to_bytes(), raw, "header round trip");
        backend.owed.push_back(hdr);
    }
    let Some(rx) = queue(&mem, &mut input, QUEUE_BASE) else {
        return;
    };
    let Some(tx) = queue(&mem, &mut input, QUEUE_BASE + QUEUE_SPAN) else {
        return;
    };
    input.fill_ram(&mem);
    let mut dev = VsockQueues::new(mem, rx, tx, Arc::new(NullInterrupt), backend);
    dev.process_tx();
    dev.process_rx();
    // A second round sees the rings as the first left them.
    dev.process_tx();
    dev.process_rx();
}

/// The host end of a connection, in memory; the harness plays the host through the shared
/// [`HostEnd`].
#[derive(Debug, Default, Clone)]
struct MemStream(Arc<Mutex<HostEnd>>);

/// Bytes the host sent, room for the connection's writes, and switches for end-of-file and
/// errors.
#[derive(Debug, Default)]
struct HostEnd {
    incoming: VecDeque<u8>,
    eof: bool,
    room: usize,
    fail: bool,
    write_shut: bool,
}

/// The most a [`MemStream`] buffers.
const STREAM_CAP: usize = 1 << 20;

impl MemStream {
    fn host(&self) -> MutexGuard<'_, HostEnd> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Read for MemStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.host().read(buf)
    }
}

impl Write for MemStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.host().write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl HostEnd {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.fail {
            return Err(io::ErrorKind::ConnectionReset.into());
        }
        if self.incoming.is_empty() {
            return if self.eof {
                Ok(0)
            } else {
                Err(io::ErrorKind::WouldBlock.into())
            };
        }
        let n = buf.len().min(self.incoming.len());
        for (b, v) in buf.iter_mut().zip(self.incoming.drain(..n)) {
            *b = v;
        }
        Ok(n)
    }

    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.fail || self.write_shut {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        if self.room == 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = buf.len().min(self.room);
        self.room -= n;
        Ok(n)
    }
}

impl AsRawFd for MemStream {
    fn as_raw_fd(&self) -> RawFd {
        -1
    }
}

impl ConnStream for MemStream {
    fn shutdown_write(&self) -> io::Result<()> {
        self.host().write_shut = true;
        Ok(())
    }
}

/// A guest packet: `u8` op, `u8` flags, `u16` payload length, `le32` buf_alloc, `le32`
/// fwd_cnt. Packets the muxer would refuse ([`check_tx_header`]) are skipped, as it does.
fn guest_packet(input: &mut Input<'_>, conn: &mut Connection<MemStream>) {
    let hdr = VsockHeader {
        src_cid: GUEST_CID,
        dst_cid: 2,
        src_port: 1025,
        dst_port: 52,
        op: u16::from(input.u8()),
        flags: u32::from(input.u8()),
        len: u32::from(input.u16()),
        type_: 1,
        buf_alloc: input.u32(),
        fwd_cnt: input.u32(),
    };
    if check_tx_header(&hdr, GUEST_CID).is_err() {
        return;
    }
    let data = vec![0x5a; hdr.len as usize];
    let _ = conn.send_pkt(&hdr, &data);
}

/// Input: `u8` how the connection starts (bit 0: host-initiated, else guest REQUEST with
/// `le32` buf_alloc and fwd_cnt), then up to 512 operations, each a `u8` opcode mod 8 and its
/// arguments: a guest packet ([`guest_packet`]); the host sends `u16` bytes; the host makes
/// room for `u16` bytes; a readiness event (`u8` bits IN, OUT, HANG_UP, ERROR); the guest
/// takes a packet into a `u16`-byte buffer; time passes (`u8` tenths of a second); the host
/// closes its end; the host stream fails.
pub fn vsock_connection(data: &[u8]) {
    let mut input = Input::new(data);
    let stream = MemStream::default();
    let host = stream.clone();
    let mut conn = if input.u8() & 1 != 0 {
        Connection::new_local(stream, GUEST_CID, 1 << 30, 52)
    } else {
        let req = VsockHeader {
            src_cid: GUEST_CID,
            dst_cid: 2,
            src_port: 1025,
            dst_port: 52,
            op: op::REQUEST,
            type_: 1,
            buf_alloc: input.u32(),
            fwd_cnt: input.u32(),
            ..VsockHeader::default()
        };
        Connection::new_peer(stream, &req)
    };
    let start = Instant::now();
    let mut buf = vec![0u8; MAX_PKT_PAYLOAD];
    for _ in 0..512 {
        if input.is_empty() {
            break;
        }
        match input.u8() % 8 {
            0 => guest_packet(&mut input, &mut conn),
            1 => {
                let n = usize::from(input.u16());
                let mut s = host.host();
                let n = n.min(STREAM_CAP - s.incoming.len());
                s.incoming.extend(std::iter::repeat_n(0xc3, n));
            }
            2 => {
                let mut s = host.host();
                s.room = (s.room + usize::from(input.u16())).min(STREAM_CAP);
            }
            3 => {
                let bits = input.u8();
                let mut ev = EventSet::empty();
                for (bit, set) in [
                    (1, EventSet::IN),
                    (2, EventSet::OUT),
                    (4, EventSet::HANG_UP),
                    (8, EventSet::ERROR),
                ] {
                    if bits & bit != 0 {
                        ev |= set;
                    }
                }
                conn.notify(ev);
            }
            4 => {
                let len = usize::from(input.u16()).min(buf.len());
                let credit = conn.peer_credit() as usize;
                if let Some(h) = conn.recv_pkt(&mut buf[..len]) {
                    assert!(h.len as usize <= len, "payload fits the buffer");
                    if h.op == op::RW {
                        assert!(h.len as usize <= credit, "{} bytes, credit {credit}", h.len);
                    } else {
                        assert_eq!(h.len, 0, "control packets carry no payload");
                    }
                }
            }
            5 => conn.on_timeout(start + Duration::from_millis(100 * u64::from(input.u8()))),
            6 => host.host().eof = true,
            _ => host.host().fail = true,
        }
        assert!(conn.queued() <= CONN_BUF_ALLOC as usize, "tx buffer bound");
        let _ = conn.interest();
    }
}

//! vsock packets: the 44-byte header (`struct virtio_vsock_hdr`, little-endian) and how it
//! travels in descriptor chains.
//!
//! This is husk's own parser rather than virtio-vsock's: that crate reads only the first one
//! or two descriptors of a chain, so it cannot see a chain that loops or mixes directions after
//! them. Here a chain is validated whole first ([`GuestChain`]), then:
//! - a TX chain (guest → device) must be all device-readable, hold at least a header, and carry
//!   exactly `header.len` payload bytes (at most [`MAX_PKT_PAYLOAD`]);
//! - an RX chain (device → guest) must be all device-writable and have room for a header.
//!
//! Header fields are then checked against what the device accepts ([`check_tx_header`]).
//! Payload is copied out of (or into) guest memory, so nothing downstream holds a reference
//! into memory the guest can change under it.

use super::defs::{op, HOST_CID, MAX_PKT_PAYLOAD, TYPE_STREAM};
use crate::devices::virtio::chain::{ChainError, GuestChain};
use crate::memory::GuestMemory;

/// Size of the packet header.
pub const HDR_LEN: usize = 44;

/// The vsock packet header.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VsockHeader {
    /// Sender's context id.
    pub src_cid: u64,
    /// Receiver's context id.
    pub dst_cid: u64,
    /// Sender's port.
    pub src_port: u32,
    /// Receiver's port.
    pub dst_port: u32,
    /// Payload bytes after the header.
    pub len: u32,
    /// Socket type (1 = stream).
    pub type_: u16,
    /// Operation.
    pub op: u16,
    /// Operation flags (SHUTDOWN's RCV/SEND bits).
    pub flags: u32,
    /// Sender's receive buffer size.
    pub buf_alloc: u32,
    /// Bytes the sender has consumed so far (wrapping).
    pub fwd_cnt: u32,
}

fn le<const N: usize>(b: &[u8], at: usize) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&b[at..at + N]);
    out
}

impl VsockHeader {
    /// Decodes a header.
    pub fn from_bytes(b: &[u8; HDR_LEN]) -> Self {
        VsockHeader {
            src_cid: u64::from_le_bytes(le(b, 0)),
            dst_cid: u64::from_le_bytes(le(b, 8)),
            src_port: u32::from_le_bytes(le(b, 16)),
            dst_port: u32::from_le_bytes(le(b, 20)),
            len: u32::from_le_bytes(le(b, 24)),
            type_: u16::from_le_bytes(le(b, 28)),
            op: u16::from_le_bytes(le(b, 30)),
            flags: u32::from_le_bytes(le(b, 32)),
            buf_alloc: u32::from_le_bytes(le(b, 36)),
            fwd_cnt: u32::from_le_bytes(le(b, 40)),
        }
    }

    /// Encodes a header.
    pub fn to_bytes(&self) -> [u8; HDR_LEN] {
        let mut b = [0u8; HDR_LEN];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.type_.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }
}

/// A chain that cannot carry a vsock packet.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    /// The chain itself is bad.
    #[error(transparent)]
    Chain(#[from] ChainError),
    /// A TX chain with device-writable buffers, or an RX chain with device-readable ones.
    #[error("chain {head}: {queue} chain has {bad} bytes in the wrong direction")]
    WrongDirection {
        /// The head index.
        head: u16,
        /// "TX" or "RX".
        queue: &'static str,
        /// Bytes in buffers of the wrong direction.
        bad: usize,
    },
    /// Fewer bytes than a header.
    #[error("chain {head}: {len} bytes cannot hold a {HDR_LEN}-byte vsock header")]
    HeaderTooShort {
        /// The head index.
        head: u16,
        /// The chain's usable bytes.
        len: usize,
    },
    /// `header.len` above the device's packet limit.
    #[error("chain {head}: payload of {len} bytes is over the {MAX_PKT_PAYLOAD}-byte limit")]
    Oversized {
        /// The head index.
        head: u16,
        /// The header's `len`.
        len: u32,
    },
    /// `header.len` does not match the bytes after the header.
    #[error("chain {head}: header says {header_len} payload bytes, the chain holds {buffer_len}")]
    LengthMismatch {
        /// The head index.
        head: u16,
        /// The header's `len`.
        header_len: u32,
        /// Bytes after the header in the chain.
        buffer_len: usize,
    },
}

/// A header field the device does not accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// Not a stream socket (seqpacket and datagram are not offered).
    #[error("socket type {0} is not supported (only stream, 1)")]
    Type(u16),
    /// The source is not the guest's context id.
    #[error("source CID {0} is not the guest's")]
    SrcCid(u64),
    /// The destination is not the host.
    #[error("destination CID {0} is not the host (2)")]
    DstCid(u64),
    /// An operation number outside 1..=7.
    #[error("unknown operation {0}")]
    UnknownOp(u16),
    /// A payload on a packet that carries none.
    #[error("operation {op} carries {len} payload bytes")]
    PayloadOnControl {
        /// The operation.
        op: u16,
        /// The header's `len`.
        len: u32,
    },
}

/// Reads a TX packet: validates the chain, returns the header and leaves the payload in
/// `payload` (resized to `header.len`).
pub fn read_tx(
    mem: &GuestMemory,
    chain: &GuestChain,
    payload: &mut Vec<u8>,
) -> Result<VsockHeader, PacketError> {
    let head = chain.head();
    if chain.writable_len() != 0 {
        return Err(PacketError::WrongDirection {
            head,
            queue: "TX",
            bad: chain.writable_len(),
        });
    }
    let total = chain.readable_len();
    if total < HDR_LEN {
        return Err(PacketError::HeaderTooShort { head, len: total });
    }
    let mut raw = [0u8; HDR_LEN];
    chain.read_at(mem, 0, &mut raw)?;
    let hdr = VsockHeader::from_bytes(&raw);
    if hdr.len as usize > MAX_PKT_PAYLOAD {
        return Err(PacketError::Oversized { head, len: hdr.len });
    }
    let buffer_len = total - HDR_LEN;
    if hdr.len as usize != buffer_len {
        return Err(PacketError::LengthMismatch {
            head,
            header_len: hdr.len,
            buffer_len,
        });
    }
    payload.resize(hdr.len as usize, 0);
    chain.read_at(mem, HDR_LEN, payload)?;
    Ok(hdr)
}

/// Payload room of an RX chain (capped at [`MAX_PKT_PAYLOAD`]).
pub fn rx_capacity(chain: &GuestChain) -> Result<usize, PacketError> {
    let head = chain.head();
    if chain.readable_len() != 0 {
        return Err(PacketError::WrongDirection {
            head,
            queue: "RX",
            bad: chain.readable_len(),
        });
    }
    let total = chain.writable_len();
    if total < HDR_LEN {
        return Err(PacketError::HeaderTooShort { head, len: total });
    }
    Ok((total - HDR_LEN).min(MAX_PKT_PAYLOAD))
}

/// Writes an RX packet (`hdr.len` must equal `payload.len()`, which must fit); returns the
/// bytes written, the used length.
pub fn write_rx(
    mem: &GuestMemory,
    chain: &GuestChain,
    hdr: &VsockHeader,
    payload: &[u8],
) -> Result<u32, PacketError> {
    chain.write_at(mem, 0, &hdr.to_bytes())?;
    chain.write_at(mem, HDR_LEN, payload)?;
    Ok((HDR_LEN + payload.len()) as u32)
}

/// Checks a guest packet's header fields for a device whose guest has `guest_cid`.
pub fn check_tx_header(hdr: &VsockHeader, guest_cid: u64) -> Result<(), HeaderError> {
    if hdr.src_cid != guest_cid {
        return Err(HeaderError::SrcCid(hdr.src_cid));
    }
    if hdr.dst_cid != HOST_CID {
        return Err(HeaderError::DstCid(hdr.dst_cid));
    }
    if hdr.type_ != TYPE_STREAM {
        return Err(HeaderError::Type(hdr.type_));
    }
    if !(op::REQUEST..=op::CREDIT_REQUEST).contains(&hdr.op) {
        return Err(HeaderError::UnknownOp(hdr.op));
    }
    if hdr.op != op::RW && hdr.len != 0 {
        return Err(HeaderError::PayloadOnControl {
            op: hdr.op,
            len: hdr.len,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::chain::testing::*;
    use virtio_queue::QueueT;
    use vm_memory::{Bytes, GuestAddress};

    pub(crate) fn header(op_: u16, len: u32) -> VsockHeader {
        VsockHeader {
            src_cid: 3,
            dst_cid: HOST_CID,
            src_port: 1025,
            dst_port: 52,
            len,
            type_: TYPE_STREAM,
            op: op_,
            flags: 0,
            buf_alloc: 65536,
            fwd_cnt: 7,
        }
    }

    fn chain_of(mem: &GuestMemory, descs: &[Desc]) -> GuestChain {
        let mut q = TestQueue::new(mem, 0, 16);
        q.add(descs);
        let mut queue = q.queue();
        GuestChain::parse(queue.pop_descriptor_chain(mem).unwrap()).unwrap()
    }

    #[test]
    fn header_round_trips_at_the_documented_offsets() {
        let h = header(op::RW, 5);
        let b = h.to_bytes();
        assert_eq!(&b[24..28], &5u32.to_le_bytes(), "len at 24");
        assert_eq!(&b[30..32], &op::RW.to_le_bytes(), "op at 30");
        assert_eq!(&b[40..44], &7u32.to_le_bytes(), "fwd_cnt at 40");
        assert_eq!(VsockHeader::from_bytes(&b), h);
    }

    #[test]
    fn tx_packets_split_or_joined_read_the_same() {
        let mem = memory();
        let h = header(op::RW, 5);
        mem.write_slice(&h.to_bytes(), GuestAddress(0x1_0000))
            .unwrap();
        mem.write_slice(b"hello", GuestAddress(0x2_0000)).unwrap();
        mem.write_slice(&h.to_bytes(), GuestAddress(0x3_0000))
            .unwrap();
        mem.write_slice(b"hello", GuestAddress(0x3_0000 + HDR_LEN as u64))
            .unwrap();
        let mut payload = Vec::new();
        let split = chain_of(&mem, &[(0x1_0000, 44, false), (0x2_0000, 5, false)]);
        assert_eq!(read_tx(&mem, &split, &mut payload), Ok(h));
        assert_eq!(payload, b"hello");
        let joined = chain_of(&mem, &[(0x3_0000, 49, false)]);
        payload.clear();
        assert_eq!(read_tx(&mem, &joined, &mut payload), Ok(h));
        assert_eq!(payload, b"hello");
    }

    #[test]
    fn malformed_tx_chains_are_refused_by_kind() {
        let mem = memory();
        let put = |addr: u64, h: VsockHeader| {
            mem.write_slice(&h.to_bytes(), GuestAddress(addr)).unwrap();
        };
        put(0x1_0000, header(op::RW, 5));
        put(0x4_0000, header(op::RW, 70_000));
        let mut p = Vec::new();
        type Case = (Vec<Desc>, fn(&PacketError) -> bool);
        let cases: Vec<Case> = vec![
            (vec![(0x1_0000, 44, false), (0x2_0000, 5, true)], |e| {
                matches!(e, PacketError::WrongDirection { bad: 5, .. })
            }),
            (vec![(0x1_0000, 40, false)], |e| {
                matches!(e, PacketError::HeaderTooShort { len: 40, .. })
            }),
            (vec![(0x1_0000, 44, false), (0x2_0000, 4, false)], |e| {
                matches!(
                    e,
                    PacketError::LengthMismatch {
                        header_len: 5,
                        buffer_len: 4,
                        ..
                    }
                )
            }),
            (vec![(0x1_0000, 44, false), (0x2_0000, 9, false)], |e| {
                matches!(e, PacketError::LengthMismatch { buffer_len: 9, .. })
            }),
            (
                vec![(0x4_0000, 44, false), (0x5_0000, 70_000, false)],
                |e| matches!(e, PacketError::Oversized { len: 70_000, .. }),
            ),
        ];
        for (descs, want) in cases {
            let c = chain_of(&mem, &descs);
            let err = read_tx(&mem, &c, &mut p).unwrap_err();
            assert!(want(&err), "{descs:?}: {err}");
        }
    }

    #[test]
    fn rx_chains_need_room_and_the_right_direction() {
        let mem = memory();
        let c = chain_of(&mem, &[(0x1_0000, 44, true), (0x2_0000, 4096, true)]);
        assert_eq!(rx_capacity(&c), Ok(4096));
        let h = header(op::RW, 3);
        assert_eq!(write_rx(&mem, &c, &h, b"abc"), Ok(47));
        let mut back = [0u8; 3];
        mem.read_slice(&mut back, GuestAddress(0x2_0000)).unwrap();
        assert_eq!(&back, b"abc");
        let c = chain_of(&mem, &[(0x1_0000, 20, true)]);
        assert!(matches!(
            rx_capacity(&c),
            Err(PacketError::HeaderTooShort { .. })
        ));
        let c = chain_of(&mem, &[(0x1_0000, 44, false), (0x2_0000, 64, true)]);
        assert!(matches!(
            rx_capacity(&c),
            Err(PacketError::WrongDirection { .. })
        ));
    }

    #[test]
    fn header_fields_are_checked() {
        assert_eq!(check_tx_header(&header(op::RW, 1), 3), Ok(()));
        assert_eq!(
            check_tx_header(&header(op::RW, 1), 4),
            Err(HeaderError::SrcCid(3))
        );
        let mut h = header(op::REQUEST, 0);
        h.dst_cid = 7;
        assert_eq!(check_tx_header(&h, 3), Err(HeaderError::DstCid(7)));
        h = header(op::REQUEST, 0);
        h.type_ = 2;
        assert_eq!(check_tx_header(&h, 3), Err(HeaderError::Type(2)));
        assert_eq!(
            check_tx_header(&header(9, 0), 3),
            Err(HeaderError::UnknownOp(9))
        );
        assert_eq!(
            check_tx_header(&header(0, 0), 3),
            Err(HeaderError::UnknownOp(0))
        );
        assert_eq!(
            check_tx_header(&header(op::SHUTDOWN, 4), 3),
            Err(HeaderError::PayloadOnControl {
                op: op::SHUTDOWN,
                len: 4
            })
        );
    }
}

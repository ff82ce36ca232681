//! The 12-byte `virtio_net_hdr_v1` in front of every frame, and what a transmitted one may say.
//!
//! With VIRTIO_F_VERSION_1 the header is always 12 bytes (with `num_buffers`), little-endian.
//! The tap is set to the same size (`TUNSETVNETHDRSZ 12`), so headers pass through unchanged:
//! the tap reads and writes the first 10 bytes and skips `num_buffers`, which the device fills
//! in on receive.
//!
//! On transmit the guest is hostile and the host kernel is the target: [`check_tx`] refuses
//! headers that claim an offload the driver did not negotiate, flags only the device may set,
//! or checksum and segmentation offsets outside the frame, before the tap sees them.

use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
    VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_HDR_F_NEEDS_CSUM,
    VIRTIO_NET_HDR_GSO_NONE, VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_HDR_GSO_TCPV6,
};

/// Size of `virtio_net_hdr_v1`.
pub const HDR_LEN: usize = 12;
/// Size of an Ethernet header: the shortest frame the tap takes.
pub const ETH_HLEN: usize = 14;
/// Largest frame after the vnet header: a 64 KiB GSO packet, its Ethernet header and a VLAN
/// tag.
pub const MAX_FRAME_LEN: usize = 65536 + ETH_HLEN + 4;
/// Offset of `num_buffers` in the header.
pub const NUM_BUFFERS_OFFSET: usize = 10;

/// The header's fields.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetHeader {
    /// `VIRTIO_NET_HDR_F_*`.
    pub flags: u8,
    /// `VIRTIO_NET_HDR_GSO_*`.
    pub gso_type: u8,
    /// Length of the headers to repeat in each segment.
    pub hdr_len: u16,
    /// Segment payload size.
    pub gso_size: u16,
    /// Where checksumming starts.
    pub csum_start: u16,
    /// Where the checksum goes, from `csum_start`.
    pub csum_offset: u16,
    /// Buffers the frame spans (receive only).
    pub num_buffers: u16,
}

impl NetHeader {
    /// Decodes the first [`HDR_LEN`] bytes of `bytes` (which must hold them).
    pub fn parse(bytes: &[u8]) -> NetHeader {
        let u16_at = |i: usize| u16::from_le_bytes([bytes[i], bytes[i + 1]]);
        NetHeader {
            flags: bytes[0],
            gso_type: bytes[1],
            hdr_len: u16_at(2),
            gso_size: u16_at(4),
            csum_start: u16_at(6),
            csum_offset: u16_at(8),
            num_buffers: u16_at(NUM_BUFFERS_OFFSET),
        }
    }

    /// Encodes the header.
    pub fn to_bytes(self) -> [u8; HDR_LEN] {
        let mut b = [0u8; HDR_LEN];
        b[0] = self.flags;
        b[1] = self.gso_type;
        for (at, v) in [
            (2, self.hdr_len),
            (4, self.gso_size),
            (6, self.csum_start),
            (8, self.csum_offset),
            (NUM_BUFFERS_OFFSET, self.num_buffers),
        ] {
            b[at..at + 2].copy_from_slice(&v.to_le_bytes());
        }
        b
    }
}

/// A transmitted header the device refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// Flags other than NEEDS_CSUM (DATA_VALID and RSC_INFO are the device's to set).
    #[error("header flags {0:#x} are not allowed on transmit")]
    Flags(u8),
    /// NEEDS_CSUM without VIRTIO_NET_F_CSUM.
    #[error("checksum offload requested but VIRTIO_NET_F_CSUM was not negotiated")]
    CsumNotNegotiated,
    /// The checksum would be written outside the frame.
    #[error("checksum at {start}+{offset} does not fit the {len}-byte frame")]
    CsumOutside {
        /// `csum_start`.
        start: u16,
        /// `csum_offset`.
        offset: u16,
        /// The frame's length after the vnet header.
        len: usize,
    },
    /// A GSO type the driver did not negotiate (or that the device never offers: UFO, USO,
    /// ECN).
    #[error("GSO type {0:#x} was not negotiated")]
    GsoNotNegotiated(u8),
    /// Segmentation needs the checksum offsets.
    #[error("GSO without NEEDS_CSUM")]
    GsoWithoutCsum,
    /// Segmentation into segments of zero bytes.
    #[error("GSO with a segment size of 0")]
    GsoSizeZero,
    /// The headers to repeat are longer than the frame.
    #[error("GSO header length {hdr_len} exceeds the {len}-byte frame")]
    GsoHdrLen {
        /// `hdr_len`.
        hdr_len: u16,
        /// The frame's length after the vnet header.
        len: usize,
    },
}

fn has(acked: u64, bit: u32) -> bool {
    acked & (1u64 << bit) != 0
}

/// Checks a header the guest transmitted with a frame of `len` bytes (after the header),
/// against the features it negotiated.
pub fn check_tx(hdr: &NetHeader, len: usize, acked: u64) -> Result<(), HeaderError> {
    let needs_csum = VIRTIO_NET_HDR_F_NEEDS_CSUM as u8;
    if hdr.flags & !needs_csum != 0 {
        return Err(HeaderError::Flags(hdr.flags));
    }
    if hdr.flags & needs_csum != 0 {
        if !has(acked, VIRTIO_NET_F_CSUM) {
            return Err(HeaderError::CsumNotNegotiated);
        }
        let end = usize::from(hdr.csum_start) + usize::from(hdr.csum_offset) + 2;
        if end > len {
            return Err(HeaderError::CsumOutside {
                start: hdr.csum_start,
                offset: hdr.csum_offset,
                len,
            });
        }
    }
    let gso = u32::from(hdr.gso_type);
    if gso == VIRTIO_NET_HDR_GSO_NONE {
        return Ok(());
    }
    let negotiated = match gso {
        VIRTIO_NET_HDR_GSO_TCPV4 => has(acked, VIRTIO_NET_F_HOST_TSO4),
        VIRTIO_NET_HDR_GSO_TCPV6 => has(acked, VIRTIO_NET_F_HOST_TSO6),
        _ => false,
    };
    if !negotiated {
        return Err(HeaderError::GsoNotNegotiated(hdr.gso_type));
    }
    if hdr.flags & needs_csum == 0 {
        return Err(HeaderError::GsoWithoutCsum);
    }
    if hdr.gso_size == 0 {
        return Err(HeaderError::GsoSizeZero);
    }
    if usize::from(hdr.hdr_len) > len {
        return Err(HeaderError::GsoHdrLen {
            hdr_len: hdr.hdr_len,
            len,
        });
    }
    Ok(())
}

/// Whether a frame the tap delivered with `hdr` is one the driver can take: partial
/// checksums need GUEST_CSUM and GSO frames the matching GUEST_TSO. The tap only produces such
/// frames when the offloads were set for this driver; this catches the ones queued before.
pub fn rx_acceptable(hdr: &NetHeader, acked: u64) -> bool {
    let needs_csum = hdr.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM as u8 != 0;
    if needs_csum && !has(acked, VIRTIO_NET_F_GUEST_CSUM) {
        return false;
    }
    match u32::from(hdr.gso_type) {
        VIRTIO_NET_HDR_GSO_NONE => true,
        VIRTIO_NET_HDR_GSO_TCPV4 => has(acked, VIRTIO_NET_F_GUEST_TSO4),
        VIRTIO_NET_HDR_GSO_TCPV6 => has(acked, VIRTIO_NET_F_GUEST_TSO6),
        _ => false,
    }
}

/// The `TUN_F_*` offloads that match what the driver accepted: the tap may then hand the
/// guest partial checksums (GUEST_CSUM) and TCP segments up to 64 KiB (GUEST_TSO4/6, which
/// need GUEST_CSUM).
pub fn tap_offloads(acked: u64) -> u32 {
    if !has(acked, VIRTIO_NET_F_GUEST_CSUM) {
        return 0;
    }
    let mut flags = libc::TUN_F_CSUM;
    if has(acked, VIRTIO_NET_F_GUEST_TSO4) {
        flags |= libc::TUN_F_TSO4;
    }
    if has(acked, VIRTIO_NET_F_GUEST_TSO6) {
        flags |= libc::TUN_F_TSO6;
    }
    flags
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_bindings::virtio_net::{
        VIRTIO_NET_HDR_F_DATA_VALID, VIRTIO_NET_HDR_GSO_ECN, VIRTIO_NET_HDR_GSO_UDP,
    };

    const ALL: u64 = (1 << VIRTIO_NET_F_CSUM)
        | (1 << VIRTIO_NET_F_HOST_TSO4)
        | (1 << VIRTIO_NET_F_HOST_TSO6)
        | (1 << VIRTIO_NET_F_GUEST_CSUM)
        | (1 << VIRTIO_NET_F_GUEST_TSO4)
        | (1 << VIRTIO_NET_F_GUEST_TSO6);

    fn tso4() -> NetHeader {
        NetHeader {
            flags: VIRTIO_NET_HDR_F_NEEDS_CSUM as u8,
            gso_type: VIRTIO_NET_HDR_GSO_TCPV4 as u8,
            hdr_len: 66,
            gso_size: 1448,
            csum_start: 34,
            csum_offset: 16,
            num_buffers: 0,
        }
    }

    #[test]
    fn bytes_round_trip_little_endian() {
        let mut h = tso4();
        h.num_buffers = 3;
        let b = h.to_bytes();
        assert_eq!(&b[..4], &[1, 1, 66, 0]);
        assert_eq!(&b[10..], &[3, 0]);
        assert_eq!(NetHeader::parse(&b), h);
    }

    #[test]
    fn transmit_headers_are_checked_against_the_frame_and_features() {
        assert_eq!(check_tx(&NetHeader::default(), 60, 0), Ok(()));
        assert_eq!(check_tx(&tso4(), 9000, ALL), Ok(()));
        let cases: &[(NetHeader, usize, u64, HeaderError)] = &[
            (
                NetHeader {
                    flags: VIRTIO_NET_HDR_F_DATA_VALID as u8,
                    ..NetHeader::default()
                },
                60,
                ALL,
                HeaderError::Flags(2),
            ),
            (tso4(), 9000, 0, HeaderError::CsumNotNegotiated),
            (
                tso4(),
                40,
                ALL,
                HeaderError::CsumOutside {
                    start: 34,
                    offset: 16,
                    len: 40,
                },
            ),
            (
                tso4(),
                9000,
                ALL & !(1 << VIRTIO_NET_F_HOST_TSO4),
                HeaderError::GsoNotNegotiated(1),
            ),
            (
                NetHeader {
                    gso_type: VIRTIO_NET_HDR_GSO_UDP as u8,
                    ..tso4()
                },
                9000,
                ALL,
                HeaderError::GsoNotNegotiated(3),
            ),
            (
                NetHeader {
                    gso_type: (VIRTIO_NET_HDR_GSO_TCPV4 | VIRTIO_NET_HDR_GSO_ECN) as u8,
                    ..tso4()
                },
                9000,
                ALL,
                HeaderError::GsoNotNegotiated(0x81),
            ),
            (
                NetHeader { flags: 0, ..tso4() },
                9000,
                ALL,
                HeaderError::GsoWithoutCsum,
            ),
            (
                NetHeader {
                    gso_size: 0,
                    ..tso4()
                },
                9000,
                ALL,
                HeaderError::GsoSizeZero,
            ),
            (
                NetHeader {
                    hdr_len: 200,
                    ..tso4()
                },
                100,
                ALL,
                HeaderError::GsoHdrLen {
                    hdr_len: 200,
                    len: 100,
                },
            ),
        ];
        for (hdr, len, acked, want) in cases {
            assert_eq!(check_tx(hdr, *len, *acked).as_ref(), Err(want), "{hdr:?}");
        }
    }

    #[test]
    fn receive_offloads_follow_what_the_driver_accepted() {
        assert!(rx_acceptable(&NetHeader::default(), 0));
        assert!(!rx_acceptable(&tso4(), 1 << VIRTIO_NET_F_GUEST_CSUM));
        assert!(rx_acceptable(&tso4(), ALL));
        let csum_only = NetHeader {
            gso_type: 0,
            ..tso4()
        };
        assert!(!rx_acceptable(&csum_only, 0));
        assert!(rx_acceptable(&csum_only, 1 << VIRTIO_NET_F_GUEST_CSUM));

        assert_eq!(tap_offloads(0), 0);
        assert_eq!(
            tap_offloads(1 << VIRTIO_NET_F_GUEST_TSO4),
            0,
            "TSO without checksum offload is meaningless"
        );
        assert_eq!(
            tap_offloads(ALL),
            libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6
        );
    }
}

//! `net_header`: the 12-byte virtio-net header on its own ([`NetHeader::parse`],
//! [`check_tx`], [`rx_acceptable`]), then TX and RX chains through [`NetQueues`] with an
//! in-memory tap.

use std::collections::VecDeque;
use std::io;
use std::sync::{Arc, Mutex};

use super::{memory, queue, Input, NullInterrupt, QUEUE_BASE, QUEUE_SPAN};
use crate::devices::virtio::net::device::BASE_FEATURES;
use crate::devices::virtio::net::handler::NetQueues;
use crate::devices::virtio::net::header::{check_tx, rx_acceptable, tap_offloads, NetHeader};
use crate::devices::virtio::net::header::{HDR_LEN, MAX_FRAME_LEN};
use crate::devices::virtio::net::{NetStats, TapIo};

/// A tap that delivers scripted frames and takes every frame but checks it first.
#[derive(Debug, Default)]
struct MemTap {
    incoming: Mutex<VecDeque<Vec<u8>>>,
    acked: u64,
}

impl TapIo for MemTap {
    fn read_frame(&self, buf: &mut [u8]) -> io::Result<usize> {
        let mut q = self.incoming.lock().unwrap_or_else(|p| p.into_inner());
        let frame = q.pop_front().ok_or(io::ErrorKind::WouldBlock)?;
        let n = frame.len().min(buf.len());
        buf[..n].copy_from_slice(&frame[..n]);
        Ok(n)
    }

    fn write_frame(&self, frame: &[u8]) -> io::Result<usize> {
        // What reaches the tap must have passed the header checks.
        assert!(frame.len() >= HDR_LEN && frame.len() <= HDR_LEN + MAX_FRAME_LEN);
        let hdr = NetHeader::parse(frame);
        let checked = check_tx(&hdr, frame.len() - HDR_LEN, self.acked);
        assert!(checked.is_ok(), "tap got a refused header: {checked:?}");
        Ok(frame.len())
    }

    fn set_offload(&self, _flags: u32) -> io::Result<()> {
        Ok(())
    }
}

/// Input: 12 header bytes, `le16` frame length, `le64` acked features (masked to what the
/// device offers), `u8` tap frames (each `le16` length, then its bytes), the RX queue, the
/// TX queue, guest RAM.
pub fn net_header(data: &[u8]) {
    let mut input = Input::new(data);
    let raw: [u8; HDR_LEN] = input.array();
    let hdr = NetHeader::parse(&raw);
    assert_eq!(hdr.to_bytes(), raw, "header round trip");
    let len = usize::from(input.u16());
    let acked = input.u64() & BASE_FEATURES;
    if check_tx(&hdr, len, acked).is_ok() && hdr.flags & 1 != 0 {
        let end = usize::from(hdr.csum_start) + usize::from(hdr.csum_offset) + 2;
        assert!(end <= len, "accepted checksum outside the frame");
    }
    let _ = rx_acceptable(&hdr, acked);
    let _ = tap_offloads(acked);

    let Some(mem) = memory() else { return };
    let tap = MemTap {
        acked,
        ..MemTap::default()
    };
    for _ in 0..input.u8() % 8 {
        let n = usize::from(input.u16());
        let frame = input.bytes(n).to_vec();
        tap.incoming
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push_back(frame);
    }
    let Some(rx) = queue(&mem, &mut input, QUEUE_BASE) else {
        return;
    };
    let Some(tx) = queue(&mem, &mut input, QUEUE_BASE + QUEUE_SPAN) else {
        return;
    };
    input.fill_ram(&mem);
    let stats = Arc::new(NetStats::default());
    let mut dev = NetQueues::new(mem, [rx, tx], Arc::new(NullInterrupt), tap, acked, stats);
    for _ in 0..2 {
        dev.process_tx();
        dev.tap_readable();
        dev.process_rx();
    }
}

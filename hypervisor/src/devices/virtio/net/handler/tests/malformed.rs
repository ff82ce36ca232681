//! The malformed-input table, both ways. Each bad chain a guest can post (outside guest RAM,
//! looped, the wrong direction, too short or too long, a checksum or GSO request the frame
//! cannot carry) is returned unused and counted, and the next good frame still goes through;
//! a frame that can never fit is dropped instead of stalling the queue.

use super::*;

/// How a malformed-table case lays out its bad chain.
type Setup = Box<dyn Fn(&mut Rig)>;
/// The fault it must produce.
type Expect = fn(&NetFault) -> bool;

/// The transmit side of the malformed table: each bad chain is returned unused and counted,
/// the good frame after it still goes out, and the device stays usable.
#[test]
fn malformed_transmissions_are_dropped_and_the_device_goes_on() {
    let next = VRING_DESC_F_NEXT as u16;
    let gso = frame(tso4_header(), 3000, 1);
    let mut bad_csum = frame(NetHeader::default(), 100, 1);
    bad_csum[..HDR_LEN].copy_from_slice(
        &NetHeader {
            flags: VIRTIO_NET_HDR_F_NEEDS_CSUM as u8,
            csum_start: 100,
            csum_offset: 16,
            ..NetHeader::default()
        }
        .to_bytes(),
    );
    let cases: Vec<(&str, u64, Setup, Expect)> = vec![
        (
            "out of RAM",
            OFFLOADS,
            Box::new(|r: &mut Rig| {
                r.txq
                    .add(&[(0x1_0000, 12, false), ((1 << 20) - 10, 100, false)]);
            }),
            |f| {
                matches!(
                    f,
                    NetFault::Chain {
                        source: ChainError::OutsideRam { .. },
                        ..
                    }
                )
            },
        ),
        (
            "looped chain",
            OFFLOADS,
            Box::new(move |r: &mut Rig| {
                r.txq.store(0, 0x1_0000, 64, next, 1);
                r.txq.store(1, 0x1_0000, 64, next, 0);
                r.txq.publish(0);
            }),
            |f| {
                matches!(
                    f,
                    NetFault::Chain {
                        source: ChainError::Unterminated { .. },
                        ..
                    }
                )
            },
        ),
        (
            "wrong direction",
            OFFLOADS,
            Box::new(|r: &mut Rig| {
                let f = plain(60, 0);
                let at = r.alloc(f.len() as u64);
                r.mem.write_slice(&f, GuestAddress(at)).unwrap();
                r.txq
                    .add(&[(at, f.len() as u32, false), (at + 0x1000, 64, true)]);
            }),
            |f| matches!(f, NetFault::WrongDirection { queue: "tx", .. }),
        ),
        (
            "undersized",
            OFFLOADS,
            Box::new(|r: &mut Rig| {
                r.send(&[0u8; HDR_LEN - 2], &[]);
            }),
            |f| matches!(f, NetFault::Undersized { len: 10, .. }),
        ),
        (
            "header only",
            OFFLOADS,
            Box::new(|r: &mut Rig| {
                r.send(&[0u8; HDR_LEN + 6], &[]);
            }),
            |f| matches!(f, NetFault::Undersized { .. }),
        ),
        (
            "oversized",
            OFFLOADS,
            Box::new(|r: &mut Rig| {
                r.send(&plain(MAX_FRAME_LEN - ETH_HLEN + 1, 0), &[HDR_LEN, 40000]);
            }),
            |f| matches!(f, NetFault::Oversized { .. }),
        ),
        (
            "checksum past the frame",
            OFFLOADS,
            Box::new(move |r: &mut Rig| {
                r.send(&bad_csum, &[]);
            }),
            |f| {
                matches!(
                    f,
                    NetFault::Header {
                        source: HeaderError::CsumOutside { .. },
                        ..
                    }
                )
            },
        ),
        (
            "GSO not negotiated",
            1 << VIRTIO_NET_F_CSUM,
            Box::new(move |r: &mut Rig| {
                r.send(&gso, &[]);
            }),
            |f| {
                matches!(
                    f,
                    NetFault::Header {
                        source: HeaderError::GsoNotNegotiated(1),
                        ..
                    }
                )
            },
        ),
    ];
    for (name, acked, setup, want) in cases {
        let mem = memory();
        let mut r = Rig::new(&mem, acked);
        setup(&mut r);
        let good = plain(70, 9);
        r.send(&good, &[]);
        let run = r.dev.process_tx();
        assert_eq!(run.faults.len(), 1, "{name}: {:?}", run.faults);
        assert!(want(&run.faults[0]), "{name}: {:?}", run.faults[0]);
        assert!(!r.dev.is_broken(), "{name}");
        assert_eq!(r.tap.written(), vec![good], "{name}");
        let used = r.txq.used();
        assert_eq!(used.len(), 2, "{name}: both chains come back");
        assert!(used.iter().all(|(_, len)| *len == 0), "{name}");
        assert_eq!(r.stat(|s| &s.tx_dropped), 1, "{name}");
    }
}

/// The receive side: a bad rx chain is returned unused (length 0) and the frame goes into the
/// next good chain.
#[test]
fn malformed_rx_chains_are_returned_unused_and_the_frame_goes_on() {
    let next = VRING_DESC_F_NEXT as u16;
    let write = VRING_DESC_F_WRITE as u16;
    let cases: Vec<(&str, Setup, Expect)> = vec![
        (
            "out of RAM",
            Box::new(|r: &mut Rig| {
                r.rxq.add(&[((1 << 20) - 100, 2048, true)]);
            }),
            |f| {
                matches!(
                    f,
                    NetFault::Chain {
                        source: ChainError::OutsideRam { .. },
                        ..
                    }
                )
            },
        ),
        (
            "looped chain",
            Box::new(move |r: &mut Rig| {
                r.rxq.store(0, 0x1_0000, 64, next | write, 1);
                r.rxq.store(1, 0x1_0000, 64, next | write, 0);
                r.rxq.publish(0);
            }),
            |f| {
                matches!(
                    f,
                    NetFault::Chain {
                        source: ChainError::Unterminated { .. },
                        ..
                    }
                )
            },
        ),
        (
            "wrong direction",
            Box::new(|r: &mut Rig| {
                r.rxq.add(&[(0x1_0000, 64, false), (0x2_0000, 2048, true)]);
            }),
            |f| matches!(f, NetFault::WrongDirection { queue: "rx", .. }),
        ),
        (
            "smaller than a header",
            Box::new(|r: &mut Rig| {
                r.rxq.add(&[(0x1_0000, 8, true)]);
            }),
            |f| matches!(f, NetFault::RxBufferTooSmall { writable: 8, .. }),
        ),
    ];
    for (name, setup, want) in cases {
        let mem = memory();
        let mut r = Rig::new(&mem, OFFLOADS);
        r.next_buf = 0x4_0000;
        setup(&mut r);
        let f = plain(300, 3);
        r.tap.push(f.clone());
        let (head, addr) = r.post(2048);
        let run = r.dev.process_rx();
        assert_eq!(run.faults.len(), 1, "{name}: {:?}", run.faults);
        assert!(want(&run.faults[0]), "{name}: {:?}", run.faults[0]);
        assert!(!r.dev.is_broken(), "{name}");
        let used = r.rxq.used();
        assert_eq!(used.len(), 2, "{name}: {used:?}");
        assert_eq!(used[0].1, 0, "{name}: the bad chain comes back empty");
        assert_eq!(used[1], (u32::from(head), f.len() as u32), "{name}");
        assert_eq!(&r.read(addr, f.len())[HDR_LEN..], &f[HDR_LEN..], "{name}");
    }
}

#[test]
fn a_frame_too_big_for_a_single_buffer_is_dropped_and_the_buffer_kept() {
    let mem = memory();
    // No MRG_RXBUF: one chain per frame.
    let mut r = Rig::new(&mem, 0);
    r.tap.push(plain(4000, 1));
    let small = plain(100, 2);
    r.tap.push(small.clone());
    let (head, addr) = r.post(1600);
    let run = r.dev.process_rx();
    assert_eq!(run.faults.len(), 1, "{:?}", run.faults);
    assert!(matches!(run.faults[0], NetFault::NoRoom { room: 1600, .. }));
    assert_eq!(r.rxq.used(), vec![(u32::from(head), small.len() as u32)]);
    assert_eq!(&r.read(addr, small.len())[HDR_LEN..], &small[HDR_LEN..]);
    assert_eq!(r.stat(|s| &s.rx_dropped), 1);
}

#[test]
fn a_frame_larger_than_the_whole_ring_is_dropped_instead_of_waiting_forever() {
    let mem = memory();
    let mut rxq = TestQueue::new(&mem, RX_BASE, 4);
    let txq = TestQueue::new(&mem, TX_BASE, 4);
    // The mock lays a 4-entry available ring over its used ring; give the device its own.
    let used_ring = RX_BASE + 0x800;
    let mut rx = rxq.queue();
    rx.set_used_ring_address(Some(used_ring as u32), Some(0));
    let tap = Arc::new(MemTap::default());
    let irq = Arc::new(FakeInterrupt::default());
    let mut dev = NetQueues::new(
        mem.clone(),
        [rx, txq.queue()],
        irq,
        tap.clone(),
        OFFLOADS,
        Arc::default(),
    );
    for i in 0..4 {
        rxq.add(&[(0x1_0000 + i * 0x1000, 1024, true)]);
    }
    tap.push(plain(6000, 1));
    let small = plain(100, 2);
    tap.push(small.clone());
    let run = dev.process_rx();
    assert!(matches!(
        run.faults[..],
        [NetFault::NoRoom { room: 4096, .. }]
    ));
    assert!(!dev.rx_pending());
    // The buffers stayed for the next frame, which went into the first one.
    let used_idx: u16 = mem.read_obj(GuestAddress(used_ring + 2)).unwrap();
    assert_eq!(used_idx, 1);
    let len: u32 = mem.read_obj(GuestAddress(used_ring + 8)).unwrap();
    assert_eq!(len as usize, small.len());
}

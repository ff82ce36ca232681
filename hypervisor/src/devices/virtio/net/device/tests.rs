//! The device as the transport sees it: config space and features, queue checks, and the
//! worker with a real epoll loop over a datagram socket pair standing in for the tap (one
//! datagram, one frame; non-blocking; readable and writable edges like a tap's): round trips,
//! back-pressure both ways, reset and re-activation.

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddress};

use super::*;
use crate::devices::virtio::chain::testing::{memory, TestQueue};
use crate::devices::virtio::interrupt::{FakeInterrupt, InterruptReason};
use crate::devices::virtio::net::handler::tests::{frame, OFFLOADS};
use crate::devices::virtio::net::header::{NetHeader, HDR_LEN};
use crate::devices::virtio::net::{RX_QUEUE, TX_QUEUE};
use crate::devices::virtio::testing::{activation, wait_for};

/// One end of a datagram socket pair as the tap.
#[derive(Debug)]
struct SockTap {
    sock: UnixDatagram,
    reads: AtomicUsize,
    offloads: Mutex<Vec<u32>>,
}

impl TapIo for SockTap {
    fn read_frame(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        self.sock.recv(buf)
    }
    fn write_frame(&self, frame: &[u8]) -> std::io::Result<usize> {
        self.sock.send(frame)
    }
    fn set_offload(&self, flags: u32) -> std::io::Result<()> {
        self.offloads.lock().unwrap().push(flags);
        Ok(())
    }
}

impl PollableTap for SockTap {
    fn poll_fd(&self) -> std::os::fd::RawFd {
        self.sock.as_raw_fd()
    }
}

const MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x2a];

/// A device on a socket pair; the other end is the "host".
fn device(mtu: Option<u16>) -> (VirtioNet<SockTap>, UnixDatagram) {
    let (ours, host) = UnixDatagram::pair().unwrap();
    ours.set_nonblocking(true).unwrap();
    let tap = SockTap {
        sock: ours,
        reads: AtomicUsize::new(0),
        offloads: Mutex::new(Vec::new()),
    };
    (VirtioNet::with_tap(tap, "t0", MAC, mtu), host)
}

#[test]
fn config_space_has_the_mac_link_up_one_pair_and_the_mtu() {
    let (dev, _host) = device(Some(9000));
    assert_eq!(dev.device_type(), 1);
    assert_eq!(dev.queue_max_sizes(), &[QUEUE_SIZE, QUEUE_SIZE]);
    let f = dev.features();
    for bit in [
        VIRTIO_F_VERSION_1,
        VIRTIO_NET_F_MAC,
        VIRTIO_NET_F_STATUS,
        VIRTIO_NET_F_MTU,
        VIRTIO_NET_F_MRG_RXBUF,
        VIRTIO_NET_F_CSUM,
        VIRTIO_NET_F_GUEST_TSO4,
    ] {
        assert_ne!(f & (1 << bit), 0, "feature {bit}");
    }
    let mut all = [0xffu8; CONFIG_LEN + 4];
    dev.read_config(0, &mut all);
    assert_eq!(&all[..6], &MAC);
    assert_eq!(&all[6..8], &1u16.to_le_bytes(), "VIRTIO_NET_S_LINK_UP");
    assert_eq!(&all[8..10], &1u16.to_le_bytes(), "one queue pair");
    assert_eq!(&all[10..12], &9000u16.to_le_bytes());
    assert_eq!(&all[12..], &[0; 4], "past the end reads as zero");
    let mut status = [0u8; 2];
    dev.read_config(6, &mut status);
    assert_eq!(status, [1, 0]);
    dev.read_config(u64::MAX, &mut status);
    assert_eq!(status, [0, 0]);

    let (mut dev, _host) = device(None);
    assert_eq!(
        dev.features() & (1 << VIRTIO_NET_F_MTU),
        0,
        "no MTU, no feature"
    );
    dev.write_config(0, &[0xaa; 6]);
    let mut mac = [0u8; 6];
    dev.read_config(0, &mut mac);
    assert_eq!(mac, MAC, "the config space is read-only");
}

#[test]
fn wrong_queues_are_refused() {
    let mem = memory();
    let irq = Arc::new(FakeInterrupt::default());
    let (mut dev, _host) = device(None);
    let q = TestQueue::new(&mem, 0, 16);
    let (a, _e) = activation(&mem, vec![q.queue()], &irq, 1 << VIRTIO_F_VERSION_1);
    assert!(matches!(
        dev.activate(a),
        Err(ActivateError::QueueCount { expected: 2, .. })
    ));
    let mut not_ready = q.queue();
    not_ready.set_ready(false);
    let (a, _e) = activation(&mem, vec![q.queue(), not_ready], &irq, 0);
    assert!(matches!(
        dev.activate(a),
        Err(ActivateError::BadQueue { index: 1, .. })
    ));
    assert!(!dev.is_active());
}

/// Frames both ways through a running worker, which sets the negotiated offloads; reset stops
/// it and clears the offloads; a second activation (fresh queues, as after a driver reset)
/// works again.
#[test]
fn activate_exchange_frames_reset_and_activate_again() {
    let mem = memory();
    let (mut dev, host) = device(Some(1500));
    host.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let acked = (1 << VIRTIO_F_VERSION_1) | OFFLOADS;
    for round in 0..2u64 {
        let base = 0x2_0000 * (round + 1);
        let mut rxq = TestQueue::new(&mem, base, 16);
        let mut txq = TestQueue::new(&mem, base + 0x1000, 16);
        let irq = Arc::new(FakeInterrupt::default());
        let (a, evts) = activation(&mem, vec![rxq.queue(), txq.queue()], &irq, acked);
        dev.activate(a).unwrap();
        assert!(dev.is_active());
        // The worker sets the offloads as its loop starts, after the activation returned.
        let negotiated = libc::TUN_F_CSUM | libc::TUN_F_TSO4;
        wait_for("the tap's offloads", || {
            dev.tap().offloads.lock().unwrap().last() == Some(&negotiated)
        });
        let (again, _e) = activation(&mem, vec![rxq.queue(), txq.queue()], &irq, acked);
        assert!(matches!(
            dev.activate(again),
            Err(ActivateError::AlreadyActive)
        ));

        // Host → guest.
        let rx_buf = base + 0x4000;
        rxq.add(&[(rx_buf, 2048, true)]);
        evts[RX_QUEUE].write(1).unwrap();
        let to_guest = frame(NetHeader::default(), 300, round as u8);
        host.send(&to_guest).unwrap();
        wait_for("the rx frame", || !rxq.used().is_empty());
        assert_eq!(rxq.used()[0].1 as usize, to_guest.len());
        let mut got = vec![0u8; to_guest.len()];
        mem.read_slice(&mut got, GuestAddress(rx_buf)).unwrap();
        assert_eq!(&got[HDR_LEN..], &to_guest[HDR_LEN..]);

        // Guest → host.
        let to_host = frame(NetHeader::default(), 500, 100 + round as u8);
        let tx_buf = base + 0x8000;
        mem.write_slice(&to_host, GuestAddress(tx_buf)).unwrap();
        txq.add(&[(tx_buf, to_host.len() as u32, false)]);
        evts[TX_QUEUE].write(1).unwrap();
        let mut buf = vec![0u8; 4096];
        let n = host.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], &to_host[..]);
        wait_for("the tx chain back", || txq.used().len() == 1);
        wait_for("interrupts", || irq.count(InterruptReason::UsedBuffer) >= 2);

        dev.reset();
        assert!(!dev.is_active());
        assert_eq!(dev.tap().offloads.lock().unwrap().last(), Some(&0));
    }
    assert_eq!(NetStats::get(&dev.stats().rx_frames), 2);
    assert_eq!(NetStats::get(&dev.stats().tx_frames), 2);
}

fn small_sndbuf(sock: &UnixDatagram) {
    let size: libc::c_int = 4096;
    // SAFETY: setsockopt reads `size_of::<c_int>()` bytes from `&size`, a live c_int.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0);
}

/// The worker's back-pressure: with no rx buffers the tap is not read, and posting buffers
/// resumes reception; a tap that refuses frames (EAGAIN) holds transmission until it drains,
/// then everything goes out, in order, nothing dropped.
#[test]
fn back_pressure_both_ways_through_the_worker() {
    let mem = memory();
    let (mut dev, host) = device(None);
    small_sndbuf(&dev.tap().sock);
    let stats = dev.stats();
    let mut rxq = TestQueue::new(&mem, 0, 64);
    let mut txq = TestQueue::new(&mem, 0x1000, 64);
    let irq = Arc::new(FakeInterrupt::default());
    let acked = (1 << VIRTIO_F_VERSION_1) | OFFLOADS;
    let (a, evts) = activation(&mem, vec![rxq.queue(), txq.queue()], &irq, acked);
    dev.activate(a).unwrap();

    // Receive: three frames queued at the "tap", no buffers.
    for seed in 0..3u8 {
        host.send(&frame(NetHeader::default(), 100, seed)).unwrap();
    }
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(dev.tap().reads.load(Ordering::SeqCst), 0, "not read");
    for i in 0..3u64 {
        rxq.add(&[(0x1_0000 + i * 0x1000, 2048, true)]);
    }
    evts[RX_QUEUE].write(1).unwrap();
    wait_for("three rx frames", || rxq.used().len() == 3);

    // Transmit into a tap that is full until the host reads.
    let frames: Vec<Vec<u8>> = (0..20u8)
        .map(|i| frame(NetHeader::default(), 1000, i))
        .collect();
    for (i, f) in frames.iter().enumerate() {
        let at = 0x2_0000 + i as u64 * 0x1000;
        mem.write_slice(f, GuestAddress(at)).unwrap();
        txq.add(&[(at, f.len() as u32, false)]);
    }
    evts[TX_QUEUE].write(1).unwrap();
    wait_for("the tap to fill", || NetStats::get(&stats.tx_waits) > 0);
    let sent_before = txq.used().len();
    assert!(sent_before < frames.len(), "{sent_before} frames fit");
    host.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut buf = vec![0u8; 4096];
    for (i, f) in frames.iter().enumerate() {
        let n = host.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], &f[..], "frame {i}");
    }
    wait_for("every tx chain back", || txq.used().len() == frames.len());
    assert_eq!(NetStats::get(&stats.tx_dropped), 0);
    dev.reset();
}

//! The muxer with real Unix sockets: both handshakes, port policy, resets, limits, and the
//! handler-level cases that need a real backend (unknown op, a guest ignoring credit).

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::time::Duration;

use super::*;
use crate::devices::virtio::vsock::csm::connection::ConnError;
use crate::devices::virtio::vsock::defs::{SHUTDOWN_RCV, SHUTDOWN_SEND};

const GUEST: u64 = 3;
const ALLOWED: u32 = 52;

struct Setup {
    _dir: tempfile::TempDir,
    path: PathBuf,
    m: Muxer,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let m = Muxer::new(listener, path.clone(), GUEST, &[ALLOWED], PortStart::Boot).unwrap();
    Setup { _dir: dir, path, m }
}

fn from_guest(op_: u16, src_port: u32, dst_port: u32) -> VsockHeader {
    VsockHeader {
        src_cid: GUEST,
        dst_cid: HOST_CID,
        src_port,
        dst_port,
        len: 0,
        type_: TYPE_STREAM,
        op: op_,
        flags: 0,
        buf_alloc: 1 << 20,
        fwd_cnt: 0,
    }
}

fn pump(m: &mut Muxer) {
    for _ in 0..20 {
        m.process_events();
        if m.has_pending_rx() {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The VMM closed the stream (with unread input the host sees a reset rather than EOF).
fn assert_closed(h: &mut UnixStream, what: &str) {
    let mut b = [0u8; 1];
    match h.read(&mut b) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("{what}: stream still open: {other:?}"),
    }
}

fn host(path: &std::path::Path) -> UnixStream {
    let s = UnixStream::connect(path).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s
}

/// Host connects; returns the stream and the host port from the guest's REQUEST.
fn host_connect(s: &mut Setup, port: u32, extra: &[u8]) -> (UnixStream, u32) {
    let mut h = host(&s.path);
    let mut first = hybrid::connect_line(port).into_bytes();
    first.extend_from_slice(extra);
    h.write_all(&first).unwrap();
    pump(&mut s.m);
    let mut buf = [0u8; 64];
    let req = s.m.recv_pkt(&mut buf).expect("REQUEST for the guest");
    assert_eq!(
        (req.op, req.dst_port, req.dst_cid),
        (op::REQUEST, port, GUEST)
    );
    (h, req.src_port)
}

#[test]
fn a_restored_vm_numbers_host_ports_clear_of_its_templates() {
    let mut s = setup();
    let (_h, boot) = host_connect(&mut s, 1024, b"");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let m = Muxer::new(
        listener,
        path.clone(),
        GUEST,
        &[ALLOWED],
        PortStart::Restored,
    )
    .unwrap();
    let mut r = Setup { _dir: dir, path, m };
    let (_h2, restored) = host_connect(&mut r, 1024, b"");
    assert_eq!(boot, LOCAL_PORT_FIRST, "a booted VM's first connection");
    assert_eq!(restored, RESTORED_PORT_FIRST);
    assert!((LOCAL_PORT_FIRST..LOCAL_PORT_END).contains(&restored));
    assert!(restored - boot >= 1 << 29, "half the range between them");
}

#[test]
fn host_initiated_connect_ok_and_early_bytes_survive() {
    let mut s = setup();
    let (mut h, local) = host_connect(&mut s, 1024, b"early");
    assert!((1 << 30..1 << 31).contains(&local));
    s.m.send_pkt(&from_guest(op::RESPONSE, 1024, local), &[])
        .unwrap();
    let mut line = vec![0u8; hybrid::ok_line(local).len()];
    h.read_exact(&mut line).unwrap();
    assert_eq!(hybrid::parse_ok(&line), Ok(local));
    pump(&mut s.m);
    let mut buf = [0u8; 64];
    let pkt = s.m.recv_pkt(&mut buf).unwrap();
    assert_eq!((pkt.op, &buf[..pkt.len as usize]), (op::RW, &b"early"[..]));
    let mut rw = from_guest(op::RW, 1024, local);
    rw.len = 4;
    s.m.send_pkt(&rw, b"pong").unwrap();
    let mut got = [0u8; 4];
    h.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"pong");
}

#[test]
fn describe_names_each_connection_and_its_credit() {
    let mut s = setup();
    assert_eq!(
        s.m.describe(),
        vec![
            "0 connections, 0 host handshakes pending, 0 packets owed to the guest waiting for \
              RX buffers (0 of them resets)"
                .to_string()
        ]
    );
    let (_h, local) = host_connect(&mut s, 1024, b"early");
    s.m.send_pkt(&from_guest(op::RESPONSE, 1024, local), &[])
        .unwrap();
    pump(&mut s.m);
    let mut buf = [0u8; 64];
    s.m.recv_pkt(&mut buf).expect("the early bytes");
    let lines = s.m.describe();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(lines[0].starts_with("1 connections"), "{lines:?}");
    let conn = &lines[1];
    for want in [
        format!("connection host port {local} guest port 1024: state=established"),
        format!(
            "guest-credit={} (buf_alloc {}, sent 5, guest consumed 0)",
            (1 << 20) - 5,
            1 << 20
        ),
        "host-forwarded=0".to_string(),
        "queued-for-host=0".to_string(),
    ] {
        assert!(conn.contains(&want), "{want:?} not in {conn}");
    }
}

#[test]
fn guest_rst_to_a_host_connection_closes_the_stream() {
    let mut s = setup();
    let (mut h, local) = host_connect(&mut s, 1024, b"");
    s.m.send_pkt(&from_guest(op::RST, 1024, local), &[])
        .unwrap();
    assert_eq!(s.m.connections(), 0);
    let mut b = [0u8; 1];
    assert_eq!(h.read(&mut b).unwrap(), 0, "closed without OK");
}

#[test]
fn bad_handshakes_close_the_host_stream() {
    let mut s = setup();
    for line in [&b"HELLO 5\n"[..], b"CONNECT x\n", &[b'C'; 40]] {
        let mut h = host(&s.path);
        h.write_all(line).unwrap();
        pump(&mut s.m);
        assert!(!s.m.has_pending_rx());
        assert_closed(&mut h, &String::from_utf8_lossy(line));
    }
}

#[test]
fn guest_connect_to_an_allowed_port_reaches_socket_underscore_port() {
    let mut s = setup();
    let mut p = s.path.clone().into_os_string();
    p.push(format!("_{ALLOWED}"));
    let listener = UnixListener::bind(PathBuf::from(p)).unwrap();
    s.m.send_pkt(&from_guest(op::REQUEST, 5000, ALLOWED), &[])
        .unwrap();
    let mut buf = [0u8; 64];
    let resp = s.m.recv_pkt(&mut buf).unwrap();
    assert_eq!(
        (resp.op, resp.src_port, resp.dst_port),
        (op::RESPONSE, ALLOWED, 5000)
    );
    let (mut peer, _) = listener.accept().unwrap();
    peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut rw = from_guest(op::RW, 5000, ALLOWED);
    rw.len = 2;
    s.m.send_pkt(&rw, b"hi").unwrap();
    let mut got = [0u8; 2];
    peer.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"hi");
    let key = ConnKey {
        local_port: ALLOWED,
        peer_port: 5000,
    };
    assert_eq!(s.m.state_of(key), Some(ConnState::Established));
    let mut sd = from_guest(op::SHUTDOWN, 5000, ALLOWED);
    sd.flags = SHUTDOWN_RCV | SHUTDOWN_SEND;
    s.m.send_pkt(&sd, &[]).unwrap();
    assert_eq!(s.m.recv_pkt(&mut buf).unwrap().op, op::RST);
    assert_eq!(s.m.connections(), 0);
}

#[test]
fn guest_connects_to_forbidden_or_dead_ports_are_reset() {
    let mut s = setup();
    let err =
        s.m.send_pkt(&from_guest(op::REQUEST, 5000, 53), &[])
            .unwrap_err();
    assert_eq!(err, MuxerError::PortNotAllowed(53));
    let err =
        s.m.send_pkt(&from_guest(op::REQUEST, 5001, ALLOWED), &[])
            .unwrap_err();
    assert!(
        matches!(err, MuxerError::ConnectFailed { port: ALLOWED, .. }),
        "{err}"
    );
    let mut buf = [0u8; 64];
    for guest_port in [5000, 5001] {
        let rst = s.m.recv_pkt(&mut buf).unwrap();
        assert_eq!((rst.op, rst.dst_port), (op::RST, guest_port));
    }
    assert_eq!(s.m.connections(), 0);
}

#[test]
fn packets_for_unknown_connections_get_rst_and_misaddressed_ones_are_dropped() {
    let mut s = setup();
    let mut rw = from_guest(op::RW, 7, 8);
    rw.len = 1;
    let err = s.m.send_pkt(&rw, b"x").unwrap_err();
    assert!(matches!(err, MuxerError::NoConnection { op: op::RW, .. }));
    assert_eq!(
        s.m.send_pkt(&from_guest(op::RST, 7, 8), &[]),
        Ok(()),
        "RST is never answered"
    );
    let mut bad = from_guest(op::REQUEST, 7, ALLOWED);
    bad.src_cid = 99;
    assert!(matches!(
        s.m.send_pkt(&bad, &[]),
        Err(MuxerError::Misaddressed(_))
    ));
    let mut buf = [0u8; 64];
    assert_eq!(s.m.recv_pkt(&mut buf).unwrap().op, op::RST);
    assert!(s.m.recv_pkt(&mut buf).is_none(), "only one reset");
}

#[test]
fn unknown_ops_and_types_reset() {
    let mut s = setup();
    let err = s.m.send_pkt(&from_guest(42, 7, 8), &[]).unwrap_err();
    assert!(matches!(
        err,
        MuxerError::BadHeader {
            why: HeaderError::UnknownOp(42),
            ..
        }
    ));
    let mut dgram = from_guest(op::REQUEST, 7, ALLOWED);
    dgram.type_ = 3;
    assert!(matches!(
        s.m.send_pkt(&dgram, &[]),
        Err(MuxerError::BadHeader {
            why: HeaderError::Type(3),
            ..
        })
    ));
    let mut buf = [0u8; 64];
    assert_eq!(s.m.recv_pkt(&mut buf).unwrap().op, op::RST);
    assert_eq!(s.m.recv_pkt(&mut buf).unwrap().op, op::RST);
}

#[test]
fn resets_owed_to_a_guest_that_takes_no_rx_buffers_are_bounded() {
    let mut s = setup();
    let mut full = 0;
    for port in 0..(MAX_QUEUED_RESETS as u32 + 20) {
        if s.m.send_pkt(&from_guest(op::REQUEST, port, 999), &[]) == Err(MuxerError::ResetQueueFull)
        {
            full += 1;
        }
    }
    assert_eq!(full, 20);
}

#[test]
fn dropping_the_muxer_closes_every_host_stream() {
    let mut s = setup();
    let (mut h, local) = host_connect(&mut s, 1024, b"");
    s.m.send_pkt(&from_guest(op::RESPONSE, 1024, local), &[])
        .unwrap();
    let mut line = vec![0u8; hybrid::ok_line(local).len()];
    h.read_exact(&mut line).unwrap();
    drop(s.m);
    let mut b = [0u8; 1];
    assert_eq!(h.read(&mut b).unwrap(), 0);
}

/// The handler with the real muxer: a guest that ignores credit loses its connection (RST
/// in its RX queue), the device goes on.
#[test]
fn a_guest_ignoring_credit_is_reset_through_the_queues() {
    use crate::devices::virtio::chain::testing::memory;
    use crate::devices::virtio::interrupt::InterruptReason;
    use crate::devices::virtio::vsock::handler::tests::Rig;
    use crate::devices::virtio::vsock::handler::VsockFault;

    let s = setup();
    let mut p = s.path.clone().into_os_string();
    p.push(format!("_{ALLOWED}"));
    let listener = UnixListener::bind(PathBuf::from(p)).unwrap();
    let mem = memory();
    let mut r = Rig::new(&mem, s.m);
    r.send(from_guest(op::REQUEST, 5000, ALLOWED), &[]);
    r.dev.process_tx();
    let resp_buf = r.rx_buffer(64);
    r.dev.process_rx();
    assert_eq!(r.read_rx(resp_buf).0.op, op::RESPONSE);
    let _peer = listener.accept().unwrap(); // never reads
    let chunk = vec![0xa5u8; 32 * 1024];
    let mut faults = Vec::new();
    for _ in 0..40 {
        let mut rw = from_guest(op::RW, 5000, ALLOWED);
        rw.len = chunk.len() as u32;
        r.send(rw, &chunk);
        faults = r.dev.process_tx();
        if !faults.is_empty() {
            break;
        }
        // The test queue recycles descriptors from a fresh table each time it is rebuilt, so
        // keep each batch small.
    }
    assert!(
        matches!(
            &faults[..],
            [VsockFault::Backend(MuxerError::Conn {
                source: ConnError::CreditViolation { .. },
                ..
            })]
        ),
        "{faults:?}"
    );
    let rst_buf = r.rx_buffer(64);
    r.dev.process_rx();
    let (h, _) = r.read_rx(rst_buf);
    assert_eq!((h.op, h.dst_port), (op::RST, 5000));
    assert!(!r.dev.is_broken());
    assert_eq!(r.irq.count(InterruptReason::NeedsReset), 0);
    assert_eq!(r.dev.backend().connections(), 0);
}

#[test]
fn host_streams_time_out_without_a_connect_line() {
    let mut s = setup();
    let mut h = host(&s.path);
    h.write_all(b"CONN").unwrap();
    pump(&mut s.m);
    let deadline = s.m.next_deadline().expect("the handshake has a deadline");
    s.m.on_timeout(deadline);
    assert_closed(&mut h, "timed out");
    assert!(s.m.next_deadline().is_none());
}

fn xorshift(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

/// The end-to-end test's echo (`tests/tests/vmm_vsock.rs`) without KVM: a host program writes
/// megabytes through the hybrid socket and reads them back while a guest modelled on Linux
/// 6.1's virtio transport echoes them (its 256 KiB window, RX buffers of one page, a credit
/// update when it drains its queue or its window runs low, an answer to each CREDIT_REQUEST).
/// The host side reads slowly at times, so the device's buffer fills and credit runs out both
/// ways; the connection must never be reset and every byte must come back in order.
#[test]
fn a_guest_within_its_credit_echoes_megabytes_without_a_reset() {
    use std::collections::VecDeque;
    const LEN: usize = 4 << 20;
    const WINDOW: u32 = 256 * 1024;
    const RX_PAYLOAD: usize = 4096 - 320 - 44; // SKB_WITH_OVERHEAD(4 KiB) minus the header
    let mut s = setup();
    let (h, local) = host_connect(&mut s, 1024, b"");
    let guest = |op_: u16, len: u32, fwd_cnt: u32| {
        let mut x = from_guest(op_, 1024, local);
        (x.len, x.buf_alloc, x.fwd_cnt) = (len, WINDOW, fwd_cnt);
        x
    };
    s.m.send_pkt(&guest(op::RESPONSE, 0, 0), &[]).unwrap();
    let mut line = vec![0u8; hybrid::ok_line(local).len()];
    (&h).read_exact(&mut line).unwrap();
    let pattern = |i: usize| (i.wrapping_mul(31) ^ (i >> 9)) as u8;

    let mut w = h.try_clone().unwrap();
    let writer = std::thread::spawn(move || -> std::io::Result<()> {
        let mut rng = 7u64;
        w.write_all(b"echo\n")?;
        for start in (0..LEN).step_by(64 * 1024) {
            let chunk: Vec<u8> = (start..start + 64 * 1024).map(pattern).collect();
            w.write_all(&chunk)?;
            if xorshift(&mut rng) % 4 == 0 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        Ok(())
    });
    let mut r = h.try_clone().unwrap();
    let reader = std::thread::spawn(move || -> Result<usize, String> {
        let mut rng = 11u64;
        let mut buf = vec![0u8; 64 * 1024];
        let mut got = 0;
        r.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        while got < LEN {
            let want = 1 + (xorshift(&mut rng) as usize % buf.len());
            let n = match r.read(&mut buf[..want]) {
                Ok(0) => return Err(format!("end of stream after {got} bytes")),
                Ok(n) => n,
                Err(e) => return Err(format!("{e} after {got} bytes")),
            };
            if let Some(i) = (0..n).find(|i| buf[*i] != pattern(got + i)) {
                return Err(format!("byte {} differs", got + i));
            }
            got += n;
            if xorshift(&mut rng) % 8 == 0 {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        Ok(got)
    });

    // The guest: its receive queue and window, its send credit, and the echo program.
    let (mut rx_queue, mut rx_bytes) = (VecDeque::<u8>::new(), 0u32);
    let (mut fwd_cnt, mut last_fwd_cnt) = (0u32, 0u32);
    let (mut tx_cnt, mut peer_buf_alloc, mut peer_fwd_cnt) = (0u32, 0u32, 0u32);
    let (mut to_echo, mut skip) = (VecDeque::<u8>::new(), b"echo\n".len());
    let mut tx_vq = VecDeque::<(VsockHeader, Vec<u8>)>::new();
    let mut rng = 5u64;
    let mut buf = vec![0u8; RX_PAYLOAD];
    let (mut credit_requests, mut most_queued) = (0, 0);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !reader.is_finished() {
        assert!(std::time::Instant::now() < deadline, "stalled");
        s.m.process_events();
        let queued = s.m.conns.values().map(|c| c.queued()).max();
        most_queued = most_queued.max(queued.expect("the connection is gone"));
        // The device takes a few TX packets, then fills a few RX buffers.
        for _ in 0..xorshift(&mut rng) % 8 {
            let Some((hdr, data)) = tx_vq.pop_front() else {
                break;
            };
            s.m.send_pkt(&hdr, &data).unwrap();
        }
        for _ in 0..xorshift(&mut rng) % 48 {
            let Some(p) = s.m.recv_pkt(&mut buf) else {
                break;
            };
            (peer_buf_alloc, peer_fwd_cnt) = (p.buf_alloc, p.fwd_cnt);
            match p.op {
                op::RW => {
                    assert!(rx_bytes + p.len <= WINDOW, "the device overran the window");
                    rx_bytes += p.len;
                    rx_queue.extend(&buf[..p.len as usize]);
                }
                op::CREDIT_REQUEST => {
                    credit_requests += 1;
                    last_fwd_cnt = fwd_cnt;
                    tx_vq.push_back((guest(op::CREDIT_UPDATE, 0, fwd_cnt), vec![]));
                }
                op::CREDIT_UPDATE => {}
                other => panic!("the device sent operation {other}"),
            }
        }
        // The echo program: read what is there (up to 64 KiB), then write it back.
        if to_echo.is_empty() && !rx_queue.is_empty() {
            let n = rx_queue.len().min(64 * 1024);
            to_echo.extend(rx_queue.drain(..n));
            let drop_line = skip.min(n);
            to_echo.drain(..drop_line);
            skip -= drop_line;
            rx_bytes -= n as u32;
            fwd_cnt = fwd_cnt.wrapping_add(n as u32);
            if WINDOW - fwd_cnt.wrapping_sub(last_fwd_cnt) < 64 * 1024 || rx_queue.is_empty() {
                last_fwd_cnt = fwd_cnt;
                tx_vq.push_back((guest(op::CREDIT_UPDATE, 0, fwd_cnt), vec![]));
            }
        }
        while !to_echo.is_empty() {
            let credit = peer_buf_alloc.saturating_sub(tx_cnt.wrapping_sub(peer_fwd_cnt));
            let n = (to_echo.len() as u32).min(64 * 1024).min(credit);
            if n == 0 {
                break;
            }
            tx_cnt = tx_cnt.wrapping_add(n);
            last_fwd_cnt = fwd_cnt;
            let data: Vec<u8> = to_echo.drain(..n as usize).collect();
            tx_vq.push_back((guest(op::RW, n, fwd_cnt), data));
        }
        if tx_vq.is_empty() {
            std::thread::sleep(Duration::from_micros(100));
        }
    }
    writer.join().unwrap().unwrap();
    assert_eq!(reader.join().unwrap(), Ok(LEN));
    eprintln!("{credit_requests} credit requests, up to {most_queued} bytes queued");
}

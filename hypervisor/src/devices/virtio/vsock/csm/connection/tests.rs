//! The connection on its own, over a Unix socket pair: both handshakes and the timeout, data
//! both ways within credit, the credit limits (the device's and the guest's), draining queued
//! bytes with credit updates, shutdown from either side, and out-of-order operations.

use super::*;
use std::io::Read;
use std::time::Duration;

const GUEST: u64 = 3;

fn pair() -> (UnixStream, UnixStream) {
    let (a, b) = UnixStream::pair().unwrap();
    a.set_nonblocking(true).unwrap();
    b.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    (a, b)
}

fn from_guest(op_: u16, len: u32) -> VsockHeader {
    VsockHeader {
        src_cid: GUEST,
        dst_cid: HOST_CID,
        src_port: 1025,
        dst_port: 52,
        len,
        type_: TYPE_STREAM,
        op: op_,
        flags: 0,
        buf_alloc: 4096,
        fwd_cnt: 0,
    }
}

fn established() -> (Connection<UnixStream>, UnixStream) {
    let (a, b) = pair();
    let mut c = Connection::new_peer(a, &from_guest(op::REQUEST, 0));
    let mut buf = [0u8; 64];
    assert_eq!(c.recv_pkt(&mut buf).unwrap().op, op::RESPONSE);
    assert_eq!(c.state(), ConnState::Established);
    (c, b)
}

#[test]
fn host_initiated_handshake_answers_ok_on_response() {
    let (a, mut b) = pair();
    let mut c = Connection::new_local(a, GUEST, 1 << 30, 52);
    let mut buf = [0u8; 64];
    let req = c.recv_pkt(&mut buf).unwrap();
    assert_eq!(
        (req.op, req.src_port, req.dst_port),
        (op::REQUEST, 1 << 30, 52)
    );
    assert!(c.recv_pkt(&mut buf).is_none());
    let mut resp = from_guest(op::RESPONSE, 0);
    (resp.src_port, resp.dst_port) = (52, 1 << 30);
    c.send_pkt(&resp, &[]).unwrap();
    assert_eq!(c.state(), ConnState::Established);
    let mut line = [0u8; 14];
    b.read_exact(&mut line).unwrap();
    assert_eq!(&line, b"OK 1073741824\n");
}

#[test]
fn a_guest_that_never_answers_is_reset_at_the_deadline() {
    let (a, _b) = pair();
    let mut c = Connection::new_local(a, GUEST, 1 << 30, 52);
    let mut buf = [0u8; 64];
    c.recv_pkt(&mut buf).unwrap();
    c.on_timeout(Instant::now() + CLOSE_TIMEOUT + Duration::from_millis(1));
    assert!(!c.has_pending_rx(), "not yet: a busy guest answers late");
    c.on_timeout(Instant::now() + REQUEST_TIMEOUT + Duration::from_millis(1));
    assert_eq!(c.recv_pkt(&mut buf).unwrap().op, op::RST);
    assert!(c.is_killed());
}

#[test]
fn data_flows_both_ways_within_credit() {
    let (mut c, mut b) = established();
    c.send_pkt(&from_guest(op::RW, 5), b"hello").unwrap();
    let mut got = [0u8; 5];
    b.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"hello");
    b.write_all(b"world!").unwrap();
    c.notify(EventSet::IN);
    let mut buf = [0u8; 4];
    let h = c.recv_pkt(&mut buf).unwrap();
    assert_eq!((h.op, h.len, &buf[..]), (op::RW, 4, &b"worl"[..]));
    assert_eq!(h.fwd_cnt, 5, "our fwd_cnt rides on every packet");
    let h = c.recv_pkt(&mut buf).unwrap();
    assert_eq!((h.op, h.len), (op::RW, 2), "a full read asks for more");
    assert_eq!(c.peer_credit(), 4096 - 6);
}

#[test]
fn the_device_stops_at_the_guests_credit_and_asks_for_more() {
    let (mut c, mut b) = established();
    let mut hdr = from_guest(op::CREDIT_UPDATE, 0);
    hdr.buf_alloc = 3;
    c.send_pkt(&hdr, &[]).unwrap();
    b.write_all(b"abcdef").unwrap();
    c.notify(EventSet::IN);
    let mut buf = [0u8; 64];
    let h = c.recv_pkt(&mut buf).unwrap();
    assert_eq!((h.op, h.len), (op::RW, 3));
    assert_eq!(c.peer_credit(), 0);
    assert!(
        !c.interest().contains(EventSet::IN),
        "no polling without credit"
    );
    assert_eq!(c.recv_pkt(&mut buf).unwrap().op, op::CREDIT_REQUEST);
    hdr.fwd_cnt = 3;
    c.send_pkt(&hdr, &[]).unwrap();
    assert!(c.interest().contains(EventSet::IN));
}

#[test]
fn a_guest_that_ignores_credit_is_reset() {
    let (mut c, _b) = established();
    let big = vec![0u8; 65536];
    // The host never reads: the stream's buffer fills, then the connection buffer.
    let mut sent = 0usize;
    let err = loop {
        match c.send_pkt(&from_guest(op::RW, big.len() as u32), &big) {
            Ok(()) => sent += big.len(),
            Err(e) => break e,
        }
        assert!(sent < 64 << 20, "never refused");
    };
    assert!(
        matches!(err, ConnError::CreditViolation { len: 65536, .. }),
        "{err}"
    );
    assert!(c.queued() <= CONN_BUF_ALLOC as usize);
    let mut buf = [0u8; 64];
    assert_eq!(c.recv_pkt(&mut buf).unwrap().op, op::RST);
    assert!(c.is_killed());
}

#[test]
fn queued_bytes_drain_and_credit_updates_follow() {
    let (mut c, mut b) = established();
    let chunk = vec![7u8; 60_000];
    let mut sent = 0;
    while c.queued() == 0 {
        c.send_pkt(&from_guest(op::RW, chunk.len() as u32), &chunk)
            .unwrap();
        sent += chunk.len();
    }
    assert!(c.interest().contains(EventSet::OUT));
    let mut sink = vec![0u8; sent];
    let reader = std::thread::spawn(move || {
        b.read_exact(&mut sink).unwrap();
        sink.len()
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while c.queued() > 0 && Instant::now() < deadline {
        c.notify(EventSet::OUT);
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(c.queued(), 0, "the host reader drained the buffer");
    assert_eq!(reader.join().unwrap(), sent);
    let mut buf = [0u8; 8];
    let h = c.recv_pkt(&mut buf).unwrap();
    assert_eq!((h.op, h.fwd_cnt), (op::CREDIT_UPDATE, sent as u32));
}

#[test]
fn guest_shutdown_both_ways_ends_with_rst() {
    let (mut c, mut b) = established();
    let mut h = from_guest(op::SHUTDOWN, 0);
    h.flags = SHUTDOWN_SEND;
    c.send_pkt(&h, &[]).unwrap();
    assert_eq!(
        c.state(),
        ConnState::PeerClosed {
            rcv: false,
            send: true
        }
    );
    let mut one = [0u8; 1];
    assert_eq!(b.read(&mut one).unwrap(), 0, "the host reads end-of-file");
    let err = c.send_pkt(&from_guest(op::RW, 1), b"x").unwrap_err();
    assert!(matches!(err, ConnError::Protocol { op: op::RW, .. }));
    let (mut c, _b) = established();
    h.flags = SHUTDOWN_SEND | SHUTDOWN_RCV;
    c.send_pkt(&h, &[]).unwrap();
    let mut buf = [0u8; 8];
    assert_eq!(c.recv_pkt(&mut buf).unwrap().op, op::RST);
    assert!(c.is_killed());
}

#[test]
fn host_close_sends_shutdown_then_waits_for_rst() {
    let (mut c, b) = established();
    let mut w = b.try_clone().unwrap();
    w.write_all(b"last").unwrap();
    drop((w, b));
    c.notify(EventSet::IN | EventSet::HANG_UP);
    assert!(!c.wants_events(), "a hung-up stream is not polled");
    let mut buf = [0u8; 64];
    let h = c.recv_pkt(&mut buf).unwrap();
    assert_eq!((h.op, &buf[..h.len as usize]), (op::RW, &b"last"[..]));
    let h = c.recv_pkt(&mut buf).unwrap();
    assert_eq!(
        (h.op, h.flags),
        (op::SHUTDOWN, SHUTDOWN_RCV | SHUTDOWN_SEND)
    );
    assert_eq!(c.state(), ConnState::LocalClosed);
    c.send_pkt(&from_guest(op::RST, 0), &[]).unwrap();
    assert!(c.is_killed());
}

#[test]
fn out_of_order_ops_reset_the_connection() {
    let (a, _b) = pair();
    let mut c = Connection::new_local(a, GUEST, 1 << 30, 52);
    let err = c.send_pkt(&from_guest(op::RW, 1), b"x").unwrap_err();
    assert_eq!(
        err,
        ConnError::Protocol {
            op: op::RW,
            state: ConnState::LocalInit
        }
    );
    let (mut c, _b) = established();
    let err = c.send_pkt(&from_guest(op::RESPONSE, 0), &[]).unwrap_err();
    assert!(matches!(
        err,
        ConnError::Protocol {
            op: op::RESPONSE,
            ..
        }
    ));
    let mut buf = [0u8; 8];
    assert_eq!(c.recv_pkt(&mut buf).unwrap().op, op::RST);
}

/// A reset the device decides on its own, or an abrupt one from the guest, says why exactly
/// once; an orderly close and the guest's own faults (returned by `send_pkt`) add nothing.
#[test]
fn resets_that_send_pkt_does_not_return_say_why_once() {
    let (a, _b) = pair();
    let mut c = Connection::new_local(a, GUEST, 1 << 30, 52);
    c.on_timeout(Instant::now() + REQUEST_TIMEOUT + Duration::from_millis(1));
    let why = c.take_reset();
    assert_eq!(why, Some(ConnError::Timeout(ConnState::LocalInit)));
    assert!(why.unwrap().to_string().contains("within 10s in state"));
    assert_eq!(c.take_reset(), None, "reported once");

    let (mut c, _b) = established();
    c.notify(EventSet::ERROR);
    assert_eq!(c.take_reset(), Some(ConnError::StreamError));

    let (mut c, _b) = established();
    c.send_pkt(&from_guest(op::RST, 0), &[]).unwrap();
    assert!(c.is_killed());
    assert_eq!(
        c.take_reset(),
        Some(ConnError::PeerReset(ConnState::Established))
    );

    let (mut c, _b) = established();
    let mut h = from_guest(op::SHUTDOWN, 0);
    h.flags = SHUTDOWN_SEND | SHUTDOWN_RCV;
    c.send_pkt(&h, &[]).unwrap();
    let mut buf = [0u8; 8];
    assert_eq!(c.recv_pkt(&mut buf).unwrap().op, op::RST);
    c.send_pkt(&from_guest(op::RST, 0), &[]).unwrap();
    assert_eq!(c.take_reset(), None, "an orderly close is not a fault");

    let (mut c, _b) = established();
    c.send_pkt(&from_guest(op::RESPONSE, 0), &[]).unwrap_err();
    c.on_timeout(Instant::now() + CLOSE_TIMEOUT * 2);
    assert_eq!(c.take_reset(), None, "send_pkt already returned the reason");
}

#[test]
fn a_guest_with_a_small_window_gets_credit_after_half_of_it() {
    // Linux sends within min(our buf_alloc, its own) and never asks: a 16 KiB socket stalls
    // for good unless the device tells it what was forwarded.
    let (a, mut b) = pair();
    let mut req = from_guest(op::REQUEST, 0);
    req.buf_alloc = 16 * 1024;
    let mut c = Connection::new_peer(a, &req);
    let mut buf = [0u8; 64];
    assert_eq!(c.recv_pkt(&mut buf).unwrap().op, op::RESPONSE);
    let mut rw = from_guest(op::RW, 8 * 1024);
    rw.buf_alloc = 16 * 1024;
    c.send_pkt(&rw, &[1u8; 8 * 1024]).unwrap();
    let mut sink = vec![0u8; 8 * 1024];
    b.read_exact(&mut sink).unwrap();
    let h = c.recv_pkt(&mut buf).expect("a credit update is owed");
    assert_eq!((h.op, h.fwd_cnt), (op::CREDIT_UPDATE, 8 * 1024));
}

#[test]
fn the_guests_time_to_answer_starts_when_it_has_the_request() {
    let (a, _b) = pair();
    let mut c = Connection::new_local(a, GUEST, 1 << 30, 52);
    let made = Instant::now();
    // The REQUEST waits 50 ms for a receive buffer ...
    std::thread::sleep(Duration::from_millis(50));
    let mut buf = [0u8; 64];
    assert_eq!(c.recv_pkt(&mut buf).unwrap().op, op::REQUEST);
    // ... and the guest still has its full time from delivery, past the creation's deadline.
    c.on_timeout(made + REQUEST_TIMEOUT + Duration::from_millis(10));
    assert!(!c.has_pending_rx(), "reset before the guest had its time");
}

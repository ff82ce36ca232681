//! The malformed-input table: short or lying headers, chains in the wrong order or outside
//! guest RAM, no room for the reply, unknown opcodes, missing arguments, names without their
//! NUL. Each request is dropped or answered with its errno and reports its fault, the server
//! never sees the bad bytes, and the device goes on serving.

use super::*;

/// What a malformed case must produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Want {
    /// Returned unused (length 0).
    Dropped,
    /// Answered with this errno (a 16-byte error header carrying the request's id).
    Errno(i32),
}

/// (what, queue the case, outcome, the fault it must report, if any).
type Case = (
    &'static str,
    fn(&mut Rig) -> (u16, u64, u64),
    Want,
    Option<fn(&FsFault) -> bool>,
);

/// Queues a request whose header says `len` (whatever the real length is).
fn with_len(r: &mut Rig, opcode: u32, len: u32, args: &[u8], room: u32) -> (u16, u64, u64) {
    let (unique, mut bytes) = r.request_bytes(opcode, 1, args);
    bytes[..4].copy_from_slice(&len.to_le_bytes());
    let at = r.bytes_at(&bytes);
    let reply = r.alloc(u64::from(room.max(1)));
    let mut descs = vec![(at, bytes.len() as u32, false)];
    if room > 0 {
        descs.push((reply, room, true));
    }
    (r.queue_request(&descs), reply, unique)
}

/// Malformed requests: each gets its outcome and fault, the server never sees the bad bytes,
/// no reset is requested, and a good request after all of them is served.
#[test]
fn malformed_requests_end_that_request_and_the_device_goes_on() {
    use crate::devices::virtio::chain::ChainError as C;
    let cases: Vec<Case> = vec![
        (
            "short header",
            |r| {
                let (u, bytes) = r.request_bytes(Opcode::Getattr as u32, 1, &[]);
                let at = r.bytes_at(&bytes[..20]);
                let reply = r.alloc(64);
                (
                    r.queue_request(&[(at, 20, false), (reply, 64, true)]),
                    reply,
                    u,
                )
            },
            Want::Dropped,
            Some(|f| matches!(f, FsFault::ShortHeader { readable: 20, .. })),
        ),
        (
            "no readable buffer at all",
            |r| {
                let reply = r.alloc(64);
                (r.queue_request(&[(reply, 64, true)]), reply, 0)
            },
            Want::Dropped,
            Some(|f| matches!(f, FsFault::ShortHeader { readable: 0, .. })),
        ),
        (
            "header length past the chain",
            |r| {
                let len = (IN_HEADER_LEN + 100) as u32;
                with_len(r, Opcode::Lookup as u32, len, &name("hello.txt"), 64)
            },
            Want::Errno(libc::EINVAL),
            Some(|f| matches!(f, FsFault::LengthMismatch { readable: 50, .. })),
        ),
        (
            "header length below the header",
            |r| with_len(r, Opcode::Getattr as u32, 8, &[0; 16], 64),
            Want::Errno(libc::EINVAL),
            Some(|f| matches!(f, FsFault::LengthMismatch { len: 8, .. })),
        ),
        (
            "readable after writable",
            |r| {
                let (u, bytes) = r.request_bytes(Opcode::Getattr as u32, 1, &[0; 16]);
                let at = r.bytes_at(&bytes);
                let reply = r.alloc(64);
                let head = r.queue_request(&[(reply, 64, true), (at, bytes.len() as u32, false)]);
                (head, reply, u)
            },
            Want::Dropped,
            Some(|f| {
                matches!(
                    f,
                    FsFault::Chain {
                        source: C::ReadableAfterWritable { .. },
                        ..
                    }
                )
            }),
        ),
        (
            "reply buffer outside RAM",
            |r| {
                let (u, bytes) = r.request_bytes(Opcode::Getattr as u32, 1, &[0; 16]);
                let at = r.bytes_at(&bytes);
                let outside = (1 << 20) - 8;
                let head = r.queue_request(&[(at, bytes.len() as u32, false), (outside, 64, true)]);
                (head, outside, u)
            },
            Want::Dropped,
            Some(|f| {
                matches!(
                    f,
                    FsFault::Chain {
                        source: C::OutsideRam { position: 1, .. },
                        ..
                    }
                )
            }),
        ),
        (
            "request outside RAM",
            |r| {
                let reply = r.alloc(64);
                let head = r.queue_request(&[(0x4000_0000, 56, false), (reply, 64, true)]);
                (head, reply, 0)
            },
            Want::Dropped,
            Some(|f| {
                matches!(
                    f,
                    FsFault::Chain {
                        source: C::OutsideRam { position: 0, .. },
                        ..
                    }
                )
            }),
        ),
        (
            "no room for the reply (and not executed)",
            |r| {
                let args = join(&[
                    MkdirIn {
                        mode: 0o755,
                        umask: 0,
                    }
                    .as_slice(),
                    &name("nope"),
                ]);
                with_len(
                    r,
                    Opcode::Mkdir as u32,
                    (IN_HEADER_LEN + args.len()) as u32,
                    &args,
                    0,
                )
            },
            Want::Dropped,
            Some(|f| matches!(f, FsFault::NoReplyRoom { writable: 0, .. })),
        ),
        (
            "unknown opcode 7",
            |r| with_len(r, 7, IN_HEADER_LEN as u32, &[], 64),
            Want::Errno(libc::ENOSYS),
            None,
        ),
        (
            "unknown opcode 4000",
            |r| with_len(r, 4000, IN_HEADER_LEN as u32, &[], 64),
            Want::Errno(libc::ENOSYS),
            None,
        ),
        (
            "arguments missing",
            |r| with_len(r, Opcode::Open as u32, IN_HEADER_LEN as u32, &[], 64),
            Want::Errno(libc::EINVAL),
            Some(|f| {
                matches!(
                    f,
                    FsFault::Malformed {
                        errno: libc::EINVAL,
                        ..
                    }
                )
            }),
        ),
        (
            "name without its NUL",
            |r| {
                let n = b"hello.txt";
                with_len(
                    r,
                    Opcode::Lookup as u32,
                    (IN_HEADER_LEN + n.len()) as u32,
                    n,
                    64,
                )
            },
            Want::Errno(libc::EINVAL),
            Some(|f| matches!(f, FsFault::Malformed { .. })),
        ),
        (
            "reply does not fit",
            |r| {
                let n = name("hello.txt");
                with_len(
                    r,
                    Opcode::Lookup as u32,
                    (IN_HEADER_LEN + n.len()) as u32,
                    &n,
                    16,
                )
            },
            Want::Errno(libc::EIO),
            Some(|f| {
                matches!(
                    f,
                    FsFault::Malformed {
                        errno: libc::EIO,
                        ..
                    }
                )
            }),
        ),
    ];
    let dir = share();
    let mem = memory();
    let mut r = Rig::new(&mem, dir.path(), FsCache::Auto);
    r.init();
    for (what, build, want, fault_ok) in cases {
        let (head, reply_at, unique) = build(&mut r);
        let run = r.dev.process_queue(REQUEST_QUEUE);
        let reply = r.reply(&r.rq, head, reply_at);
        match want {
            Want::Dropped => assert_eq!(reply.used, 0, "{what}: {reply:?}"),
            Want::Errno(e) => {
                assert_eq!(reply.used as usize, OUT_HEADER_LEN, "{what}");
                assert_eq!(reply.errno(), e, "{what}");
                assert_eq!(reply.header.unique, unique, "{what}: the request's id");
            }
        }
        match (run.faults.as_slice(), fault_ok) {
            ([], None) => {}
            ([f], Some(ok)) => assert!(ok(f), "{what}: unexpected fault {f}"),
            (faults, _) => panic!("{what}: faults {faults:?}"),
        }
        assert_eq!(r.irq.count(InterruptReason::NeedsReset), 0, "{what}");
        assert!(!r.dev.is_broken(), "{what}");
    }
    assert!(
        !dir.path().join("nope").exists(),
        "a request without reply room ran"
    );
    // Still serving.
    let entry = r.lookup(1, "hello.txt").unwrap();
    let fh = r.open(entry.nodeid, libc::O_RDONLY).unwrap();
    assert_eq!(r.read(entry.nodeid, fh, 5).unwrap(), b"hello");
}

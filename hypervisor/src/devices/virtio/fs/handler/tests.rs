//! FUSE over the queues on fake guest memory with a fake interrupt, against a temporary
//! directory: a round trip (INIT, LOOKUP, OPEN, READ, CREATE, WRITE) and broken queues; in
//! [`malformed`] the malformed-input table, in [`escape`] and [`mounts`] the ways out of the
//! share and the mounts the host makes later.

mod escape;
mod flags;
mod malformed;
mod mounts;

use std::ffi::CString;
use std::path::Path;
use std::sync::Arc;

use fuse_backend_rs::abi::fuse_abi::{
    Attr, AttrOut, CreateIn, EntryOut, ForgetIn, GetattrIn, InHeader, InitIn, InitOut, MkdirIn,
    Opcode, OpenIn, OpenOut, OutHeader, ReadIn, ReleaseIn, WriteIn, WriteOut,
};
use husk_protocol::vm_config::FsCache;
use vm_memory::{ByteValued, Bytes, GuestAddress};

use super::*;
use crate::devices::virtio::chain::testing::{memory, Desc, TestQueue};
use crate::devices::virtio::fs::backend::{confine_worker_thread, new_server, private_fs};
use crate::devices::virtio::interrupt::FakeInterrupt;

const HIPRIO_BASE: u64 = 0;
const REQUEST_BASE: u64 = 0x1000;
const QSIZE: u16 = 64;
/// Room for any reply in these tests.
const ROOM: u32 = 8192;

/// A decoded reply.
#[derive(Debug)]
pub(crate) struct Reply {
    pub used: u32,
    pub header: OutHeader,
    pub body: Vec<u8>,
}

impl Reply {
    /// The errno of an error reply (0 on success).
    pub fn errno(&self) -> i32 {
        -self.header.error
    }

    /// The body as a FUSE reply structure.
    pub fn out<T: ByteValued + Default>(&self) -> T {
        assert_eq!(self.errno(), 0, "an error reply: {self:?}");
        let mut v = T::default();
        let n = std::mem::size_of::<T>().min(self.body.len());
        v.as_mut_slice()[..n].copy_from_slice(&self.body[..n]);
        v
    }
}

pub(crate) struct Rig<'a> {
    pub mem: &'a GuestMemory,
    pub hq: TestQueue<'a>,
    pub rq: TestQueue<'a>,
    pub irq: Arc<FakeInterrupt>,
    pub dev: FsQueues,
    next_buf: u64,
    next_unique: u64,
}

pub(crate) fn name(s: &str) -> Vec<u8> {
    CString::new(s).unwrap().into_bytes_with_nul()
}

pub(crate) fn join(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

/// A request's bytes: a header (as root) whose `len` is the real length, then `args`.
pub(crate) fn request(opcode: u32, unique: u64, nodeid: u64, args: &[u8]) -> Vec<u8> {
    let header = InHeader {
        len: (IN_HEADER_LEN + args.len()) as u32,
        opcode,
        unique,
        nodeid,
        uid: 0,
        gid: 0,
        pid: 1,
        padding: 0,
    };
    join(&[header.as_slice(), args])
}

impl<'a> Rig<'a> {
    /// A device serving `root`. The calling (test) thread gets its own umask first: the server
    /// sets it to 0 at INIT, as it does in the worker thread.
    pub fn new(mem: &'a GuestMemory, root: &Path, cache: FsCache) -> Self {
        confine_worker_thread().unwrap();
        Self::unconfined(mem, root, cache)
    }

    /// [`Rig::new`] for a test that mounts things itself after INIT: the thread keeps its
    /// capabilities (it gets its own umask only).
    pub fn new_keeping_capabilities(mem: &'a GuestMemory, root: &Path, cache: FsCache) -> Self {
        private_fs().unwrap();
        Self::unconfined(mem, root, cache)
    }

    fn unconfined(mem: &'a GuestMemory, root: &Path, cache: FsCache) -> Self {
        let hq = TestQueue::new(mem, HIPRIO_BASE, QSIZE);
        let rq = TestQueue::new(mem, REQUEST_BASE, QSIZE);
        let irq = Arc::new(FakeInterrupt::default());
        let server = new_server(root, cache).unwrap();
        let dev = FsQueues::new(mem.clone(), [hq.queue(), rq.queue()], irq.clone(), server);
        Rig {
            mem,
            hq,
            rq,
            irq,
            dev,
            next_buf: 0x1_0000,
            next_unique: 1,
        }
    }

    /// Guest memory for `len` bytes.
    pub fn alloc(&mut self, len: u64) -> u64 {
        let at = self.next_buf;
        self.next_buf += len.next_multiple_of(0x100).max(0x100);
        assert!(self.next_buf < 1 << 20, "test memory exhausted");
        at
    }

    /// A request's bytes (with a fresh `unique`); returns the `unique` too.
    pub fn request_bytes(&mut self, opcode: u32, nodeid: u64, args: &[u8]) -> (u64, Vec<u8>) {
        let unique = self.next_unique;
        self.next_unique += 1;
        (unique, request(opcode, unique, nodeid, args))
    }

    /// Writes `bytes` to fresh guest memory; returns the address.
    pub fn bytes_at(&mut self, bytes: &[u8]) -> u64 {
        let at = self.alloc(bytes.len() as u64);
        self.mem.write_slice(bytes, GuestAddress(at)).unwrap();
        at
    }

    /// Queues `descs` on the request queue.
    pub fn queue_request(&mut self, descs: &[Desc]) -> u16 {
        self.rq.add(descs)
    }

    /// Queues a well-formed request (one readable buffer, one writable of `room` bytes);
    /// returns (head, reply address).
    pub fn queue(&mut self, opcode: u32, nodeid: u64, args: &[u8], room: u32) -> (u16, u64) {
        let (_, bytes) = self.request_bytes(opcode, nodeid, args);
        let req = self.bytes_at(&bytes);
        let reply = self.alloc(u64::from(room));
        let head = self
            .rq
            .add(&[(req, bytes.len() as u32, false), (reply, room, true)]);
        (head, reply)
    }

    /// The reply to the chain `head`, whose writable bytes start at `at`.
    pub fn reply(&self, q: &TestQueue, head: u16, at: u64) -> Reply {
        let used = q
            .used()
            .into_iter()
            .find(|(id, _)| *id == u32::from(head))
            .unwrap_or_else(|| panic!("chain {head} was not returned"))
            .1;
        let mut header = OutHeader::default();
        if used as usize >= OUT_HEADER_LEN {
            self.mem
                .read_slice(header.as_mut_slice(), GuestAddress(at))
                .unwrap();
            assert_eq!(header.len, used, "the header's length is the used length");
        }
        let mut body = vec![0u8; (used as usize).saturating_sub(OUT_HEADER_LEN)];
        if !body.is_empty() {
            self.mem
                .read_slice(&mut body, GuestAddress(at + OUT_HEADER_LEN as u64))
                .unwrap();
        }
        Reply { used, header, body }
    }

    /// Sends one request and returns its reply; no fault may be reported.
    pub fn call(&mut self, opcode: Opcode, nodeid: u64, args: &[u8]) -> Reply {
        let (head, at) = self.queue(opcode as u32, nodeid, args, ROOM);
        let run = self.dev.process_queue(REQUEST_QUEUE);
        assert!(run.faults.is_empty(), "{:?}", run.faults);
        self.reply(&self.rq, head, at)
    }

    pub fn init(&mut self) -> InitOut {
        let init = InitIn {
            major: 7,
            minor: 31,
            max_readahead: 128 << 10,
            flags: 0,
        };
        self.call(Opcode::Init, 0, init.as_slice()).out()
    }

    pub fn lookup(&mut self, parent: u64, n: &str) -> Result<EntryOut, i32> {
        let r = self.call(Opcode::Lookup, parent, &name(n));
        if r.errno() == 0 {
            Ok(r.out())
        } else {
            Err(r.errno())
        }
    }

    pub fn open(&mut self, node: u64, flags: i32) -> Result<u64, i32> {
        let args = OpenIn {
            flags: flags as u32,
            fuse_flags: 0,
        };
        let r = self.call(Opcode::Open, node, args.as_slice());
        if r.errno() == 0 {
            Ok(r.out::<OpenOut>().fh)
        } else {
            Err(r.errno())
        }
    }

    pub fn read(&mut self, node: u64, fh: u64, size: u32) -> Result<Vec<u8>, i32> {
        let args = ReadIn {
            fh,
            offset: 0,
            size,
            ..Default::default()
        };
        let r = self.call(Opcode::Read, node, args.as_slice());
        if r.errno() == 0 {
            Ok(r.body)
        } else {
            Err(r.errno())
        }
    }

    pub fn getattr(&mut self, node: u64) -> Result<Attr, i32> {
        let r = self.call(Opcode::Getattr, node, GetattrIn::default().as_slice());
        if r.errno() == 0 {
            Ok(r.out::<AttrOut>().attr)
        } else {
            Err(r.errno())
        }
    }
}

fn share() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("hello.txt"), b"hello from the host\n").unwrap();
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    dir
}

#[test]
fn init_lookup_open_read_round_trip() {
    let dir = share();
    let mem = memory();
    let mut r = Rig::new(&mem, dir.path(), FsCache::Auto);
    let init = r.init();
    assert_eq!(init.major, 7);
    assert!(init.max_write >= 4096, "{init:?}");

    let entry = r.lookup(1, "hello.txt").unwrap();
    assert!(entry.nodeid > 1);
    assert_eq!(entry.attr.size, 20);
    assert_eq!((entry.entry_valid, entry.attr_valid), (1, 1), "auto: 1 s");
    let fh = r.open(entry.nodeid, libc::O_RDONLY).unwrap();
    assert_eq!(
        r.read(entry.nodeid, fh, 4096).unwrap(),
        b"hello from the host\n"
    );
    assert!(r.irq.count(InterruptReason::UsedBuffer) >= 1);
    assert_eq!(r.irq.count(InterruptReason::NeedsReset), 0);
}

#[test]
fn create_and_write_reach_the_host() {
    let dir = share();
    let mem = memory();
    let mut r = Rig::new(&mem, dir.path(), FsCache::Never);
    r.init();
    let create = CreateIn {
        flags: (libc::O_WRONLY | libc::O_CREAT) as u32,
        mode: libc::S_IFREG | 0o644,
        umask: 0o022,
        fuse_flags: 0,
    };
    let reply = r.call(
        Opcode::Create,
        1,
        &join(&[create.as_slice(), &name("from-guest")]),
    );
    let entry: EntryOut = reply.out();
    assert_eq!(entry.entry_valid, 0, "never: no caching");
    let open: OpenOut = {
        let mut o = OpenOut::default();
        let at = std::mem::size_of::<EntryOut>();
        o.as_mut_slice()
            .copy_from_slice(&reply.body[at..at + std::mem::size_of::<OpenOut>()]);
        o
    };
    let data = b"written by the guest";
    let write = WriteIn {
        fh: open.fh,
        offset: 0,
        size: data.len() as u32,
        ..Default::default()
    };
    let w: WriteOut = r
        .call(
            Opcode::Write,
            entry.nodeid,
            &join(&[write.as_slice(), data]),
        )
        .out();
    assert_eq!(w.size as usize, data.len());
    assert_eq!(
        std::fs::read(dir.path().join("from-guest")).unwrap(),
        data.to_vec()
    );
    let mode = std::fs::metadata(dir.path().join("from-guest"))
        .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777)
        .unwrap();
    assert_eq!(mode, 0o644, "the guest's mode and umask, not the VMM's");
}

#[test]
fn forget_on_the_hiprio_queue_takes_no_reply() {
    let dir = share();
    let mem = memory();
    let mut r = Rig::new(&mem, dir.path(), FsCache::Auto);
    r.init();
    let node = r.lookup(1, "hello.txt").unwrap().nodeid;
    let (_, bytes) = r.request_bytes(
        Opcode::Forget as u32,
        node,
        ForgetIn { nlookup: 1 }.as_slice(),
    );
    let at = r.bytes_at(&bytes);
    let head = r.hq.add(&[(at, bytes.len() as u32, false)]);
    let run = r.dev.process_queue(HIPRIO_QUEUE);
    assert!(run.faults.is_empty(), "{:?}", run.faults);
    assert_eq!(r.hq.used(), vec![(u32::from(head), 0)]);
    // The inode is gone: the same node id is no longer valid.
    assert_eq!(r.getattr(node).unwrap_err(), libc::EBADF);
}

#[test]
fn destroy_is_answered_and_requests_before_init_fail_cleanly() {
    let dir = share();
    let mem = memory();
    let mut r = Rig::new(&mem, dir.path(), FsCache::Auto);
    assert_eq!(
        r.lookup(1, "hello.txt").unwrap_err(),
        libc::EBADF,
        "no INIT yet"
    );
    r.init();
    assert!(r.lookup(1, "hello.txt").is_ok());
    let reply = r.call(Opcode::Destroy, 0, &[]);
    assert_eq!((reply.used as usize, reply.errno()), (OUT_HEADER_LEN, 0));
}

#[test]
fn a_broken_queue_asks_for_a_reset_and_is_left_alone() {
    let dir = share();
    let mem = memory();
    // More chains claimed than the queue holds.
    let mut r = Rig::new(&mem, dir.path(), FsCache::Auto);
    r.rq.set_avail_idx(QSIZE + 5);
    let run = r.dev.process_queue(REQUEST_QUEUE);
    assert!(matches!(
        run.faults.as_slice(),
        [FsFault::Broken {
            queue: "request",
            ..
        }]
    ));
    assert!(r.dev.is_broken());
    assert_eq!(r.irq.count(InterruptReason::NeedsReset), 1);
    assert!(r.dev.process_queue(HIPRIO_QUEUE).faults.is_empty());
    assert!(r.rq.used().is_empty());
    // A head index past the table.
    let mut r = Rig::new(&mem, dir.path(), FsCache::Auto);
    r.hq.publish(QSIZE + 3);
    let run = r.dev.process_queue(HIPRIO_QUEUE);
    assert!(matches!(
        run.faults.as_slice(),
        [FsFault::Broken {
            queue: "hiprio",
            ..
        }]
    ));
    assert_eq!(r.irq.count(InterruptReason::NeedsReset), 1);
}

#[test]
fn an_interrupt_the_driver_asked_for_late_is_sent_on_recheck() {
    use crate::devices::virtio::late_notify::RECHECK;
    let dir = share();
    let mem = memory();
    let mut r = Rig::new(&mem, dir.path(), FsCache::Auto);
    let mut rq = r.rq.queue();
    rq.set_event_idx(true);
    let server = new_server(dir.path(), FsCache::Auto).unwrap();
    r.dev = FsQueues::new(mem.clone(), [r.hq.queue(), rq], r.irq.clone(), server);
    // The driver wants an interrupt only once the used index passes 5.
    let event = GuestAddress(r.rq.mock.avail_addr().0 + 4 + 2 * u64::from(QSIZE));
    mem.write_obj(5u16, event).unwrap();
    r.init();
    assert_eq!(r.irq.count(InterruptReason::UsedBuffer), 0);
    let due = r
        .dev
        .recheck_due()
        .expect("a reply without an interrupt is rechecked");
    assert!(
        r.dev.recheck(due).is_empty(),
        "the driver does not want it yet"
    );
    // Its used_event now says index 0: the reply it waits for was used long ago.
    mem.write_obj(0u16, event).unwrap();
    assert_eq!(r.dev.recheck(due + RECHECK), vec!["request"]);
    assert_eq!(r.irq.count(InterruptReason::UsedBuffer), 1);
    assert_eq!(r.dev.recheck_due(), None, "sent once");
}

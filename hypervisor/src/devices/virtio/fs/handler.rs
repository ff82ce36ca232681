//! Serving FUSE requests from the device's two queues.
//!
//! [`FsQueues`] owns the high-priority and request queues while the device is active, and the
//! FUSE server. It knows guest memory, the queues and the [`VirtioInterrupt`] trait, nothing of
//! epoll or eventfds, so tests drive it with fake guest memory and a fake interrupt.
//!
//! Each chain is one FUSE request: device-readable buffers with the request (a 40-byte
//! `fuse_in_header`, then the arguments), device-writable buffers for the reply (a 16-byte
//! `fuse_out_header`, then the result). The guest is hostile, so before the server sees a byte:
//! - the chain is walked and validated ([`GuestChain::parse`]: no loops, every buffer in RAM,
//!   no readable buffer after a writable one); a bad chain is returned unused;
//! - a request too short for its header is returned unused (there is no `unique` to answer);
//! - a request that needs a reply but has no room for a reply header is returned unused, and
//!   is not executed;
//! - a header whose `len` is below the header size or above the readable bytes is answered
//!   `EINVAL`;
//! - an opcode the server does not know is answered `ENOSYS` here (fuse-backend-rs would
//!   otherwise turn it into its `Opcode` enum, which has no value for it);
//! - when the server fails to decode a request or to fit its reply, the request is answered
//!   with an error header (`EINVAL`, or `EIO` when the reply did not fit) instead.
//!
//! Every one of these is reported as an [`FsFault`] (the worker logs them rate-limited) and the
//! device goes on. Only a queue that is itself broken (its available index claims more chains
//! than it holds, a head index past the table, a used ring outside RAM) stops the device: it
//! asks for a reset (DEVICE_NEEDS_RESET and a config interrupt) and leaves its queues alone.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use fuse_backend_rs::abi::fuse_abi::{InHeader, Opcode, OutHeader};
use fuse_backend_rs::transport::{Reader, VirtioFsWriter, Writer};
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::ByteValued;

use super::backend::FsServer;
use super::{HIPRIO_QUEUE, REQUEST_QUEUE};
use crate::devices::virtio::chain::{ChainError, GuestChain};
use crate::devices::virtio::interrupt::{InterruptReason, VirtioInterrupt};
use crate::devices::virtio::late_notify::{self, LateNotify};
use crate::memory::GuestMemory;

/// Size of `fuse_in_header`.
pub const IN_HEADER_LEN: usize = std::mem::size_of::<InHeader>();
/// Size of `fuse_out_header`.
pub const OUT_HEADER_LEN: usize = std::mem::size_of::<OutHeader>();
/// Chains served from one queue before the worker looks at its other events again.
pub const BATCH: usize = 256;

/// Something wrong with what the guest put in a queue.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FsFault {
    /// A chain that cannot be used at all; returned unused.
    #[error("virtio-fs {queue} queue: {source}; returned unused")]
    Chain {
        /// Queue name.
        queue: &'static str,
        /// What is wrong with the chain.
        source: ChainError,
    },
    /// Fewer readable bytes than a FUSE header; returned unused.
    #[error("virtio-fs {queue} queue: chain {head} has {readable} readable bytes, less than a FUSE header; returned unused")]
    ShortHeader {
        /// Queue name.
        queue: &'static str,
        /// The head index.
        head: u16,
        /// Readable bytes in the chain.
        readable: usize,
    },
    /// A request that needs a reply but has no room for one; returned unused, not executed.
    #[error("virtio-fs: request {unique} (opcode {opcode}) has {writable} writable bytes, no room for a reply; dropped")]
    NoReplyRoom {
        /// The request's id.
        unique: u64,
        /// Its opcode.
        opcode: u32,
        /// Writable bytes in the chain.
        writable: usize,
    },
    /// The header's length does not fit the chain.
    #[error("virtio-fs: request {unique} (opcode {opcode}) claims {len} bytes, the chain has {readable} readable; refused")]
    LengthMismatch {
        /// The request's id.
        unique: u64,
        /// Its opcode.
        opcode: u32,
        /// The header's `len`.
        len: u32,
        /// Readable bytes in the chain.
        readable: usize,
    },
    /// The server could not decode the request or fit its reply.
    #[error("virtio-fs: request {unique} (opcode {opcode}): {why}; answered errno {errno}")]
    Malformed {
        /// The request's id.
        unique: u64,
        /// Its opcode.
        opcode: u32,
        /// What went wrong.
        why: String,
        /// The error sent back (0 when no reply was possible).
        errno: i32,
    },
    /// The queue itself is broken; the device needs a reset.
    #[error("virtio-fs {queue} queue: {why}; device needs a reset")]
    Broken {
        /// Queue name.
        queue: &'static str,
        /// What is wrong.
        why: String,
    },
}

/// What became of one chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A reply of this many bytes was written (by the server, or an error header by the device).
    Replied(u32),
    /// The request takes no reply (FORGET, BATCH_FORGET, INTERRUPT) and was handled.
    NoReply,
    /// The chain was returned unused: it could carry neither a request nor a reply.
    Dropped,
}

impl Outcome {
    /// The length that goes in the used ring.
    pub fn used_len(self) -> u32 {
        match self {
            Outcome::Replied(n) => n,
            Outcome::NoReply | Outcome::Dropped => 0,
        }
    }
}

/// What one run over a queue did.
#[derive(Debug, Default)]
pub struct QueueRun {
    /// What the guest did wrong.
    pub faults: Vec<FsFault>,
    /// Chains served (any outcome).
    pub served: usize,
    /// The batch limit stopped the run with chains possibly left: run the queue again.
    pub more: bool,
}

/// The active device's queues and FUSE server.
pub struct FsQueues {
    mem: GuestMemory,
    queues: [Queue; 2],
    interrupt: Arc<dyn VirtioInterrupt>,
    server: FsServer,
    late: [LateNotify; 2],
    broken: bool,
    /// Set while the driver has a FUSE session (between INIT and DESTROY).
    session: Arc<AtomicBool>,
}

impl std::fmt::Debug for FsQueues {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FsQueues")
            .field("broken", &self.broken)
            .finish_non_exhaustive()
    }
}

/// The queue's name in messages.
pub fn queue_name(index: usize) -> &'static str {
    if index == HIPRIO_QUEUE {
        "hiprio"
    } else {
        "request"
    }
}

/// Opcodes the server dispatches (fuse-backend-rs's `Opcode` has a value for each).
fn known_opcode(op: u32) -> bool {
    matches!(op, 1..=6 | 8..=18 | 20..=49)
}

/// Opcodes the driver expects no reply to.
fn takes_no_reply(op: u32) -> bool {
    op == Opcode::Forget as u32
        || op == Opcode::BatchForget as u32
        || op == Opcode::Interrupt as u32
}

/// The errno a server error is answered with.
fn errno_for(e: &fuse_backend_rs::Error) -> i32 {
    use fuse_backend_rs::Error as E;
    match e {
        E::EncodeMessage(_) | E::FailedToWrite(_) | E::FailedToSplitWriter(_) => libc::EIO,
        E::FailedToRemapID(_) => libc::EPERM,
        _ => libc::EINVAL,
    }
}

/// Writes an error header for `unique` at the start of the chain's writable bytes.
fn reply_error(mem: &GuestMemory, chain: &GuestChain, unique: u64, errno: i32) -> Outcome {
    let header = OutHeader {
        len: OUT_HEADER_LEN as u32,
        error: -errno,
        unique,
    };
    match chain.write_at(mem, 0, header.as_slice()) {
        Ok(()) => Outcome::Replied(OUT_HEADER_LEN as u32),
        Err(_) => Outcome::Dropped,
    }
}

enum Served {
    Done(Outcome, Option<FsFault>),
    Broken(String),
}

/// Serves one chain: validation, then the server, then an error reply where needed.
fn serve(
    server: &FsServer,
    session: &AtomicBool,
    mem: &GuestMemory,
    chain: DescriptorChain<&GuestMemory>,
    queue: &'static str,
) -> Served {
    let head = chain.head_index();
    let parsed = match GuestChain::parse(chain.clone()) {
        Ok(c) => c,
        Err(e @ ChainError::Empty { .. }) => return Served::Broken(e.to_string()),
        Err(source) => {
            return Served::Done(Outcome::Dropped, Some(FsFault::Chain { queue, source }));
        }
    };
    let readable = parsed.readable_len();
    let writable = parsed.writable_len();
    let mut header = InHeader::default();
    if readable < IN_HEADER_LEN || parsed.read_at(mem, 0, header.as_mut_slice()).is_err() {
        let fault = FsFault::ShortHeader {
            queue,
            head,
            readable,
        };
        return Served::Done(Outcome::Dropped, Some(fault));
    }
    let (unique, opcode) = (header.unique, header.opcode);
    let needs_reply = !takes_no_reply(opcode);
    if needs_reply && writable < OUT_HEADER_LEN {
        let fault = FsFault::NoReplyRoom {
            unique,
            opcode,
            writable,
        };
        return Served::Done(Outcome::Dropped, Some(fault));
    }
    let answer = |errno: i32| {
        if needs_reply {
            reply_error(mem, &parsed, unique, errno)
        } else {
            Outcome::Dropped
        }
    };
    let len = header.len as usize;
    if len < IN_HEADER_LEN || len > readable {
        let fault = FsFault::LengthMismatch {
            unique,
            opcode,
            len: header.len,
            readable,
        };
        return Served::Done(answer(libc::EINVAL), Some(fault));
    }
    if !known_opcode(opcode) {
        // Newer kernels send opcodes this server predates; ENOSYS makes them stop.
        return Served::Done(answer(libc::ENOSYS), None);
    }
    let buffers = Reader::from_descriptor_chain(mem, chain.clone())
        .and_then(|r| VirtioFsWriter::new(mem, chain).map(|w| (r, w)));
    let (reader, writer) = match buffers {
        Ok(rw) => rw,
        Err(e) => {
            let fault = FsFault::Malformed {
                unique,
                opcode,
                why: format!("buffers: {e}"),
                errno: libc::EINVAL,
            };
            return Served::Done(answer(libc::EINVAL), Some(fault));
        }
    };
    if opcode == Opcode::Init as u32 {
        session.store(true, Ordering::SeqCst);
    } else if opcode == Opcode::Destroy as u32 {
        session.store(false, Ordering::SeqCst);
    }
    match server.handle_message(reader, Writer::VirtioFs(writer), None, None) {
        Ok(0) if opcode == Opcode::Destroy as u32 => {
            // The server answers DESTROY with nothing; the driver waits for a header.
            Served::Done(answer(0), None)
        }
        Ok(0) if !needs_reply => Served::Done(Outcome::NoReply, None),
        Ok(n) => Served::Done(Outcome::Replied(u32::try_from(n).unwrap_or(u32::MAX)), None),
        Err(e) => {
            let errno = errno_for(&e);
            let outcome = answer(errno);
            let fault = FsFault::Malformed {
                unique,
                opcode,
                why: e.to_string(),
                errno: if outcome == Outcome::Dropped {
                    0
                } else {
                    errno
                },
            };
            Served::Done(outcome, Some(fault))
        }
    }
}

impl FsQueues {
    /// Takes over the high-priority and request queues.
    pub fn new(
        mem: GuestMemory,
        queues: [Queue; 2],
        interrupt: Arc<dyn VirtioInterrupt>,
        server: FsServer,
    ) -> Self {
        FsQueues {
            mem,
            queues,
            interrupt,
            server,
            late: Default::default(),
            broken: false,
            session: Arc::default(),
        }
    }

    /// Records in `flag` whether the driver has a FUSE session open (the device refuses a
    /// snapshot while it has: see [`crate::devices::virtio::VirtioDevice::snapshot_blocker`]).
    pub fn with_session_flag(mut self, flag: Arc<AtomicBool>) -> Self {
        self.session = flag;
        self
    }

    /// When to look again for an interrupt the guest asked for after the device had looked
    /// (see [`crate::devices::virtio::late_notify`]).
    pub fn recheck_due(&self) -> Option<Instant> {
        late_notify::earliest(&self.late)
    }

    /// Sends the interrupts the guest asked for after the device had looked; returns the
    /// queues that needed one.
    pub fn recheck(&mut self, now: Instant) -> Vec<&'static str> {
        if self.broken {
            return Vec::new();
        }
        let [hiprio_late, request_late] = &mut self.late;
        let [hiprio, request] = &self.queues;
        let queues = [
            (hiprio_late, hiprio, queue_name(HIPRIO_QUEUE)),
            (request_late, request, queue_name(REQUEST_QUEUE)),
        ];
        late_notify::recheck(queues, &self.mem, self.interrupt.as_ref(), now)
    }

    /// Whether the device gave up on its queues.
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    fn break_device(&mut self, fault: FsFault, run: &mut QueueRun) {
        self.broken = true;
        let _ = self.interrupt.trigger(InterruptReason::NeedsReset);
        run.faults.push(fault);
    }

    /// Serves the chains available in queue `index` ([`HIPRIO_QUEUE`] or [`REQUEST_QUEUE`]),
    /// at most [`BATCH`] of them, and interrupts the driver once if any came back.
    pub fn process_queue(&mut self, index: usize) -> QueueRun {
        let mut run = QueueRun::default();
        if self.broken || index > REQUEST_QUEUE {
            return run;
        }
        let queue = queue_name(index);
        let start = self.queues[index].next_used();
        'refill: loop {
            let _ = self.queues[index].disable_notification(&self.mem);
            loop {
                if run.served == BATCH {
                    run.more = true;
                    break 'refill;
                }
                let chain = match self.queues[index].iter(&self.mem) {
                    Ok(mut it) => it.next(),
                    Err(e) => {
                        let why = e.to_string();
                        self.break_device(FsFault::Broken { queue, why }, &mut run);
                        return run;
                    }
                };
                let Some(chain) = chain else { break };
                let head = chain.head_index();
                let (outcome, fault) =
                    match serve(&self.server, &self.session, &self.mem, chain, queue) {
                        Served::Done(outcome, fault) => (outcome, fault),
                        Served::Broken(why) => {
                            self.break_device(FsFault::Broken { queue, why }, &mut run);
                            return run;
                        }
                    };
                run.faults.extend(fault);
                if let Err(e) = self.queues[index].add_used(&self.mem, head, outcome.used_len()) {
                    let fault = FsFault::Broken {
                        queue,
                        why: format!("used ring: {e}"),
                    };
                    self.break_device(fault, &mut run);
                    return run;
                }
                run.served += 1;
            }
            match self.queues[index].enable_notification(&self.mem) {
                Ok(true) => continue,
                _ => break,
            }
        }
        if run.served > 0 {
            let interrupt = self.interrupt.as_ref();
            self.late[index].notify(&mut self.queues[index], &self.mem, interrupt, start);
        }
        run
    }
}

#[cfg(test)]
pub(crate) mod tests;

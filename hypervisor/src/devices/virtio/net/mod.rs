//! virtio-net backed by a host tap device.
//!
//! - [`device::VirtioNet`]: the [`VirtioDevice`](super::VirtioDevice): device type 1, config
//!   space (MAC, link status, MTU), an rx and a tx queue, the features, and on activation a
//!   worker thread. The tap is opened when the device is made, so a missing tap fails the VM
//!   before the guest boots.
//! - [`tap::Tap`]: opens an existing tap by name (inside a network namespace if the config
//!   names one, from a short-lived thread that joined it), with `IFF_VNET_HDR` and a 12-byte
//!   vnet header, so frames travel between the guest and the tap with the same
//!   `virtio_net_hdr_v1` in front and no translation. [`TapIo`] is what the queues need of it,
//!   so tests use fakes.
//! - [`handler::NetQueues`]: moves frames between the queues and a [`TapIo`]; knows guest
//!   memory, the queues and the interrupt trait, nothing of epoll.
//! - [`event_loop::NetEventLoop`]: the worker's epoll glue (queue eventfds, the tap
//!   edge-triggered for both directions) and the rate-limited warnings.
//! - [`header`]: the vnet header and what a transmitted one may say.
//!
//! Offloads: the device offers checksum offload and TSO both ways (CSUM, GUEST_CSUM,
//! HOST_TSO4/6, GUEST_TSO4/6) with mergeable rx buffers (MRG_RXBUF), so a 64 KiB TCP segment
//! crosses the device as one frame. At activation the tap gets `TUNSETOFFLOAD` with exactly the
//! guest-side offloads the driver accepted: the host kernel then hands the tap only frames that
//! driver can take (no GSO frames for a driver without GUEST_TSO, checksums filled in for one
//! without GUEST_CSUM). Host-side offloads need nothing from the tap: it accepts GSO and
//! partial-checksum frames from any writer.

pub mod device;
pub mod event_loop;
pub mod handler;
pub mod header;
pub mod tap;

use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU64, Ordering};

pub use device::VirtioNet;
pub use tap::Tap;

/// Index of the receive queue.
pub const RX_QUEUE: usize = 0;
/// Index of the transmit queue.
pub const TX_QUEUE: usize = 1;
/// Size of each queue (what QEMU and Firecracker use).
pub const QUEUE_SIZE: u16 = 256;

/// Frames (and chains) handled in one go before the worker looks at its other events again.
pub const BATCH: usize = 256;

/// What the queues need of a tap: one frame (vnet header included) per read or write,
/// non-blocking, and the guest-side offloads.
pub trait TapIo: Send + 'static {
    /// Reads one frame into `buf`; `WouldBlock` when none is queued.
    fn read_frame(&self, buf: &mut [u8]) -> io::Result<usize>;

    /// Writes one frame; `WouldBlock` when the tap cannot take it now (retry when writable).
    fn write_frame(&self, frame: &[u8]) -> io::Result<usize>;

    /// Tells the tap which `TUN_F_*` offloads the guest accepts.
    fn set_offload(&self, flags: u32) -> io::Result<()>;
}

/// A tap the worker can poll.
pub trait PollableTap: TapIo {
    /// The descriptor that becomes readable (a frame is queued) and writable.
    fn poll_fd(&self) -> RawFd;
}

/// Setting up a virtio-net device failed.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The tap could not be opened or configured.
    #[error("tap {tap:?}{}: {what}", netns.as_deref().map(|n| format!(" (network namespace {n})")).unwrap_or_default())]
    Tap {
        /// The tap's name.
        tap: String,
        /// The namespace it was looked up in.
        netns: Option<String>,
        /// What went wrong, in words.
        what: String,
    },
    /// The MAC address is not a unicast `aa:bb:cc:dd:ee:ff` address (the config validator
    /// refuses those already).
    #[error("tap {tap:?}: MAC address {mac:?} is not a unicast address")]
    Mac {
        /// The tap's name.
        tap: String,
        /// The address as configured.
        mac: String,
    },
}

/// What a device did, for tests and diagnostics. Counters only grow; a reset keeps them.
#[derive(Debug, Default)]
pub struct NetStats {
    /// Frames delivered to the guest.
    pub rx_frames: AtomicU64,
    /// Their bytes (without the vnet header).
    pub rx_bytes: AtomicU64,
    /// Frames from the tap the guest could not take (too large for its buffers, an offload it
    /// did not negotiate), and rx chains returned unused because they were malformed.
    pub rx_dropped: AtomicU64,
    /// Frames sent to the tap.
    pub tx_frames: AtomicU64,
    /// Their bytes (without the vnet header).
    pub tx_bytes: AtomicU64,
    /// Guest frames dropped: malformed chains or headers, or refused by the tap.
    pub tx_dropped: AtomicU64,
    /// Times the tap was full and transmission waited for it to drain.
    pub tx_waits: AtomicU64,
}

impl NetStats {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Reads a counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

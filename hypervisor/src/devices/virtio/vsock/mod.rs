//! virtio-vsock with a host Unix socket ("hybrid vsock", as Firecracker and Cloud Hypervisor
//! do it).
//!
//! - [`device::Vsock`]: the [`VirtioDevice`](super::VirtioDevice): config space (the guest's
//!   CID), three queues (rx, tx, event), and on activation a worker thread.
//! - [`handler::VsockQueues`]: moves packets between the queues and a [`VsockBackend`]; knows
//!   guest memory and the interrupt trait, nothing of epoll.
//! - [`event_loop`]: the worker's epoll glue (queue eventfds, the backend's epoll fd, timers).
//! - [`packet`]: header layout and chain validation; [`csm`]: one connection's state machine,
//!   credit and buffers; [`unix::muxer::Muxer`]: the backend, mapping connections to Unix
//!   streams.
//!
//! Host side: `CONNECT <port>\n` on the VM's socket reaches guest port `<port>` (answer
//! `OK <host port>\n`, see `husk_protocol::hybrid`); the guest connecting to the host (CID 2)
//! on port P reaches `<socket>_<P>`, only for ports in the VM config's `allowed_guest_ports`;
//! every other port gets RST. All connections close when the device is reset or the VM stops.

pub mod csm;
pub mod device;
pub mod event_loop;
pub mod handler;
pub mod packet;
pub mod transport_reset;
pub mod unix;

pub use device::Vsock;

use packet::VsockHeader;

/// Protocol constants (virtio 1.2 section 5.10).
pub mod defs {
    /// The host's context id.
    pub const HOST_CID: u64 = 2;
    /// The only socket type offered.
    pub const TYPE_STREAM: u16 = 1;
    /// SHUTDOWN flag: the sender will receive no more.
    pub const SHUTDOWN_RCV: u32 = 1;
    /// SHUTDOWN flag: the sender will send no more.
    pub const SHUTDOWN_SEND: u32 = 2;
    /// Largest payload of one packet (Linux's VIRTIO_VSOCK_MAX_PKT_BUF_SIZE).
    pub const MAX_PKT_PAYLOAD: usize = 64 * 1024;
    /// Size of each of the three queues.
    pub const QUEUE_SIZE: u16 = 256;
    /// Queue indexes.
    pub const RXQ: usize = 0;
    /// Transmit queue.
    pub const TXQ: usize = 1;
    /// Event queue.
    pub const EVQ: usize = 2;

    /// Operations.
    pub mod op {
        #![allow(missing_docs)]
        pub const REQUEST: u16 = 1;
        pub const RESPONSE: u16 = 2;
        pub const RST: u16 = 3;
        pub const SHUTDOWN: u16 = 4;
        pub const RW: u16 = 5;
        pub const CREDIT_UPDATE: u16 = 6;
        pub const CREDIT_REQUEST: u16 = 7;
    }
}

/// Errors setting up the vsock device.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    /// The host socket could not be bound.
    #[error("vsock socket {path}: {source}")]
    Bind {
        /// The socket path.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// Another descriptor could not be created.
    #[error("vsock: {0}")]
    Io(#[from] std::io::Error),
}

/// Where packets come from and go to: the host side of every connection.
pub trait VsockBackend: Send {
    /// Takes a guest packet (chain already validated, header fields not yet). An error says
    /// what the guest did wrong; the backend has already reacted (reset or dropped).
    fn send_pkt(&mut self, hdr: &VsockHeader, data: &[u8]) -> Result<(), unix::MuxerError>;

    /// The next packet for the guest, payload in `buf` (at most its length); `None` when
    /// nothing is owed.
    fn recv_pkt(&mut self, buf: &mut [u8]) -> Option<VsockHeader>;

    /// Whether [`VsockBackend::recv_pkt`] would have something.
    fn has_pending_rx(&self) -> bool;
}

//! The Unix-socket backend of the vsock device: [`muxer::Muxer`] maps each vsock connection to
//! a Unix stream, and this module holds its errors and the two socket calls std lacks
//! (a non-blocking connect, and a peek that lets the handshake read exactly one line).

pub mod muxer;

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::path::Path;

use super::csm::connection::ConnError;
use super::packet::HeaderError;

/// Limits that keep a hostile guest (or a careless host) from growing the muxer.
pub mod limits {
    use std::time::Duration;

    /// Connections per device.
    pub const MAX_CONNECTIONS: usize = 256;
    /// Host connections still sending their `CONNECT` line.
    pub const MAX_PENDING_HANDSHAKES: usize = 32;
    /// How long a host connection may take to send its `CONNECT` line.
    pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
    /// Resets waiting for an RX buffer that belong to no connection (refused requests,
    /// packets for unknown connections); more are dropped.
    pub const MAX_QUEUED_RESETS: usize = 256;
}

/// Something the guest did that the muxer refused; the reaction (RST or drop) is done.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MuxerError {
    /// A header field is not acceptable; the packet was answered with RST.
    #[error("vsock packet from guest port {src_port} to host port {dst_port} reset: {why}")]
    BadHeader {
        /// Guest port.
        src_port: u32,
        /// Host port.
        dst_port: u32,
        /// What is wrong.
        why: HeaderError,
    },
    /// A header that does not even address this guest and host; dropped.
    #[error("vsock packet dropped: {0}")]
    Misaddressed(HeaderError),
    /// A guest connection to a port the VM config does not allow.
    #[error("guest connection to host port {0} refused: not in allowed_guest_ports")]
    PortNotAllowed(u32),
    /// Nothing listens on `<socket>_<port>` (or it does not accept).
    #[error("guest connection to host port {port} failed: {path}: {error}")]
    ConnectFailed {
        /// The host port.
        port: u32,
        /// The socket path tried.
        path: String,
        /// The error.
        error: io::ErrorKind,
    },
    /// The device's connection limit is reached.
    #[error("guest connection to host port {0} refused: {max} connections already open", max = limits::MAX_CONNECTIONS)]
    TooManyConnections(u32),
    /// A packet for a connection that does not exist; answered with RST.
    #[error("vsock operation {op} for unknown connection (host port {local_port}, guest port {peer_port}) reset")]
    NoConnection {
        /// The operation.
        op: u16,
        /// Host port.
        local_port: u32,
        /// Guest port.
        peer_port: u32,
    },
    /// The connection refused the packet and was reset.
    #[error("vsock connection (host port {local_port}, guest port {peer_port}): {source}")]
    Conn {
        /// Host port.
        local_port: u32,
        /// Guest port.
        peer_port: u32,
        /// What happened.
        source: ConnError,
    },
    /// The guest takes no RX buffers and resets piled up; this one was dropped.
    #[error(
        "vsock reset dropped: {} resets already wait for RX buffers",
        limits::MAX_QUEUED_RESETS
    )]
    ResetQueueFull,
}

/// Connects to the Unix socket `path` without blocking: a listener whose backlog is full
/// refuses (EAGAIN) instead of stalling the device thread.
pub fn connect_nonblocking(path: &Path) -> io::Result<UnixStream> {
    // SAFETY: sockaddr_un is plain data; zero is a valid (empty) value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_os_str().as_bytes();
    if bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "socket path too long",
        ));
    }
    for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    // SAFETY: socket(2) with constant arguments; returns a new descriptor or -1.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created and is owned by nobody else.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
    // SAFETY: `addr` is a valid sockaddr_un of `len` bytes; `owned` is a live socket.
    let rc = unsafe {
        libc::connect(
            owned.as_raw_fd(),
            (&addr as *const libc::sockaddr_un).cast(),
            len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(UnixStream::from(owned))
}

/// Reads up to `buf.len()` bytes without consuming them.
pub fn peek(stream: &UnixStream, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for writes of `buf.len()` bytes; the descriptor is live.
    let n = unsafe {
        libc::recv(
            stream.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

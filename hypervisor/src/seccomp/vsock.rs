//! The vsock worker: the queues and the host side of hybrid vsock (the listener bound at
//! setup, the shim's per-port sockets it connects to, the connections).

use super::rules::{Always, Arg, RuleError, RuleSet};

const ALWAYS: Always = &[
    (
        libc::SYS_epoll_create1,
        "the run's epoll, made in the worker",
    ),
    (
        libc::SYS_epoll_ctl,
        "registering queues, the listener and connections",
    ),
    (libc::SYS_epoll_wait, "the worker's loop"),
    (
        libc::SYS_read,
        "queue eventfds; the host's handshake line; connection data",
    ),
    (libc::SYS_recvfrom, "connection data (recv)"),
    (libc::SYS_sendto, "connection data (send)"),
    (
        libc::SYS_accept4,
        "a host client connecting to the listener",
    ),
    (
        libc::SYS_connect,
        "reaching the shim's socket for a guest-initiated connection",
    ),
    (
        libc::SYS_shutdown,
        "half-closing a connection as the guest asks",
    ),
    (
        libc::SYS_fcntl,
        "cloning the listener for the run; non-blocking sockets",
    ),
    (libc::SYS_getsockopt, "the result of a connect (SO_ERROR)"),
];

/// Adds the vsock worker's part.
pub fn add(set: &mut RuleSet) -> Result<(), RuleError> {
    set.always(ALWAYS);
    // Only Unix sockets: the guest's connections end at the shim's sockets, nowhere else.
    set.when(libc::SYS_socket, &[Arg::Eq(0, libc::AF_UNIX as u64)])?;
    // set_nonblocking on a socket.
    set.when_one_of(libc::SYS_ioctl, 1, &[libc::FIONBIO])
}

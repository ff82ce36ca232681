//! A virtio-net worker: frames between the queues and the tap (opened at setup, in the pod's
//! network namespace).

use super::rules::{Always, RuleError, RuleSet};

const ALWAYS: Always = &[
    (
        libc::SYS_epoll_create1,
        "the run's epoll, made in the worker",
    ),
    (
        libc::SYS_epoll_ctl,
        "registering the queue eventfds and the tap",
    ),
    (libc::SYS_epoll_wait, "the worker's loop"),
    (libc::SYS_read, "queue eventfds; a frame from the tap"),
    (libc::SYS_readv, "a frame from the tap into several buffers"),
    (libc::SYS_writev, "a frame to the tap from several buffers"),
    (
        libc::SYS_fcntl,
        "cloning the tap descriptor for the run (F_DUPFD_CLOEXEC)",
    ),
];

/// Adds a net worker's part.
pub fn add(set: &mut RuleSet) -> Result<(), RuleError> {
    set.always(ALWAYS);
    // The offloads the driver accepted, set when the run starts.
    set.when_one_of(libc::SYS_ioctl, 1, &[libc::TUNSETOFFLOAD])
}

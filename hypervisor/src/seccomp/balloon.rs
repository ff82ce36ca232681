//! The virtio-balloon worker: its queues, and dropping the guest RAM the guest gives back.

use super::rules::{Always, RuleError, RuleSet};

const ALWAYS: Always = &[
    (
        libc::SYS_epoll_create1,
        "the run's epoll, made in the worker",
    ),
    (libc::SYS_epoll_ctl, "registering the queue eventfds"),
    (libc::SYS_epoll_wait, "the worker's loop"),
    (libc::SYS_read, "queue eventfds"),
    // madvise(MADV_DONTNEED) on reported and inflated guest RAM is in the common list (the
    // allocator needs the same call); nothing else here touches memory mappings.
];

/// Adds a balloon worker's part.
pub fn add(set: &mut RuleSet) -> Result<(), RuleError> {
    set.always(ALWAYS);
    Ok(())
}

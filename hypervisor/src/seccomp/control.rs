//! The control socket's thread: one client at a time, one line in, one line out.

use super::rules::{Always, RuleError, RuleSet};

const ALWAYS: Always = &[
    (libc::SYS_accept4, "the next client"),
    (libc::SYS_setsockopt, "the client's read and write timeouts"),
    (libc::SYS_read, "the request line"),
    (libc::SYS_recvfrom, "the request line (recv)"),
    (libc::SYS_sendto, "the answer (send)"),
];

/// Adds the control thread's part.
pub fn add(set: &mut RuleSet) -> Result<(), RuleError> {
    set.always(ALWAYS);
    Ok(())
}

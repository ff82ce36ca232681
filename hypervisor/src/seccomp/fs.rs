//! A virtio-fs worker: the queues and the passthrough file server, which acts on the share as
//! the guest's users (see `crate::caps` for the capabilities it holds). It opens, creates and
//! changes files below the share, and nothing else: no mounts, no sockets, no processes.

use super::rules::{Always, RuleError, RuleSet};

const ALWAYS: Always = &[
    (
        libc::SYS_epoll_create1,
        "the run's epoll, made in the worker",
    ),
    (libc::SYS_epoll_ctl, "registering the queue eventfds"),
    (libc::SYS_epoll_wait, "the worker's loop"),
    // Looking up and opening: every path is relative to a descriptor below the share.
    (
        libc::SYS_openat,
        "LOOKUP, OPEN, CREATE, OPENDIR; /proc/self/fd when the server starts",
    ),
    (libc::SYS_newfstatat, "LOOKUP and GETATTR"),
    (libc::SYS_fstat, "GETATTR on an open file"),
    (libc::SYS_statx, "LOOKUP: inode and mount id"),
    (libc::SYS_fstatfs, "STATFS"),
    (libc::SYS_statfs, "STATFS"),
    (libc::SYS_readlinkat, "READLINK"),
    (libc::SYS_getdents64, "READDIR, READDIRPLUS"),
    (libc::SYS_lseek, "READDIR offsets; LSEEK"),
    (libc::SYS_dup, "OPENDIR of the root"),
    (libc::SYS_fcntl, "descriptor flags of opened files"),
    // Data.
    (libc::SYS_read, "READ; queue eventfds"),
    (libc::SYS_readv, "READ into guest buffers"),
    (libc::SYS_pread64, "READ at an offset"),
    (libc::SYS_preadv, "READ at an offset into guest buffers"),
    (libc::SYS_preadv2, "READ at an offset into guest buffers"),
    (libc::SYS_writev, "WRITE from guest buffers"),
    (libc::SYS_pwrite64, "WRITE at an offset"),
    (libc::SYS_pwritev, "WRITE at an offset from guest buffers"),
    (libc::SYS_pwritev2, "WRITE at an offset from guest buffers"),
    (libc::SYS_fsync, "FSYNC, FSYNCDIR"),
    (libc::SYS_fdatasync, "FSYNC with the datasync flag"),
    (libc::SYS_fallocate, "FALLOCATE"),
    (libc::SYS_ftruncate, "SETATTR size, OPEN with O_TRUNC"),
    // Changing the tree.
    (libc::SYS_mkdirat, "MKDIR"),
    (
        libc::SYS_mknodat,
        "MKNOD of fifos, sockets and regular files (devices fail: no CAP_MKNOD)",
    ),
    (libc::SYS_symlinkat, "SYMLINK"),
    (libc::SYS_linkat, "LINK"),
    (libc::SYS_unlinkat, "UNLINK, RMDIR"),
    (libc::SYS_renameat2, "RENAME, RENAME2"),
    (libc::SYS_fchmod, "SETATTR mode on an open file"),
    (libc::SYS_fchmodat, "SETATTR mode"),
    (
        libc::SYS_fchownat,
        "SETATTR owner; creating files as the guest's user",
    ),
    (libc::SYS_utimensat, "SETATTR times"),
    // Acting as the guest's user.
    (
        libc::SYS_setresuid,
        "each request runs as the guest caller's uid",
    ),
    (
        libc::SYS_setresgid,
        "each request runs as the guest caller's gid",
    ),
    (
        libc::SYS_capget,
        "dropping CAP_FSETID around a write, and raising it again",
    ),
    (
        libc::SYS_capset,
        "dropping CAP_FSETID around a write, and raising it again",
    ),
    (
        libc::SYS_umask,
        "the server clears the umask (the guest's comes with each create)",
    ),
    (libc::SYS_getuid, "the server's own identity, once"),
    (libc::SYS_getgid, "the server's own identity, once"),
];

/// Adds a virtio-fs worker's part.
pub fn add(set: &mut RuleSet) -> Result<(), RuleError> {
    set.always(ALWAYS);
    Ok(())
}

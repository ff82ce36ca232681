//! virtio-fs in process: a host directory served to the guest over FUSE by fuse-backend-rs's
//! passthrough file system, the way Dragonball does it (no virtiofsd, no vhost-user, no DAX).
//!
//! - [`device::VirtioFs`]: the [`VirtioDevice`](super::VirtioDevice): device type 26, config
//!   space (the mount tag, NUL-padded to 36 bytes, and `le32 num_request_queues` = 1), two
//!   queues (high priority, one request queue), and on activation a worker thread with a fresh
//!   FUSE server.
//! - [`handler::FsQueues`]: takes chains off both queues, validates them and the FUSE header,
//!   hands good requests to the server and puts every chain back; it knows guest memory, the
//!   queues and the interrupt trait, nothing of epoll.
//! - [`event_loop::FsEventLoop`]: the worker's epoll glue; it also confines the worker thread
//!   (its own umask, which the passthrough file system sets to 0; no `CAP_MKNOD`).
//! - [`backend`]: the passthrough configuration and why each setting is what it is (escape
//!   safety, mounts the host makes under the share later, cache policy).
//! - [`pinned_flags::PinnedFlags`]: the passthrough with each handle's host status flags fixed
//!   at open (a guest-chosen flag that the host refuses made fuse-backend-rs close a
//!   descriptor twice).
//!
//! The guest mounts a share with `mount -t virtiofs <tag> <dir>`. husk's shim shares
//! `<state>/shared` (tag `husk`) and mounts container root file systems under it while the VM
//! runs; those mounts become visible to the guest (see [`backend`]).

pub mod backend;
pub mod device;
pub mod event_loop;
pub mod handler;
pub mod pinned_flags;

pub use device::VirtioFs;

/// Size of the tag field of the config space.
pub const TAG_LEN: usize = 36;
/// Request queues offered (the device also has one high-priority queue).
pub const NUM_REQUEST_QUEUES: u32 = 1;
/// Size of each queue: a 1 MiB FUSE request (256 pages plus headers) fits in one chain without
/// indirect descriptors.
pub const QUEUE_SIZE: u16 = 1024;
/// Index of the high-priority queue (FORGET, INTERRUPT).
pub const HIPRIO_QUEUE: usize = 0;
/// Index of the request queue.
pub const REQUEST_QUEUE: usize = 1;

/// Setting up a virtio-fs device failed.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// The shared directory cannot be used.
    #[error("virtio-fs share {tag:?} at {path}: {source}")]
    Share {
        /// The share's tag.
        tag: String,
        /// The host directory.
        path: String,
        /// Why it cannot be used.
        source: std::io::Error,
    },
    /// The tag does not fit the config space.
    #[error("virtio-fs tag {0:?} must be 1 to {TAG_LEN} bytes")]
    Tag(String),
}

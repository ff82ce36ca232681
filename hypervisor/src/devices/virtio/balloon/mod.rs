//! virtio-balloon: guest memory that goes back to the host.
//!
//! The device offers free page reporting (VIRTIO_BALLOON_F_REPORTING) and deflate-on-OOM. With
//! reporting, the guest's page allocator hands the device runs of free memory (2 MiB blocks and
//! larger, some seconds after they were freed); the device drops the host pages behind them
//! (`madvise(MADV_DONTNEED)`), so an idle pod's husk-vmm keeps only what its guest uses. A page
//! the guest uses again is faulted back in, zeroed, by the host. The balloon proper (inflate and
//! deflate) works too, but the host never asks for pages (`num_pages` stays 0): the guest only
//! inflates if something inside it does.
//!
//! - [`device::VirtioBalloon`]: device type 5, config space (`num_pages`, `actual`), three
//!   queues (inflate, deflate, reporting; the last only when the driver takes REPORTING).
//! - [`handler::BalloonQueues`]: takes chains off the queues, checks every page the guest names
//!   (aligned, inside guest RAM) and gives them back through [`discard::Discard`].
//! - [`event_loop::BalloonEventLoop`]: the worker's epoll glue.
//!
//! The guest is hostile, and what it can do here is drop its own memory: a range outside guest
//! RAM or not page-aligned is refused (the chain goes back unused and the worker logs it,
//! rate-limited); nothing the guest names can reach host memory that is not its RAM.

pub mod device;
pub mod discard;
pub mod event_loop;
pub mod handler;

pub use device::VirtioBalloon;

/// Feature bit: the driver may deflate the balloon when the guest runs out of memory.
pub const VIRTIO_BALLOON_F_DEFLATE_ON_OOM: u32 = 2;
/// Feature bit: the driver reports free pages on the reporting queue.
pub const VIRTIO_BALLOON_F_REPORTING: u32 = 5;
/// Index of the inflate queue (page frame numbers the guest gives up).
pub const INFLATE_QUEUE: usize = 0;
/// Index of the deflate queue (page frame numbers the guest takes back).
pub const DEFLATE_QUEUE: usize = 1;
/// Index of the free page reporting queue (there is no stats or hinting queue before it).
pub const REPORTING_QUEUE: usize = 2;
/// Size of each queue.
pub const QUEUE_SIZE: u16 = 256;
/// The page size of balloon page frame numbers (VIRTIO_BALLOON_PFN_SHIFT), whatever the
/// guest's own page size.
pub const PFN_SHIFT: u32 = 12;
/// Bytes in a balloon page.
pub const PAGE: u64 = 1 << PFN_SHIFT;

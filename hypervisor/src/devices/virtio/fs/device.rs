//! The virtio-fs device model: what the guest sees (device type 26, a high-priority and one
//! request queue, the tag in config space) and the life of its worker.
//!
//! The shared directory is checked and opened (`O_PATH`) when the device is created, at setup.
//! The server reaches it only through that descriptor (`/proc/self/fd/N/.`), so it keeps
//! working from inside husk-vmm's jail, where the share's host path does not exist, and it
//! sees the mounts the shim makes below the share later (the descriptor belongs to the host's
//! mount tree). Activation runs a fresh FUSE server in the device's worker; nothing under the
//! share is opened until the guest's FUSE INIT. A reset ends the run and drops the server,
//! which closes every descriptor the guest had the server open; the next activation starts
//! from scratch.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use husk_protocol::vm_config::{FsCache, FsShare};

use super::backend::{confine_worker_thread, new_server};
use super::event_loop::FsEventLoop;
use super::handler::FsQueues;
use super::{FsError, NUM_REQUEST_QUEUES, QUEUE_SIZE, TAG_LEN};
use crate::devices::virtio::worker::{self, Worker};
use crate::devices::virtio::{
    read_config_window, ActivateError, Activation, VirtioDevice, TYPE_FS, VIRTIO_F_VERSION_1,
    VIRTIO_RING_F_EVENT_IDX,
};
use crate::seccomp::ThreadKind;

/// Size of the config space: the tag, then `le32 num_request_queues`.
pub const CONFIG_LEN: usize = TAG_LEN + 4;

/// A virtio-fs device serving one host directory.
#[derive(Debug)]
pub struct VirtioFs {
    worker: Option<Worker>,
    config: [u8; CONFIG_LEN],
    root: PathBuf,
    /// The share, opened at setup; the server's root is `/proc/self/fd/<this>/.`.
    share: OwnedFd,
    cache: FsCache,
    queue_sizes: [u16; 2],
    thread_name: String,
    /// Whether the driver has a FUSE session open (set by the worker's handler).
    session: Arc<AtomicBool>,
}

impl VirtioFs {
    /// A device for `share`, whose path must be a directory.
    pub fn new(share: &FsShare) -> Result<Self, FsError> {
        let tag = share.tag.as_bytes();
        if tag.is_empty() || tag.len() > TAG_LEN {
            return Err(FsError::Tag(share.tag.clone()));
        }
        let bad = |source| FsError::Share {
            tag: share.tag.clone(),
            path: share.path.display().to_string(),
            source,
        };
        let root = share.path.canonicalize().map_err(bad)?;
        if !root.is_dir() {
            return Err(bad(std::io::Error::from_raw_os_error(libc::ENOTDIR)));
        }
        if root.to_str().is_none() {
            return Err(bad(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "the path is not UTF-8",
            )));
        }
        let share_fd = std::fs::File::options()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
            .open(&root)
            .map_err(bad)?
            .into();
        let mut config = [0u8; CONFIG_LEN];
        config[..tag.len()].copy_from_slice(tag);
        config[TAG_LEN..].copy_from_slice(&NUM_REQUEST_QUEUES.to_le_bytes());
        Ok(VirtioFs {
            worker: None,
            config,
            root,
            share: share_fd,
            cache: share.cache,
            queue_sizes: [QUEUE_SIZE; 2],
            thread_name: format!("husk-fs-{}", share.tag),
            session: Arc::default(),
        })
    }

    /// Whether the worker runs a server.
    pub fn is_active(&self) -> bool {
        self.worker.as_ref().is_some_and(Worker::is_running)
    }

    /// The path the server opens as its root: the share's descriptor, through /proc.
    fn server_root(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}/.", self.share.as_raw_fd()))
    }

    /// The directory served.
    pub fn root(&self) -> &std::path::Path {
        &self.root
    }
}

/// The worker's confinement: the server's umask and capabilities stay in its thread (the guest
/// cannot make device nodes), and its seccomp filter.
fn confine() -> io::Result<()> {
    confine_worker_thread()?;
    crate::seccomp::install(ThreadKind::Fs).map_err(io::Error::other)
}

impl VirtioDevice for VirtioFs {
    fn device_type(&self) -> u32 {
        TYPE_FS
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn features(&self) -> u64 {
        (1 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_RING_F_EVENT_IDX)
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_window(&self.config, offset, data);
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {
        // Read-only: the tag and the queue count are the device's.
    }

    fn start_worker(&mut self) -> io::Result<()> {
        Worker::started(&mut self.worker, &self.thread_name, confine).map(drop)
    }

    fn worker_confined(&mut self) -> io::Result<()> {
        worker::confined_in(&mut self.worker)
    }

    fn begin_activation(&mut self, a: Activation) -> Result<(), ActivateError> {
        if self.is_active() {
            return Err(ActivateError::AlreadyActive);
        }
        let a = a.into_queues::<2>()?;
        let (root, cache) = (self.server_root(), self.cache);
        let (mem, queues, evts, interrupt) = (a.mem, a.queues, a.queue_evts, a.interrupt.clone());
        let session = self.session.clone();
        let make = move || {
            let server = new_server(&root, cache)?;
            let handler = FsQueues::new(mem, queues, interrupt, server).with_session_flag(session);
            Ok(FsEventLoop::new(handler, evts))
        };
        Worker::started(&mut self.worker, &self.thread_name, confine)
            .and_then(|w| w.submit_for_device(make, a.interrupt))
            .map_err(ActivateError::Start)
    }

    fn finish_activation(&mut self) -> Result<(), ActivateError> {
        worker::built_in(&mut self.worker).map_err(ActivateError::Start)
    }

    fn snapshot_blocker(&self) -> Option<String> {
        self.session.load(Ordering::SeqCst).then(|| {
            format!(
                "virtio-fs share {}: mounted in the guest (a FUSE session's inodes and open \
                 files live in husk-vmm and a snapshot does not carry them; snapshot before \
                 the guest mounts it)",
                self.root.display()
            )
        })
    }

    fn reset(&mut self) {
        if let Some(worker) = &mut self.worker {
            worker.stop();
        }
        self.session.store(false, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests;

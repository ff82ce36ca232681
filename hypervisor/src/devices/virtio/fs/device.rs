//! The virtio-fs device model: what the guest sees (device type 26, a high-priority and one
//! request queue, the tag in config space) and the life of its worker.
//!
//! The shared directory is checked when the device is created (it must be a directory; its
//! path is resolved once, so the server's root is a fixed canonical path). Activation starts a
//! worker with a fresh FUSE server; nothing under the share is opened until the guest's FUSE
//! INIT. A reset stops the worker and drops the server, which closes every descriptor the guest
//! had the server open; the next activation starts from scratch.

use std::path::PathBuf;

use husk_protocol::vm_config::{FsCache, FsShare};

use super::backend::new_server;
use super::event_loop::FsEventLoop;
use super::handler::FsQueues;
use super::{FsError, NUM_REQUEST_QUEUES, QUEUE_SIZE, TAG_LEN};
use crate::devices::virtio::worker::Worker;
use crate::devices::virtio::{
    read_config_window, ActivateError, Activation, VirtioDevice, TYPE_FS, VIRTIO_F_VERSION_1,
    VIRTIO_RING_F_EVENT_IDX,
};

/// Size of the config space: the tag, then `le32 num_request_queues`.
pub const CONFIG_LEN: usize = TAG_LEN + 4;

/// A virtio-fs device serving one host directory.
#[derive(Debug)]
pub struct VirtioFs {
    worker: Option<Worker>,
    config: [u8; CONFIG_LEN],
    root: PathBuf,
    cache: FsCache,
    queue_sizes: [u16; 2],
    thread_name: String,
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
        let mut config = [0u8; CONFIG_LEN];
        config[..tag.len()].copy_from_slice(tag);
        config[TAG_LEN..].copy_from_slice(&NUM_REQUEST_QUEUES.to_le_bytes());
        Ok(VirtioFs {
            worker: None,
            config,
            root,
            cache: share.cache,
            queue_sizes: [QUEUE_SIZE; 2],
            thread_name: format!("husk-fs-{}", share.tag),
        })
    }

    /// Whether the worker runs.
    pub fn is_active(&self) -> bool {
        self.worker.is_some()
    }

    /// The directory served.
    pub fn root(&self) -> &std::path::Path {
        &self.root
    }
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

    fn activate(&mut self, a: Activation) -> Result<(), ActivateError> {
        if self.worker.is_some() {
            return Err(ActivateError::AlreadyActive);
        }
        let a = a.into_queues::<2>()?;
        let server = new_server(&self.root, self.cache).map_err(ActivateError::Start)?;
        let handler = FsQueues::new(a.mem, a.queues, a.interrupt.clone(), server);
        let worker = Worker::spawn_for_device(
            &self.thread_name,
            FsEventLoop::new(handler, a.queue_evts),
            a.interrupt,
        )
        .map_err(ActivateError::Start)?;
        self.worker = Some(worker);
        Ok(())
    }

    fn reset(&mut self) {
        if let Some(worker) = self.worker.take() {
            worker.stop();
        }
    }
}

#[cfg(test)]
mod tests;

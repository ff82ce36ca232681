//! The balloon device model: what the guest sees (device type 5, `num_pages` and `actual` in
//! config space, inflate, deflate and reporting queues) and the life of its worker.
//!
//! The host never asks for pages: `num_pages` reads 0, so the driver keeps the balloon empty
//! unless it inflates on its own. What the device is for is free page reporting. Activation
//! starts a worker over the queues the driver set up (two, or three with REPORTING); a reset
//! stops it.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use super::discard::Madvise;
use super::event_loop::BalloonEventLoop;
use super::handler::{BalloonQueues, BalloonStats};
use super::{
    QUEUE_SIZE, REPORTING_QUEUE, VIRTIO_BALLOON_F_DEFLATE_ON_OOM, VIRTIO_BALLOON_F_REPORTING,
};
use crate::devices::virtio::worker::{self, Worker};
use crate::devices::virtio::{
    read_config_window, ActivateError, Activation, VirtioDevice, TYPE_BALLOON, VIRTIO_F_VERSION_1,
    VIRTIO_RING_F_EVENT_IDX,
};
use crate::seccomp::ThreadKind;

/// Offset of `actual` (the driver's count of pages in the balloon) in config space.
const ACTUAL_OFFSET: u64 = 4;

/// A virtio-balloon device with free page reporting.
#[derive(Debug)]
pub struct VirtioBalloon {
    worker: Option<Worker>,
    /// Pages the driver says are in the balloon.
    actual: AtomicU32,
    stats: Arc<BalloonStats>,
    queue_sizes: [u16; 3],
}

impl Default for VirtioBalloon {
    fn default() -> Self {
        Self::new()
    }
}

impl VirtioBalloon {
    /// A balloon that starts empty and stays so unless the guest inflates it.
    pub fn new() -> Self {
        VirtioBalloon {
            worker: None,
            actual: AtomicU32::new(0),
            stats: Arc::default(),
            queue_sizes: [QUEUE_SIZE; 3],
        }
    }

    /// What the guest gave back so far.
    pub fn stats(&self) -> Arc<BalloonStats> {
        self.stats.clone()
    }

    /// Whether the worker serves queues.
    pub fn is_active(&self) -> bool {
        self.worker.as_ref().is_some_and(Worker::is_running)
    }

    /// The config space: `le32 num_pages` (always 0), `le32 actual`.
    fn config(&self) -> [u8; 8] {
        let mut c = [0u8; 8];
        c[4..].copy_from_slice(&self.actual.load(Ordering::Relaxed).to_le_bytes());
        c
    }
}

fn confine() -> std::io::Result<()> {
    crate::seccomp::install(ThreadKind::Balloon).map_err(std::io::Error::other)
}

const THREAD_NAME: &str = "husk-balloon";

impl VirtioDevice for VirtioBalloon {
    fn device_type(&self) -> u32 {
        TYPE_BALLOON
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn features(&self) -> u64 {
        (1 << VIRTIO_F_VERSION_1)
            | (1 << VIRTIO_RING_F_EVENT_IDX)
            | (1 << VIRTIO_BALLOON_F_DEFLATE_ON_OOM)
            | (1 << VIRTIO_BALLOON_F_REPORTING)
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_window(&self.config(), offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // Only `actual` is the driver's to write, and only whole.
        if offset == ACTUAL_OFFSET {
            if let Ok(bytes) = <[u8; 4]>::try_from(data) {
                self.actual
                    .store(u32::from_le_bytes(bytes), Ordering::Relaxed);
            }
        }
    }

    fn start_worker(&mut self) -> std::io::Result<()> {
        Worker::started(&mut self.worker, THREAD_NAME, confine).map(drop)
    }

    fn worker_confined(&mut self) -> std::io::Result<()> {
        worker::confined_in(&mut self.worker)
    }

    fn begin_activation(&mut self, mut a: Activation) -> Result<(), ActivateError> {
        if self.is_active() {
            return Err(ActivateError::AlreadyActive);
        }
        // The reporting queue exists only when the driver took the feature.
        let count = if a.acked_features & (1 << VIRTIO_BALLOON_F_REPORTING) != 0 {
            REPORTING_QUEUE + 1
        } else {
            REPORTING_QUEUE
        };
        a.queues.truncate(count);
        a.queue_evts.truncate(count);
        a.check_queues(count)?;
        let stats = self.stats.clone();
        let interrupt = a.interrupt.clone();
        let (mem, queues, evts) = (a.mem, a.queues, a.queue_evts);
        let make = move || {
            let handler = BalloonQueues::new(mem, queues, interrupt, Madvise, stats);
            Ok(BalloonEventLoop::new(handler, evts))
        };
        Worker::started(&mut self.worker, THREAD_NAME, confine)
            .and_then(|w| w.submit_for_device(make, a.interrupt))
            .map_err(ActivateError::Start)
    }

    fn finish_activation(&mut self) -> Result<(), ActivateError> {
        worker::built_in(&mut self.worker).map_err(ActivateError::Start)
    }

    fn reset(&mut self) {
        if let Some(worker) = &mut self.worker {
            worker.stop();
        }
        self.actual.store(0, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests;

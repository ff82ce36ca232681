//! The virtio-net device model: what the guest sees (device type 1, an rx and a tx queue, the
//! features, the config space) and the life of its worker.
//!
//! Config space (`struct virtio_net_config`, the fields this device offers): `mac[6]`, `le16
//! status` (always LINK_UP), `le16 max_virtqueue_pairs` (1), `le16 mtu` (when configured,
//! with VIRTIO_NET_F_MTU). It is read-only: without VIRTIO_NET_F_CTRL_MAC_ADDR the driver has
//! no business writing it.
//!
//! The tap stays open for the device's whole life. Activation gives the worker a handle to it
//! and sets its offloads to what the driver accepted; a reset stops the worker (joining it) and
//! clears the offloads. Frames that reach the tap while no driver is active wait in the tap's
//! own queue, which the host kernel bounds.

use std::sync::Arc;

use husk_protocol::vm_config::{parse_mac, NetConfig};
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
    VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_MAC, VIRTIO_NET_F_MRG_RXBUF,
    VIRTIO_NET_F_MTU, VIRTIO_NET_F_STATUS, VIRTIO_NET_S_LINK_UP,
};

use super::event_loop::NetEventLoop;
use super::handler::NetQueues;
use super::header::tap_offloads;
use super::tap::Tap;
use super::{NetError, NetStats, PollableTap, TapIo, QUEUE_SIZE};
use crate::devices::virtio::worker::{self, Worker};
use crate::devices::virtio::{
    read_config_window, ActivateError, Activation, VirtioDevice, TYPE_NET, VIRTIO_F_VERSION_1,
    VIRTIO_RING_F_EVENT_IDX,
};
use crate::seccomp::ThreadKind;

/// Size of the config space: mac, status, max_virtqueue_pairs, mtu.
pub const CONFIG_LEN: usize = 12;

/// The features every virtio-net device offers (VIRTIO_NET_F_MTU is added when an MTU is set).
pub const BASE_FEATURES: u64 = (1 << VIRTIO_F_VERSION_1)
    | (1 << VIRTIO_RING_F_EVENT_IDX)
    | (1 << VIRTIO_NET_F_MAC)
    | (1 << VIRTIO_NET_F_STATUS)
    | (1 << VIRTIO_NET_F_MRG_RXBUF)
    | (1 << VIRTIO_NET_F_CSUM)
    | (1 << VIRTIO_NET_F_GUEST_CSUM)
    | (1 << VIRTIO_NET_F_HOST_TSO4)
    | (1 << VIRTIO_NET_F_HOST_TSO6)
    | (1 << VIRTIO_NET_F_GUEST_TSO4)
    | (1 << VIRTIO_NET_F_GUEST_TSO6);

/// A tap shared by the device (for its whole life) and its worker (while active).
impl<T: TapIo + Sync> TapIo for Arc<T> {
    fn read_frame(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        (**self).read_frame(buf)
    }
    fn write_frame(&self, frame: &[u8]) -> std::io::Result<usize> {
        (**self).write_frame(frame)
    }
    fn set_offload(&self, flags: u32) -> std::io::Result<()> {
        (**self).set_offload(flags)
    }
}

impl<T: PollableTap + Sync> PollableTap for Arc<T> {
    fn poll_fd(&self) -> std::os::fd::RawFd {
        (**self).poll_fd()
    }
}

/// A virtio-net device backed by a tap.
#[derive(Debug)]
pub struct VirtioNet<T = Tap> {
    tap: Arc<T>,
    config: [u8; CONFIG_LEN],
    features: u64,
    queue_sizes: [u16; 2],
    worker: Option<Worker>,
    stats: Arc<NetStats>,
    thread_name: String,
}

impl VirtioNet<Tap> {
    /// Opens the tap `config` names (in its network namespace) and makes the device.
    pub fn new(config: &NetConfig) -> Result<Self, NetError> {
        let tap = Tap::open(&config.tap, config.netns.as_deref())?;
        VirtioNet::on_tap(config, tap)
    }

    /// The device `config` describes, on its tap opened beforehand (see [`Tap::open`]).
    pub fn on_tap(config: &NetConfig, tap: Tap) -> Result<Self, NetError> {
        let mac = parse_mac(&config.mac).ok_or_else(|| NetError::Mac {
            tap: config.tap.clone(),
            mac: config.mac.clone(),
        })?;
        Ok(VirtioNet::with_tap(tap, &config.tap, mac, config.mtu))
    }
}

impl<T: PollableTap + Sync> VirtioNet<T> {
    /// A device on an already open tap (`name` names the worker thread).
    pub fn with_tap(tap: T, name: &str, mac: [u8; 6], mtu: Option<u16>) -> Self {
        let mut config = [0u8; CONFIG_LEN];
        config[..6].copy_from_slice(&mac);
        config[6..8].copy_from_slice(&(VIRTIO_NET_S_LINK_UP as u16).to_le_bytes());
        config[8..10].copy_from_slice(&1u16.to_le_bytes());
        let mut features = BASE_FEATURES;
        if let Some(mtu) = mtu {
            config[10..12].copy_from_slice(&mtu.to_le_bytes());
            features |= 1 << VIRTIO_NET_F_MTU;
        }
        VirtioNet {
            tap: Arc::new(tap),
            config,
            features,
            queue_sizes: [QUEUE_SIZE; 2],
            worker: None,
            stats: Arc::default(),
            thread_name: format!("husk-net-{name}"),
        }
    }

    /// Whether the worker runs the queues.
    pub fn is_active(&self) -> bool {
        self.worker.as_ref().is_some_and(Worker::is_running)
    }

    /// The device's counters.
    pub fn stats(&self) -> Arc<NetStats> {
        self.stats.clone()
    }

    /// The tap.
    pub fn tap(&self) -> &T {
        &self.tap
    }
}

/// The worker's confinement: its seccomp filter.
fn confine() -> std::io::Result<()> {
    crate::seccomp::install(ThreadKind::Net).map_err(std::io::Error::other)
}

impl<T: PollableTap + Sync + std::fmt::Debug> VirtioDevice for VirtioNet<T> {
    fn device_type(&self) -> u32 {
        TYPE_NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn features(&self) -> u64 {
        self.features
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_window(&self.config, offset, data);
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {
        // Read-only: the MAC is the VM configuration's, the rest the device's.
    }

    fn start_worker(&mut self) -> std::io::Result<()> {
        Worker::started(&mut self.worker, &self.thread_name, confine).map(drop)
    }

    fn worker_confined(&mut self) -> std::io::Result<()> {
        worker::confined_in(&mut self.worker)
    }

    fn begin_activation(&mut self, a: Activation) -> Result<(), ActivateError> {
        if self.is_active() {
            return Err(ActivateError::AlreadyActive);
        }
        let a = a.into_queues::<2>()?;
        let (tap, stats, interrupt) = (self.tap.clone(), self.stats.clone(), a.interrupt.clone());
        let (mem, queues, evts, acked) = (a.mem, a.queues, a.queue_evts, a.acked_features);
        let make = move || {
            let handler = NetQueues::new(mem, queues, interrupt, tap, acked, stats);
            Ok(NetEventLoop::new(handler, evts, tap_offloads(acked)))
        };
        Worker::started(&mut self.worker, &self.thread_name, confine)
            .and_then(|w| w.submit_for_device(make, a.interrupt))
            .map_err(ActivateError::Start)
    }

    fn finish_activation(&mut self) -> Result<(), ActivateError> {
        worker::built_in(&mut self.worker).map_err(ActivateError::Start)
    }

    fn reset(&mut self) {
        if let Some(worker) = self.worker.as_mut().filter(|w| w.is_running()) {
            worker.stop();
            // The next driver negotiates afresh; until then the tap hands out plain frames.
            let _ = self.tap.set_offload(0);
        }
    }
}

#[cfg(test)]
mod tests;

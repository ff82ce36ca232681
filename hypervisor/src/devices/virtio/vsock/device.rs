//! The vsock device model: what the guest sees (device type 19, three queues, the guest CID in
//! config space) and the life of its worker.
//!
//! The host socket is bound when the device is created, so host programs can connect before
//! the guest's driver is up (their connections wait in the listen backlog). Activation starts a
//! worker with a fresh [`Muxer`]; a reset stops the worker and drops the muxer, which closes
//! every connection the guest knew; the socket stays for the next activation. Dropping the
//! device removes the socket file.

use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

use husk_protocol::vm_config::VsockConfig;

use super::defs::{EVQ, QUEUE_SIZE, RXQ, TXQ};
use super::event_loop::{RxGate, VsockEventLoop};
use super::handler::VsockQueues;
use super::unix::muxer::{Muxer, PortStart};
use super::VsockError;
use crate::devices::virtio::worker::{self, Worker};
use crate::devices::virtio::{
    read_config_window, ActivateError, Activation, VirtioDevice, TYPE_VSOCK, VIRTIO_F_VERSION_1,
    VIRTIO_RING_F_EVENT_IDX,
};
use crate::seccomp::ThreadKind;

/// Removes the socket file when dropped.
#[derive(Debug)]
struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A hybrid-vsock device.
#[derive(Debug)]
pub struct Vsock {
    // Field order is drop order: the worker stops before the socket goes.
    worker: Option<Worker>,
    listener: Arc<UnixListener>,
    socket: SocketFile,
    guest_cid: u64,
    allowed_guest_ports: Vec<u32>,
    queue_sizes: [u16; 3],
    thread_name: String,
    /// Written to make the running worker log its state.
    log_state: EventFd,
    /// The next activation resumes a snapshot: post a transport reset first.
    resuming: bool,
}

impl Vsock {
    /// Binds the host socket of `config` (replacing a stale one nobody listens on).
    pub fn new(config: &VsockConfig) -> Result<Self, VsockError> {
        let listener = crate::control::bind(&config.socket).map_err(|source| VsockError::Bind {
            path: config.socket.display().to_string(),
            source,
        })?;
        Ok(Vsock {
            worker: None,
            listener: Arc::new(listener),
            socket: SocketFile(config.socket.clone()),
            guest_cid: u64::from(config.guest_cid),
            allowed_guest_ports: config.allowed_guest_ports.clone(),
            queue_sizes: [QUEUE_SIZE; 3],
            thread_name: "husk-vsock".into(),
            log_state: EventFd::new(libc::EFD_NONBLOCK)?,
            resuming: false,
        })
    }

    /// Names the worker thread (tests tell their devices' threads apart by it).
    pub fn with_thread_name(mut self, name: &str) -> Self {
        self.thread_name = name.into();
        self
    }

    /// Whether the worker runs the queues.
    pub fn is_active(&self) -> bool {
        self.worker.as_ref().is_some_and(Worker::is_running)
    }
}

/// Posts the transport reset of a resumed device on `evq` and says whether the receive queue
/// must wait for the driver to handle it.
fn reset_transport(
    mem: &crate::memory::GuestMemory,
    mut evq: virtio_queue::Queue,
    interrupt: &dyn crate::devices::virtio::interrupt::VirtioInterrupt,
) -> RxGate {
    match super::transport_reset::post(mem, &mut evq, interrupt) {
        Ok(()) => RxGate::AwaitingResetAck,
        // The driver keeps sockets whose host ends are gone; they fail on their next packet
        // (RST), so this is worth a warning, not the device.
        Err(e) => {
            crate::guest_warn!("virtio-vsock: transport reset after restore: {e}");
            RxGate::Open
        }
    }
}

/// The worker's confinement: its seccomp filter.
fn confine() -> std::io::Result<()> {
    crate::seccomp::install(ThreadKind::Vsock).map_err(std::io::Error::other)
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        TYPE_VSOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn features(&self) -> u64 {
        (1 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_RING_F_EVENT_IDX)
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // struct virtio_vsock_config { le64 guest_cid; }
        let config = self.guest_cid.to_le_bytes();
        read_config_window(&config, offset, data);
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {
        // Read-only: the guest cannot change its CID.
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
        let a = a.into_queues::<3>()?;
        let listener = self.listener.clone();
        let socket = self.socket.0.clone();
        let (cid, ports) = (self.guest_cid, self.allowed_guest_ports.clone());
        // The queues in the spec's order; the event queue only ever carries the transport
        // reset of a restored VM, which the worker posts before its loop starts (so the posting,
        // the restore's first touch of guest memory, overlaps the other devices' activations;
        // the vCPUs run only once every device is built).
        const _: () = assert!(RXQ == 0 && TXQ == 1 && EVQ == 2);
        let [rx, tx, evq] = a.queues;
        let resuming = std::mem::take(&mut self.resuming);
        let port_start = if resuming {
            PortStart::Restored
        } else {
            PortStart::Boot
        };
        let (mem, evts, interrupt) = (a.mem, a.queue_evts, a.interrupt.clone());
        let log_state = self.log_state.try_clone().map_err(ActivateError::Start)?;
        let make = move || {
            let gate = if resuming {
                reset_transport(&mem, evq, interrupt.as_ref())
            } else {
                RxGate::Open
            };
            let muxer = Muxer::new(listener.try_clone()?, socket, cid, &ports, port_start)?;
            let handler = VsockQueues::new(mem, rx, tx, interrupt, muxer);
            Ok(VsockEventLoop::new(handler, evts, log_state, gate))
        };
        Worker::started(&mut self.worker, &self.thread_name, confine)
            .and_then(|w| w.submit_for_device(make, a.interrupt))
            .map_err(ActivateError::Start)
    }

    fn finish_activation(&mut self) -> Result<(), ActivateError> {
        worker::built_in(&mut self.worker).map_err(ActivateError::Start)
    }

    fn resuming_snapshot(&mut self) {
        self.resuming = true;
    }

    fn log_state(&self) {
        if self.is_active() {
            let _ = self.log_state.write(1);
        }
    }

    fn reset(&mut self) {
        if let Some(worker) = &mut self.worker {
            worker.stop();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use vmm_sys_util::eventfd::EventFd;

    use super::*;
    use crate::devices::virtio::chain::testing::{memory, TestQueue};
    use crate::devices::virtio::interrupt::FakeInterrupt;
    use virtio_queue::QueueT;

    /// Threads called `name`, once the count settles on `want` (a new thread names itself
    /// shortly after it starts) or after a few seconds.
    fn threads_settle(name: &str, want: usize) -> usize {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let n = threads_named(name);
            if n == want || std::time::Instant::now() > deadline {
                return n;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    fn threads_named(name: &str) -> usize {
        std::fs::read_dir("/proc/self/task")
            .unwrap()
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
            .filter(|c| c.trim() == name)
            .count()
    }

    fn activation(mem: &crate::memory::GuestMemory) -> Activation {
        let queues = (0..3)
            .map(|i| TestQueue::new(mem, i * 0x1000, 64).queue())
            .collect();
        Activation {
            mem: mem.clone(),
            queues,
            queue_evts: (0..3)
                .map(|_| EventFd::new(libc::EFD_NONBLOCK).unwrap())
                .collect(),
            interrupt: Arc::new(FakeInterrupt::default()),
            acked_features: 1 << VIRTIO_F_VERSION_1,
        }
    }

    #[test]
    fn activate_reset_activate_then_drop_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let config = VsockConfig {
            guest_cid: 3,
            socket: dir.path().join("v.sock"),
            allowed_guest_ports: vec![],
        };
        let name = "t-vsock-life";
        let mut dev = Vsock::new(&config).unwrap().with_thread_name(name);
        let mut cfg = [0u8; 8];
        dev.read_config(0, &mut cfg);
        assert_eq!(u64::from_le_bytes(cfg), 3);
        assert_eq!(dev.device_type(), TYPE_VSOCK);
        let mem = memory();
        dev.activate(activation(&mem)).unwrap();
        assert_eq!(threads_settle(name, 1), 1);
        assert!(matches!(
            dev.activate(activation(&mem)),
            Err(ActivateError::AlreadyActive)
        ));
        dev.reset();
        assert!(!dev.is_active(), "reset ends the run");
        dev.activate(activation(&mem)).unwrap();
        assert!(dev.is_active());
        assert_eq!(threads_named(name), 1, "the same thread serves every run");
        drop(dev);
        assert_eq!(threads_named(name), 0);
        assert!(!config.socket.exists(), "the socket file is removed");
    }

    #[test]
    fn queues_that_are_not_ready_refuse_activation() {
        let dir = tempfile::tempdir().unwrap();
        let config = VsockConfig {
            guest_cid: 3,
            socket: dir.path().join("v.sock"),
            allowed_guest_ports: vec![],
        };
        let mut dev = Vsock::new(&config).unwrap();
        let mem = memory();
        let mut a = activation(&mem);
        a.queues[1].set_ready(false);
        assert!(matches!(
            dev.activate(a),
            Err(ActivateError::BadQueue { index: 1, .. })
        ));
        assert!(!dev.is_active());
        let mut a = activation(&mem);
        a.queues.pop();
        assert!(matches!(
            dev.activate(a),
            Err(ActivateError::QueueCount { .. })
        ));
    }

    #[test]
    fn a_second_device_on_a_live_socket_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let config = VsockConfig {
            guest_cid: 3,
            socket: dir.path().join("v.sock"),
            allowed_guest_ports: vec![],
        };
        let _first = Vsock::new(&config).unwrap();
        let err = Vsock::new(&config).unwrap_err().to_string();
        assert!(err.contains("v.sock"), "{err}");
    }
}

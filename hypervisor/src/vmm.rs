//! Builds a VM from its configuration, runs it, and stops it: the whole life of a `husk-vmm`
//! process. The main thread owns one epoll loop for everything that is not a vCPU: the stop
//! eventfd (vCPU exits and the i8042 reset), termination signals, and control requests.

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use husk_protocol::{ControlRequest, VmConfig, VmmExit};
use kvm_bindings::KVM_MAX_CPUID_ENTRIES;
use kvm_ioctls::Cap;
use linux_loader::cmdline::Cmdline;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use crate::arch::cpuid::HostCaps;
use crate::arch::layout::{CMDLINE_MAX_SIZE, SERIAL_IRQ};
use crate::arch::{boot, vcpu_state};
use crate::bus::Bus;
use crate::control::{self, Pending};
use crate::device_manager::{DeviceManagerError, VirtioMmioDevices};
use crate::devices::legacy::{
    SerialConsole, I8042, I8042_BASE, I8042_LEN, SERIAL_BASE, SERIAL_LEN,
};
use crate::devices::virtio::balloon::VirtioBalloon;
use crate::devices::virtio::fs::VirtioFs;
use crate::devices::virtio::net::{Tap, VirtioNet};
use crate::devices::virtio::vsock::{Vsock, VsockError};
use crate::snapshot::{HostFingerprint, SnapshotError, SnapshotFiles, VmSnapshot};
use crate::timeline::Timeline;
use crate::vcpu::{install_kick_handler, StopReason, StopSignal, Vcpus};
use crate::vm::{Vm, VmError};
use crate::vm_state::VmState;

/// The command line every guest gets before the configuration's extra part. No PCI, ACPI or
/// modules exist in the husk kernel, so none of their switches are needed.
pub const BASE_CMDLINE: &str = "console=ttyS0 reboot=k panic=1 8250.nr_uarts=1";

/// Console output allowed in one burst, then per second (guest-controlled, so bounded).
const SERIAL_BURST: u64 = 1 << 20;
const SERIAL_RATE: u64 = 256 << 10;

const TOKEN_STOP: u64 = 1;
const TOKEN_SIGNAL: u64 = 2;
const TOKEN_CONTROL: u64 = 3;
/// Tokens from here on are virtio devices' resample eventfds, by device index.
const TOKEN_RESAMPLE: u64 = 100;

/// Errors that end the VMM before or while the VM runs.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    /// KVM or memory setup.
    #[error(transparent)]
    Vm(#[from] VmError),
    /// Kernel, initramfs or boot structures.
    #[error(transparent)]
    Boot(#[from] boot::BootError),
    /// vCPU register setup.
    #[error(transparent)]
    Vcpu(#[from] vcpu_state::VcpuSetupError),
    /// Placing a virtio device.
    #[error(transparent)]
    Device(#[from] DeviceManagerError),
    /// The vsock device.
    #[error(transparent)]
    Vsock(#[from] VsockError),
    /// The seccomp filters could not be compiled.
    #[error(transparent)]
    Seccomp(#[from] crate::seccomp::SeccompError),
    /// Taking or restoring a snapshot.
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    /// A setup helper thread (the image loader, the filter compiler) panicked.
    #[error("the thread {0} panicked")]
    HelperPanicked(&'static str),
    /// Any other step of setting up or running the VM, with its cause.
    #[error("{step}: {source}")]
    Setup {
        /// The step that failed.
        step: &'static str,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

mod answers;
mod create;
mod signals;
mod wiring;

pub use signals::block_termination_signals;

use answers::answer_control;
use signals::{read_signal, termination_signalfd};
use wiring::{console_writer, IrqLine, ShutdownTrigger};

fn setup<E: Into<Box<dyn std::error::Error + Send + Sync>>>(
    step: &'static str,
) -> impl FnOnce(E) -> VmmError {
    move |e| VmmError::Setup {
        step,
        source: e.into(),
    }
}

/// The full kernel command line for `config`.
pub fn kernel_cmdline(config: &VmConfig) -> Result<Cmdline, VmmError> {
    let mut cmdline = Cmdline::new(CMDLINE_MAX_SIZE).map_err(setup("kernel command line"))?;
    cmdline
        .insert_str(BASE_CMDLINE)
        .map_err(setup("kernel command line"))?;
    if !config.extra_cmdline.trim().is_empty() {
        cmdline
            .insert_str(config.extra_cmdline.trim())
            .map_err(setup("kernel command line (extra_cmdline)"))?;
    }
    Ok(cmdline)
}

type Serial = SerialConsole<IrqLine>;

/// A VM that is built and ready to start.
pub struct Machine {
    config: VmConfig,
    vm: Vm,
    pio: Arc<Bus>,
    mmio: Arc<Bus>,
    serial: Arc<Mutex<Serial>>,
    virtio: VirtioMmioDevices,
    stop: Arc<StopSignal>,
    signals: OwnedFd,
    /// Where a booting guest's kernel starts; `None` when restoring.
    entry: Option<vm_memory::GuestAddress>,
    /// The snapshot being restored, until `run` has put it into the VM.
    restoring: Option<VmSnapshot>,
    /// Where `snapshot` writes, if the configuration has a `snapshot_dir`.
    snapshot_files: Option<SnapshotFiles>,
    host: HostFingerprint,
    /// The MSRs a vCPU snapshot reads.
    msr_index: Arc<[u32]>,
    timeline: Timeline,
}

impl std::fmt::Debug for Machine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Machine")
            .field("config", &self.config)
            .finish()
    }
}

impl Machine {
    /// Builds the VM: memory, interrupt controllers, legacy devices, kernel and boot structures.
    /// `timeline` started when the process did; build adds its phases.
    pub fn build(config: VmConfig, mut timeline: Timeline) -> Result<Self, VmmError> {
        let signals = termination_signalfd().map_err(setup("blocking termination signals"))?;
        let layout = crate::arch::layout::ram_regions(u64::from(config.memory_mib) << 20);
        let snapshot_files = config
            .snapshot_dir
            .as_deref()
            .map(SnapshotFiles::create)
            .transpose()?;
        let create::Made {
            vm,
            images,
            restoring,
            host,
            taps,
        } = create::make(&config, &layout, &mut timeline)?;
        let mut taps = taps.into_iter();
        let msr_index: Arc<[u32]> = match &snapshot_files {
            Some(_) => vm
                .kvm
                .get_msr_index_list()
                .map_err(setup("reading KVM's MSR list"))?
                .as_slice()
                .into(),
            None => Arc::new([]),
        };
        let stop = Arc::new(StopSignal::new().map_err(setup("creating the stop eventfd"))?);

        let mut pio = Bus::default();
        let serial_irq = IrqLine {
            vm: vm.fd.clone(),
            irq: SERIAL_IRQ,
        };
        let serial = match &restoring {
            Some(s) => {
                SerialConsole::from_snapshot(&s.serial, serial_irq, console_writer(&config)?)
                    .map_err(setup("restoring the serial port"))?
            }
            None => SerialConsole::new(serial_irq, console_writer(&config)?),
        };
        let serial = Arc::new(Mutex::new(serial));
        pio.insert(SERIAL_BASE, SERIAL_LEN, serial.clone())
            .map_err(setup("placing the serial port"))?;
        let reset = ShutdownTrigger(stop.clone(), "i8042 reset");
        pio.insert(
            I8042_BASE,
            I8042_LEN,
            Arc::new(Mutex::new(I8042::new(reset))),
        )
        .map_err(setup("placing the i8042"))?;

        let mut cmdline = kernel_cmdline(&config)?;
        let mut mmio = Bus::default();
        let virtio = Self::attach_devices(&config, &vm, &mut mmio, &mut cmdline, &mut taps)?;
        timeline.mark("devices");

        let entry = match images {
            Some(images) => {
                boot::write_boot_structures(
                    &vm.memory,
                    &cmdline,
                    &images.kernel,
                    images.initramfs,
                    config.vcpus,
                )?;
                timeline.mark("boot structures");
                Some(images.kernel.entry)
            }
            None => None,
        };

        Ok(Machine {
            config,
            vm,
            pio: Arc::new(pio),
            mmio: Arc::new(mmio),
            serial,
            virtio,
            stop,
            signals,
            entry,
            restoring,
            snapshot_files,
            host,
            msr_index,
            timeline,
        })
    }

    /// Creates the vCPUs, each set up to enter the kernel at its entry point or, when
    /// restoring, put back as the snapshot has it (with the VM's interrupt controllers, PIT
    /// and clock).
    fn create_vcpus(&mut self) -> Result<Vec<kvm_ioctls::VcpuFd>, VmmError> {
        let count = self.config.vcpus;
        let mut fds = Vec::with_capacity(usize::from(count));
        for id in 0..count {
            let fd = self
                .vm
                .fd
                .create_vcpu(u64::from(id))
                .map_err(setup("creating a vCPU"))?;
            fds.push(fd);
        }
        if let Some(snapshot) = &self.restoring {
            snapshot
                .vm
                .restore(&self.vm.fd)
                .map_err(SnapshotError::from)?;
            for (id, (fd, state)) in fds.iter().zip(&snapshot.vcpus).enumerate() {
                let refused = state.restore(id as u8, fd).map_err(SnapshotError::from)?;
                if !refused.is_empty() {
                    let list: Vec<String> = refused.iter().map(|m| format!("{m:#x}")).collect();
                    eprintln!(
                        "husk-vmm: warning: vCPU {id}: KVM refused MSRs {} of the snapshot",
                        list.join(", ")
                    );
                }
            }
            let from = self
                .config
                .restore
                .as_deref()
                .unwrap_or(std::path::Path::new("?"));
            eprintln!("{} {}", husk_protocol::vmm::RESTORED, from.display());
            return Ok(fds);
        }
        let entry = self.entry.ok_or_else(|| VmmError::Setup {
            step: "setting up vCPUs",
            source: "no kernel entry point and no snapshot".into(),
        })?;
        let cpuid = self
            .vm
            .kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(setup("reading supported CPUID"))?;
        let caps = HostCaps {
            tsc_deadline: self.vm.kvm.check_extension(Cap::TscDeadlineTimer),
        };
        for (id, fd) in fds.iter().enumerate() {
            vcpu_state::configure(fd, &cpuid, caps, id as u8, count, entry)?;
        }
        Ok(fds)
    }

    /// Builds the configuration's virtio devices, in their fixed order (vsock, shares, NICs,
    /// balloon): a restored VM's devices must land in the slots the snapshot's did.
    fn attach_devices(
        config: &VmConfig,
        vm: &Vm,
        mmio: &mut Bus,
        cmdline: &mut Cmdline,
        taps: &mut impl Iterator<Item = Tap>,
    ) -> Result<VirtioMmioDevices, VmmError> {
        let mut virtio = VirtioMmioDevices::default();
        if let Some(vsock) = &config.vsock {
            let device = Box::new(Vsock::new(vsock)?);
            virtio.attach(&vm.fd, &vm.memory, mmio, cmdline, device)?;
        }
        for share in &config.fs {
            let device = Box::new(VirtioFs::new(share).map_err(setup("virtio-fs"))?);
            virtio.attach(&vm.fd, &vm.memory, mmio, cmdline, device)?;
        }
        for net in &config.net {
            let tap = taps.next().ok_or_else(|| VmmError::Setup {
                step: "virtio-net",
                source: format!("no tap opened for {}", net.tap).into(),
            })?;
            let device = Box::new(VirtioNet::on_tap(net, tap).map_err(setup("virtio-net"))?);
            virtio.attach(&vm.fd, &vm.memory, mmio, cmdline, device)?;
        }
        if config.balloon {
            let device = Box::new(VirtioBalloon::new());
            virtio.attach(&vm.fd, &vm.memory, mmio, cmdline, device)?;
        }
        Ok(virtio)
    }

    /// Runs the VM until the guest shuts down, a fault, a signal or a shutdown request.
    pub fn run(mut self) -> Result<VmmExit, VmmError> {
        let fds = self.create_vcpus()?;

        let epoll = Epoll::new().map_err(setup("creating epoll"))?;
        let add = |fd: i32, token: u64| {
            epoll.ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN, token),
            )
        };
        add(self.stop.eventfd().as_raw_fd(), TOKEN_STOP)
            .map_err(setup("polling the stop eventfd"))?;
        add(self.signals.as_raw_fd(), TOKEN_SIGNAL).map_err(setup("polling signals"))?;
        for (i, fd) in self.virtio.resample_fds().into_iter().enumerate() {
            add(fd, TOKEN_RESAMPLE + i as u64).map_err(setup("polling irqfd resampling"))?;
        }

        // Setup is done. The main thread, still alone, enters the jail (`jail`); then every
        // thread it starts (the device workers, the control socket's, the vCPUs) holds at most
        // the file server's capabilities (`caps`) and installs its own seccomp filter
        // (`seccomp`) before it serves the guest; this thread installs its own last.
        let plan = crate::jail::JailPlan::for_config(&self.config);
        crate::jail::enter(&plan).map_err(setup("entering the jail"))?;
        crate::jail::limit_resources().map_err(setup("setting resource limits"))?;
        crate::caps::drop_after_setup().map_err(setup("dropping capabilities"))?;
        if crate::seccomp::mode().is_none() {
            // A library user that chose no mode gets the production one.
            let _ = crate::seccomp::enforce(crate::seccomp::Mode::Kill);
        }
        self.timeline.mark("jail");
        // Pinned vCPUs: every thread started from here on runs on their CPUs (`affinity`).
        let affinity = &self.config.vcpu_affinity;
        crate::affinity::check(affinity).map_err(setup("vcpu_affinity"))?;
        if !affinity.is_empty() {
            crate::affinity::restrict_current_thread(affinity)
                .map_err(setup("restricting husk-vmm to the vCPUs' CPUs"))?;
        }
        // The device threads confine themselves side by side; a restored VM's devices are
        // handed to them meanwhile, so that confining and building overlap too.
        self.virtio
            .start_workers()
            .map_err(setup("starting the device threads"))?;
        if let Some(snapshot) = self.restoring.take() {
            self.virtio
                .restore(&snapshot.devices)
                .map_err(SnapshotError::from)?;
        }
        self.virtio
            .workers_confined()
            .map_err(setup("starting the device threads"))?;
        self.timeline.mark("workers");

        let control_wake =
            EventFd::new(libc::EFD_NONBLOCK).map_err(setup("creating the control eventfd"))?;
        let mut control = None;
        if let Some(path) = &self.config.control_socket {
            let listener = control::bind(path).map_err(setup("binding the control socket"))?;
            let wake = control_wake
                .try_clone()
                .map_err(setup("cloning the control eventfd"))?;
            let (guard, requests) = control::serve(listener, path, wake)
                .map_err(setup("serving the control socket"))?;
            add(control_wake.as_raw_fd(), TOKEN_CONTROL)
                .map_err(setup("polling the control socket"))?;
            control = Some((guard, requests));
        }

        install_kick_handler().map_err(setup("installing the vCPU kick handler"))?;
        let vcpus = Vcpus::start(
            fds,
            self.msr_index.clone(),
            self.config.start_paused,
            self.pio.clone(),
            self.mmio.clone(),
            self.stop.clone(),
            affinity,
        )
        .map_err(setup("starting vCPU threads"))?;
        let main_kind = match self.snapshot_files {
            Some(_) => crate::seccomp::ThreadKind::MainWithSnapshots,
            None => crate::seccomp::ThreadKind::Main,
        };
        crate::seccomp::install(main_kind).map_err(setup("filtering the main thread"))?;
        let mut state = VmState::Created
            .transition(VmState::Running)
            .map_err(setup("starting"))?;
        if self.config.start_paused {
            state = state
                .transition(VmState::Paused)
                .map_err(setup("starting"))?;
        }
        self.timeline.mark("vcpus");
        eprintln!("{}; {}", husk_protocol::vmm::VCPUS_RUNNING, self.timeline);

        let mut events = vec![EpollEvent::default(); 8];
        let exit = 'run: loop {
            let n = match epoll.wait(-1, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => break 'run Err(setup("waiting for events")(e)),
            };
            for ev in &events[..n] {
                match ev.data() {
                    TOKEN_STOP => {
                        let _ = self.stop.eventfd().read();
                        match self.stop.reason() {
                            Some(StopReason::Fault(why)) => {
                                eprintln!("husk-vmm: error: {why}");
                                break 'run Ok(VmmExit::Error);
                            }
                            Some(StopReason::GuestShutdown(why)) => {
                                eprintln!("husk-vmm: guest shut down ({why})");
                                break 'run Ok(VmmExit::GuestShutdown);
                            }
                            // Every writer records a reason first; nothing to do without one.
                            None => {}
                        }
                    }
                    TOKEN_SIGNAL => {
                        if let Some(sig) = read_signal(&self.signals) {
                            eprintln!("husk-vmm: stopping on signal {sig}");
                            break 'run Ok(VmmExit::Signal(sig));
                        }
                    }
                    TOKEN_CONTROL => {
                        let _ = control_wake.read();
                        let Some((_, requests)) = &control else {
                            continue;
                        };
                        while let Ok(Pending { request, reply }) = requests.try_recv() {
                            if request == ControlRequest::Snapshot {
                                let _ = reply.send(self.answer_snapshot(state, &vcpus));
                                continue;
                            }
                            let (answer, shutdown) =
                                answer_control(request, &mut state, &vcpus, &self.vm, &self.virtio);
                            let _ = reply.send(answer);
                            if shutdown {
                                eprintln!("husk-vmm: stopping on a shutdown request");
                                break 'run Ok(VmmExit::Signal(libc::SIGTERM));
                            }
                        }
                    }
                    token if token >= TOKEN_RESAMPLE => {
                        self.virtio.resample((token - TOKEN_RESAMPLE) as usize);
                    }
                    _ => {}
                }
            }
        };
        // Whatever ended the run, the vCPUs stop and the control socket goes away.
        if let Err(e) = vcpus.stop(Duration::from_secs(1)) {
            eprintln!("husk-vmm: warning: {e}; exiting anyway");
        }
        // Device threads stop, every vsock connection closes, the vsock socket goes away.
        self.virtio.shutdown();
        drop(control);
        exit
    }
}

/// Builds and runs the VM described by `config`; `started` is when the process started, where
/// the setup timeline begins.
pub fn run(config: VmConfig, started: Instant) -> Result<VmmExit, VmmError> {
    Machine::build(config, Timeline::new(started))?.run()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(config: &VmConfig) -> String {
        let cmdline = kernel_cmdline(config).unwrap();
        cmdline.as_cstring().unwrap().into_string().unwrap()
    }

    #[test]
    fn extra_cmdline_follows_the_base() {
        let json = r#"{"kernel":"/k","extra_cmdline":" quiet husk.x=1 "}"#;
        let mut config = VmConfig::from_json(json).unwrap();
        assert_eq!(line(&config), format!("{BASE_CMDLINE} quiet husk.x=1"));
        config.extra_cmdline.clear();
        assert_eq!(line(&config), BASE_CMDLINE);
    }

    #[test]
    fn a_failed_step_names_itself_and_keeps_its_cause() {
        use std::error::Error;
        let e = setup("creating epoll")(std::io::Error::from_raw_os_error(libc::EMFILE));
        assert!(e.to_string().starts_with("creating epoll: "), "{e}");
        let cause = e.source().expect("the cause is kept");
        let io = cause
            .downcast_ref::<std::io::Error>()
            .expect("as the io::Error it was");
        assert_eq!(io.raw_os_error(), Some(libc::EMFILE));
    }
}

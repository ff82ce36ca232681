//! Builds a VM from its configuration, runs it, and stops it: the whole life of a `husk-vmm`
//! process. The main thread owns one epoll loop for everything that is not a vCPU: the stop
//! eventfd (vCPU exits and the i8042 reset), termination signals, and control requests.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
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
    RateLimitedWriter, SerialConsole, I8042, I8042_BASE, I8042_LEN, SERIAL_BASE, SERIAL_LEN,
};
use crate::devices::virtio::balloon::VirtioBalloon;
use crate::devices::virtio::fs::VirtioFs;
use crate::devices::virtio::net::VirtioNet;
use crate::devices::virtio::vsock::{Vsock, VsockError};
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
    /// The thread reading the kernel and initramfs into guest RAM panicked.
    #[error("the thread loading the kernel and initramfs panicked")]
    LoaderPanicked,
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

fn setup<E: Into<Box<dyn std::error::Error + Send + Sync>>>(
    step: &'static str,
) -> impl FnOnce(E) -> VmmError {
    move |e| VmmError::Setup {
        step,
        source: e.into(),
    }
}

/// An edge on a legacy interrupt line, raised synchronously with KVM_IRQ_LINE from the vCPU
/// thread that caused it (the way QEMU drives its UART). An irqfd would inject from another
/// thread; under nested KVM on emulated SVM that path hung or crashed the guest during bursts of
/// console output, while this one did not.
#[derive(Debug)]
struct IrqLine {
    vm: Arc<kvm_ioctls::VmFd>,
    irq: u32,
}

impl vm_superio::Trigger for IrqLine {
    type E = kvm_ioctls::Error;

    fn trigger(&self) -> Result<(), Self::E> {
        self.vm.set_irq_line(self.irq, true)?;
        self.vm.set_irq_line(self.irq, false)
    }
}

/// A device line (the i8042 reset) that means "the guest shut down".
#[derive(Debug)]
struct ShutdownTrigger(Arc<StopSignal>, &'static str);

impl vm_superio::Trigger for ShutdownTrigger {
    type E = std::convert::Infallible;

    fn trigger(&self) -> Result<(), Self::E> {
        self.0.raise(StopReason::GuestShutdown(self.1.to_string()));
        Ok(())
    }
}

fn termination_set() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset/sigaddset initialise it before any use.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t owned by this frame.
    unsafe { libc::sigemptyset(&mut set) };
    for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
        // SAFETY: `set` is initialised and `sig` a valid signal number.
        unsafe { libc::sigaddset(&mut set, sig) };
    }
    set
}

/// Blocks the termination signals in this thread (and every thread it starts later), so that
/// they wait, pending, for [`Machine::run`]'s signalfd. husk-vmm calls this first thing: as
/// PID 1 of its PID namespace it would otherwise drop a SIGTERM that arrives before then
/// (init ignores signals it has no handler for).
pub fn block_termination_signals() -> std::io::Result<()> {
    let set = termination_set();
    // SAFETY: `set` is initialised; a null old-set pointer is allowed.
    if unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Blocks the termination signals in this thread (and every thread it starts) and returns a
/// signalfd that reports them.
fn termination_signalfd() -> std::io::Result<OwnedFd> {
    block_termination_signals()?;
    let set = termination_set();
    // SAFETY: -1 asks for a new descriptor; `set` is initialised.
    let fd = unsafe { libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: signalfd returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn read_signal(fd: &OwnedFd) -> Option<i32> {
    // SAFETY: signalfd_siginfo is plain data, fully written by a successful read.
    let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
    let size = std::mem::size_of::<libc::signalfd_siginfo>();
    // SAFETY: reading at most `size` bytes into `info`, which is exactly that large.
    let n = unsafe {
        libc::read(
            fd.as_raw_fd(),
            (&mut info as *mut libc::signalfd_siginfo).cast(),
            size,
        )
    };
    (n == size as isize).then_some(info.ssi_signo as i32)
}

fn console_writer(config: &VmConfig) -> Result<Box<dyn Write + Send>, VmmError> {
    let sink: Box<dyn Write + Send> = match &config.serial_log {
        Some(path) => Box::new(
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| {
                    let named = std::io::Error::new(e.kind(), format!("{}: {e}", path.display()));
                    setup("opening the serial log")(named)
                })?,
        ),
        None => Box::new(std::io::sink()),
    };
    Ok(Box::new(RateLimitedWriter::new(
        sink,
        SERIAL_BURST,
        SERIAL_RATE,
    )))
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

/// A VM that is built and ready to start.
pub struct Machine {
    config: VmConfig,
    vm: Vm,
    pio: Arc<Bus>,
    mmio: Arc<Bus>,
    virtio: VirtioMmioDevices,
    stop: Arc<StopSignal>,
    signals: OwnedFd,
    entry: vm_memory::GuestAddress,
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
        let memory = crate::memory::create(&crate::arch::layout::ram_regions(
            u64::from(config.memory_mib) << 20,
        ))
        .map_err(VmError::from)?;
        // Reading the kernel and initramfs into guest RAM and creating the VM in KVM share no
        // state, so a loader thread does the first while this thread does the second. The
        // scope joins the loader on every path, an error included.
        let (vm, images) = std::thread::scope(|scope| {
            let loader = std::thread::Builder::new()
                .name("husk-loader".into())
                .spawn_scoped(scope, || {
                    boot::load_images(&memory, &config.kernel, config.initramfs.as_deref())
                })
                .map_err(setup("starting the image loader"))?;
            let vm = Vm::create(memory.clone());
            // The loader takes longer than the VM: compile the threads' filters meanwhile.
            let filters = crate::seccomp::precompile();
            timeline.mark("vm");
            let images = loader.join().map_err(|_| VmmError::LoaderPanicked)?;
            filters?;
            timeline.mark("images");
            Ok::<_, VmmError>((vm?, images?))
        })?;
        let stop = Arc::new(StopSignal::new().map_err(setup("creating the stop eventfd"))?);

        let mut pio = Bus::default();
        let serial_irq = IrqLine {
            vm: vm.fd.clone(),
            irq: SERIAL_IRQ,
        };
        let serial = SerialConsole::new(serial_irq, console_writer(&config)?);
        pio.insert(SERIAL_BASE, SERIAL_LEN, Arc::new(Mutex::new(serial)))
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
        let mut virtio = VirtioMmioDevices::default();
        if let Some(vsock) = &config.vsock {
            let device = Box::new(Vsock::new(vsock)?);
            virtio.attach(&vm.fd, &vm.memory, &mut mmio, &mut cmdline, device)?;
        }
        for share in &config.fs {
            let device = Box::new(VirtioFs::new(share).map_err(setup("virtio-fs"))?);
            virtio.attach(&vm.fd, &vm.memory, &mut mmio, &mut cmdline, device)?;
        }
        for net in &config.net {
            let device = Box::new(VirtioNet::new(net).map_err(setup("virtio-net"))?);
            virtio.attach(&vm.fd, &vm.memory, &mut mmio, &mut cmdline, device)?;
        }
        if config.balloon {
            let device = Box::new(VirtioBalloon::new());
            virtio.attach(&vm.fd, &vm.memory, &mut mmio, &mut cmdline, device)?;
        }
        timeline.mark("devices");

        boot::write_boot_structures(
            &vm.memory,
            &cmdline,
            &images.kernel,
            images.initramfs,
            config.vcpus,
        )?;
        timeline.mark("boot structures");

        Ok(Machine {
            config,
            vm,
            pio: Arc::new(pio),
            mmio: Arc::new(mmio),
            virtio,
            stop,
            signals,
            entry: images.kernel.entry,
            timeline,
        })
    }

    /// Runs the VM until the guest shuts down, a fault, a signal or a shutdown request.
    pub fn run(mut self) -> Result<VmmExit, VmmError> {
        let count = self.config.vcpus;
        let cpuid = self
            .vm
            .kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(setup("reading supported CPUID"))?;
        let caps = HostCaps {
            tsc_deadline: self.vm.kvm.check_extension(Cap::TscDeadlineTimer),
        };
        let mut fds = Vec::with_capacity(usize::from(count));
        for id in 0..count {
            let fd = self
                .vm
                .fd
                .create_vcpu(u64::from(id))
                .map_err(setup("creating a vCPU"))?;
            vcpu_state::configure(&fd, &cpuid, caps, id, count, self.entry)?;
            fds.push(fd);
        }

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
        // Pinned vCPUs: every thread started from here on runs on their CPUs (`affinity`).
        let affinity = &self.config.vcpu_affinity;
        crate::affinity::check(affinity).map_err(setup("vcpu_affinity"))?;
        if !affinity.is_empty() {
            crate::affinity::restrict_current_thread(affinity)
                .map_err(setup("restricting husk-vmm to the vCPUs' CPUs"))?;
        }
        self.virtio
            .start_workers()
            .map_err(setup("starting the device threads"))?;
        self.timeline.mark("jail");

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
            self.pio.clone(),
            self.mmio.clone(),
            self.stop.clone(),
            affinity,
        )
        .map_err(setup("starting vCPU threads"))?;
        crate::seccomp::install(crate::seccomp::ThreadKind::Main)
            .map_err(setup("filtering the main thread"))?;
        let mut state = VmState::Created
            .transition(VmState::Running)
            .map_err(setup("starting"))?;
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

/// How long a pause waits for every vCPU to park. Natively that takes microseconds; a host
/// under CPU pressure (or the nested test host at emulation speed) can keep a vCPU thread off
/// the CPU for seconds, and a pause that gives up early is an error to its client for nothing.
/// Below the control socket's answer bound ([`crate::control::ANSWER_TIMEOUT`]).
const PAUSE_TIMEOUT: Duration = Duration::from_secs(10);

fn answer_control(
    request: ControlRequest,
    state: &mut VmState,
    vcpus: &Vcpus,
    vm: &Vm,
    virtio: &VirtioMmioDevices,
) -> (String, bool) {
    let target = match request {
        ControlRequest::Ping => return (format!("ok {state}"), false),
        ControlRequest::Queues => return (format!("ok {}", describe_devices(vm, virtio)), false),
        ControlRequest::Shutdown => return ("ok stopping".into(), true),
        ControlRequest::Pause => VmState::Paused,
        ControlRequest::Resume => VmState::Running,
    };
    let next = match state.transition(target) {
        Ok(next) => next,
        Err(e) => return (format!("error {e}"), false),
    };
    if target == VmState::Paused {
        if let Err(e) = vcpus.pause(PAUSE_TIMEOUT) {
            vcpus.resume();
            return (format!("error {e}"), false);
        }
    } else {
        vcpus.resume();
    }
    *state = next;
    (format!("ok {state}"), false)
}

/// The `queues` answer: every device's transport, then the IOAPIC pins their lines go to.
fn describe_devices(vm: &Vm, virtio: &VirtioMmioDevices) -> String {
    let irqs: Vec<u32> = virtio.slots().iter().map(|s| s.irq).collect();
    let pins = match vm.ioapic_pins(&irqs) {
        Ok(pins) => pins
            .iter()
            .map(|p| format!("[{p}]"))
            .collect::<Vec<_>>()
            .join(" "),
        Err(e) => format!("[{e}]"),
    };
    format!("{} {pins}", virtio.describe())
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

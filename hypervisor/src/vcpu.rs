//! vCPU threads: run KVM_RUN, dispatch port and MMIO exits to the buses, and stop or park
//! when the main loop asks.
//!
//! The main loop talks to vCPU threads through a [`RunGate`] and wakes a thread out of KVM_RUN
//! with a real-time signal whose handler does nothing: the interrupted ioctl returns EINTR and
//! the thread re-checks the gate. A kick can land just before the thread enters KVM_RUN, so
//! kicks repeat until the wanted state is observed.

use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvm_ioctls::{VcpuExit, VcpuFd};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

use crate::bus::Bus;
use crate::snapshot::VcpuState;

/// Why the VM must stop, as the first vCPU or device to notice reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    /// The guest shut down or rebooted (i8042 reset, triple fault, PSCI-style system event).
    GuestShutdown(String),
    /// Something failed: a KVM error or an exit the VMM cannot handle.
    Fault(String),
}

/// Collects the first stop reason and wakes the main loop through an eventfd.
#[derive(Debug)]
pub struct StopSignal {
    first: Mutex<Option<StopReason>>,
    evt: EventFd,
}

impl StopSignal {
    /// A signal whose eventfd the main loop polls.
    pub fn new() -> std::io::Result<Self> {
        Ok(StopSignal {
            first: Mutex::new(None),
            evt: EventFd::new(libc::EFD_NONBLOCK)?,
        })
    }

    /// Records `reason` unless another came first, and wakes the main loop.
    pub fn raise(&self, reason: StopReason) {
        let mut first = self.first.lock().unwrap_or_else(|p| p.into_inner());
        first.get_or_insert(reason);
        let _ = self.evt.write(1);
    }

    /// The recorded reason, if any.
    pub fn reason(&self) -> Option<StopReason> {
        self.first.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The eventfd to poll.
    pub fn eventfd(&self) -> &EventFd {
        &self.evt
    }
}

#[derive(Debug, Default)]
struct Gate {
    paused: bool,
    stop: bool,
    parked: usize,
    /// Bumped to ask every parked vCPU to save its state once more.
    save_round: u64,
}

/// What a vCPU thread does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wake {
    /// Enter the guest.
    Run,
    /// Save this vCPU's state (it is parked), then park again.
    Save,
    /// Exit the thread.
    Stop,
}

/// What vCPU threads check between runs: keep running, park, or exit.
#[derive(Debug, Default)]
pub struct RunGate {
    gate: Mutex<Gate>,
    cv: Condvar,
}

impl RunGate {
    fn lock(&self) -> std::sync::MutexGuard<'_, Gate> {
        self.gate.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Blocks while paused and there is nothing to save; `round` is the last save round this
    /// thread served.
    fn wait_runnable(&self, round: &mut u64) -> Wake {
        let mut g = self.lock();
        if g.paused && !g.stop {
            g.parked += 1;
            while g.paused && !g.stop && g.save_round == *round {
                g = self.cv.wait(g).unwrap_or_else(|p| p.into_inner());
            }
            g.parked -= 1;
        }
        if g.stop {
            Wake::Stop
        } else if g.save_round != *round {
            *round = g.save_round;
            Wake::Save
        } else {
            Wake::Run
        }
    }

    fn request_save(&self) {
        self.lock().save_round += 1;
        self.cv.notify_all();
    }

    fn is_paused(&self) -> bool {
        self.lock().paused
    }

    fn set_paused(&self, paused: bool) {
        self.lock().paused = paused;
        self.cv.notify_all();
    }

    fn set_stop(&self) {
        self.lock().stop = true;
        self.cv.notify_all();
    }

    fn parked(&self) -> usize {
        self.lock().parked
    }
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// Installs the no-op handler of the kick signal (once per process, before vCPUs start).
pub fn install_kick_handler() -> std::io::Result<()> {
    register_signal_handler(SIGRTMIN(), on_kick)
        .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
}

/// Where parked vCPUs leave their saved state for [`Vcpus::save_states`].
#[derive(Debug, Default)]
struct Saves {
    slots: Mutex<Vec<Option<Result<VcpuState, String>>>>,
    cv: Condvar,
}

struct VcpuThread {
    id: u8,
    fd: VcpuFd,
    msr_index: Arc<[u32]>,
    saves: Arc<Saves>,
    pio: Arc<Bus>,
    mmio: Arc<Bus>,
    gate: Arc<RunGate>,
    stop: Arc<StopSignal>,
    /// The host CPU this thread is pinned to, if any.
    cpu: Option<u32>,
}

impl VcpuThread {
    fn run(mut self) {
        if let Some(cpu) = self.cpu {
            if let Err(e) = crate::affinity::pin_current_thread(cpu) {
                let id = self.id;
                let why = format!("vCPU {id}: pinning to host CPU {cpu}: {e}");
                self.stop.raise(StopReason::Fault(why));
                return;
            }
        }
        // Before the first KVM_RUN: from here on the guest drives this thread.
        // A VM that can be snapshotted has an MSR list to read; its vCPUs may read their state.
        let kind = if self.msr_index.is_empty() {
            crate::seccomp::ThreadKind::Vcpu
        } else {
            crate::seccomp::ThreadKind::VcpuWithSnapshots
        };
        if let Err(e) = crate::seccomp::install(kind) {
            let id = self.id;
            self.stop
                .raise(StopReason::Fault(format!("vCPU {id}: {e}")));
            return;
        }
        let mut round = 0;
        loop {
            match self.gate.wait_runnable(&mut round) {
                Wake::Stop => return,
                Wake::Save => {
                    let state = VcpuState::save(self.id, &mut self.fd, &self.msr_index)
                        .map_err(|e| e.to_string());
                    let mut slots = self.saves.slots.lock().unwrap_or_else(|p| p.into_inner());
                    if let Some(slot) = slots.get_mut(usize::from(self.id)) {
                        *slot = Some(state);
                    }
                    self.saves.cv.notify_all();
                }
                Wake::Run => {
                    if let Some(reason) = self.step() {
                        self.stop.raise(reason);
                        return;
                    }
                }
            }
        }
    }

    /// Where the vCPU was, for the message of a triple fault (a reboot, or a crash early in boot).
    ///
    /// KVM on AMD re-initialises a vCPU whose guest shut down (its VMCB is undefined after the
    /// SHUTDOWN intercept), so there the registers read back in their reset state and say
    /// nothing of where the guest failed: the message says so rather than print them as a place.
    fn where_is(&self) -> String {
        match (self.fd.get_regs(), self.fd.get_sregs()) {
            (Ok(r), Ok(s)) if r.rip == 0xfff0 && s.cr0 & 1 == 0 && s.efer == 0 => {
                "an unknown place (KVM reset the vCPU on the shutdown)".into()
            }
            (Ok(r), Ok(s)) => format!(
                "rip {:#x} rsp {:#x} cr0 {:#x} cr3 {:#x} cr4 {:#x} efer {:#x}",
                r.rip, r.rsp, s.cr0, s.cr3, s.cr4, s.efer
            ),
            _ => "an unknown place".into(),
        }
    }

    /// One KVM_RUN; `Some` when the VM must stop.
    fn step(&mut self) -> Option<StopReason> {
        let id = self.id;
        match self.fd.run() {
            Ok(VcpuExit::IoIn(port, data)) => {
                if !self.pio.read(u64::from(port), data) {
                    data.fill(0xff);
                }
                None
            }
            Ok(VcpuExit::IoOut(port, data)) => {
                self.pio.write(u64::from(port), data);
                None
            }
            Ok(VcpuExit::MmioRead(addr, data)) => {
                if !self.mmio.read(addr, data) {
                    data.fill(0xff);
                }
                None
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                self.mmio.write(addr, data);
                None
            }
            Ok(VcpuExit::Shutdown) => Some(StopReason::GuestShutdown(format!(
                "vCPU {id}: triple fault (reboot) at {}",
                self.where_is()
            ))),
            Ok(VcpuExit::Hlt) => Some(StopReason::GuestShutdown(format!("vCPU {id}: halted"))),
            Ok(VcpuExit::SystemEvent(kind, _)) => Some(StopReason::GuestShutdown(format!(
                "vCPU {id}: system event {kind}"
            ))),
            Ok(VcpuExit::FailEntry(reason, cpu)) => Some(StopReason::Fault(format!(
                "vCPU {id}: KVM entry failed (hardware reason {reason:#x}, cpu {cpu})"
            ))),
            Ok(VcpuExit::InternalError) => {
                Some(StopReason::Fault(format!("vCPU {id}: KVM internal error")))
            }
            Ok(other) => Some(StopReason::Fault(format!(
                "vCPU {id}: unexpected exit {other:?}"
            ))),
            // A kick: go back to the gate.
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => None,
            Err(e) => Some(StopReason::Fault(format!("vCPU {id}: KVM_RUN failed: {e}"))),
        }
    }
}

/// The running vCPU threads.
#[derive(Debug)]
pub struct Vcpus {
    threads: Vec<JoinHandle<()>>,
    gate: Arc<RunGate>,
    saves: Arc<Saves>,
}

/// Saving the vCPUs' state failed.
#[derive(Debug, thiserror::Error)]
pub enum SaveError {
    /// The vCPUs are running.
    #[error("the vCPUs must be paused to be saved")]
    NotPaused,
    /// Not every vCPU answered in time.
    #[error("{0} of {1} vCPUs did not save their state within {2:?}")]
    Timeout(usize, usize, Duration),
    /// A vCPU could not read its state.
    #[error("{0}")]
    Vcpu(String),
}

/// vCPUs did not reach the asked-for state in time.
#[derive(Debug, thiserror::Error)]
#[error("{0} of {1} vCPUs did not {2} within {3:?}")]
pub struct KickTimeout(usize, usize, &'static str, Duration);

impl Vcpus {
    /// Starts one thread per configured vCPU, each pinned to its host CPU of `affinity`
    /// (see [`crate::affinity`]; empty: not pinned). `msr_index` is the MSRs a saved vCPU
    /// state tries to read ([`Vcpus::save_states`]); `paused`: the threads park before
    /// their first KVM_RUN.
    pub fn start(
        fds: Vec<VcpuFd>,
        msr_index: Arc<[u32]>,
        paused: bool,
        pio: Arc<Bus>,
        mmio: Arc<Bus>,
        stop: Arc<StopSignal>,
        affinity: &[u32],
    ) -> std::io::Result<Self> {
        let gate = Arc::new(RunGate::default());
        // Set before any thread exists: a VM that starts paused runs no guest instruction.
        gate.set_paused(paused);
        let saves = Arc::new(Saves::default());
        let mut threads = Vec::with_capacity(fds.len());
        for (id, fd) in fds.into_iter().enumerate() {
            let t = VcpuThread {
                id: id as u8,
                fd,
                msr_index: msr_index.clone(),
                saves: saves.clone(),
                pio: pio.clone(),
                mmio: mmio.clone(),
                gate: gate.clone(),
                stop: stop.clone(),
                cpu: crate::affinity::cpu_of(affinity, id),
            };
            threads.push(
                std::thread::Builder::new()
                    .name(format!("vcpu{id}"))
                    .spawn(move || t.run())?,
            );
        }
        Ok(Vcpus {
            threads,
            gate,
            saves,
        })
    }

    /// Every vCPU's state, in vCPU order, each read by its own (parked) thread. The vCPUs must
    /// be paused, and stay paused.
    pub fn save_states(&self, timeout: Duration) -> Result<Vec<VcpuState>, SaveError> {
        if !self.gate.is_paused() {
            return Err(SaveError::NotPaused);
        }
        let total = self.threads.len();
        let mut slots = self.saves.slots.lock().unwrap_or_else(|p| p.into_inner());
        *slots = (0..total).map(|_| None).collect();
        self.gate.request_save();
        let deadline = Instant::now() + timeout;
        while slots.iter().any(Option::is_none) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let missing = slots.iter().filter(|s| s.is_none()).count();
                return Err(SaveError::Timeout(missing, total, timeout));
            }
            slots = self
                .saves
                .cv
                .wait_timeout(slots, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        slots
            .drain(..)
            .map(|s| {
                s.unwrap_or_else(|| Err("no state".into()))
                    .map_err(SaveError::Vcpu)
            })
            .collect()
    }

    fn kick_until(&self, done: impl Fn() -> bool, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if done() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            for t in self.threads.iter().filter(|t| !t.is_finished()) {
                let _ = t.kill(SIGRTMIN());
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Parks every vCPU; returns once all are parked.
    pub fn pause(&self, timeout: Duration) -> Result<(), KickTimeout> {
        self.gate.set_paused(true);
        let live = || self.threads.iter().filter(|t| !t.is_finished()).count();
        if self.kick_until(|| self.gate.parked() >= live(), timeout) {
            Ok(())
        } else {
            Err(KickTimeout(
                live() - self.gate.parked(),
                self.threads.len(),
                "pause",
                timeout,
            ))
        }
    }

    /// Lets parked vCPUs run again.
    pub fn resume(&self) {
        self.gate.set_paused(false);
    }

    /// Stops every vCPU thread and joins those that finished within `timeout`.
    pub fn stop(self, timeout: Duration) -> Result<(), KickTimeout> {
        self.gate.set_stop();
        let finished = self.kick_until(|| self.threads.iter().all(|t| t.is_finished()), timeout);
        let total = self.threads.len();
        let mut left = 0;
        for t in self.threads {
            if t.is_finished() {
                let _ = t.join();
            } else {
                left += 1;
            }
        }
        if finished {
            Ok(())
        } else {
            Err(KickTimeout(left, total, "stop", timeout))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_stop_reason_wins() {
        let s = StopSignal::new().unwrap();
        s.raise(StopReason::GuestShutdown("reset".into()));
        s.raise(StopReason::Fault("later".into()));
        assert_eq!(s.reason(), Some(StopReason::GuestShutdown("reset".into())));
        assert_eq!(s.eventfd().read().unwrap(), 2);
    }

    #[test]
    fn the_gate_parks_until_resumed_and_releases_on_stop() {
        let gate = Arc::new(RunGate::default());
        gate.set_paused(true);
        let g = gate.clone();
        let t = std::thread::spawn(move || g.wait_runnable(&mut 0));
        let deadline = Instant::now() + Duration::from_secs(5);
        while gate.parked() == 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(gate.parked(), 1);
        gate.set_paused(false);
        assert_eq!(t.join().unwrap(), Wake::Run, "resumed: keep running");
        gate.set_paused(true);
        gate.request_save();
        let mut round = 0;
        assert_eq!(gate.wait_runnable(&mut round), Wake::Save, "a save request");
        assert_eq!(round, 1);
        gate.set_stop();
        assert_eq!(
            gate.wait_runnable(&mut round),
            Wake::Stop,
            "stopped while paused: exit"
        );
    }
}

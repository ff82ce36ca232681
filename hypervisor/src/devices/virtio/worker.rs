//! A device's worker thread: started once, at setup, and kept for the device's whole life.
//! Each activation runs one epoll loop in it over the descriptors its handler registers, plus
//! a kill eventfd that ends the run.
//!
//! The thread exists before the guest runs, so it is confined (its seccomp filter, and for
//! virtio-fs its capabilities) before any guest-driven code runs in it, and no thread is ever
//! created after setup: no filter in husk-vmm allows `clone`. [`Worker::run`] makes the
//! handler in the worker thread (a backend's descriptors are opened there, under its filter)
//! and returns once it exists ([`Worker::submit`] returns at once, and [`Worker::built`] waits
//! later, so that several devices build theirs together); [`Worker::stop`] (or dropping the worker) ends the run and
//! returns only once the handler, with every backend descriptor it owned, is dropped. A panic
//! in the handler is caught: the device reports it through `on_fault` (normally
//! DEVICE_NEEDS_RESET) instead of taking the VMM down.

use std::io;
use std::os::fd::AsRawFd;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::interrupt::{InterruptReason, VirtioInterrupt};

/// The epoll token of the kill eventfd; handlers must not use it.
pub const KILL_TOKEN: u64 = u64::MAX;

/// What a worker thread runs.
pub trait EpollHandler: Send + 'static {
    /// Adds the handler's descriptors to `epoll` (called once, in the worker thread).
    fn register(&mut self, epoll: &Epoll) -> io::Result<()>;

    /// Handles readiness of the descriptor registered with `token`.
    fn handle(&mut self, token: u64, events: EventSet);

    /// How long the loop may sleep before [`EpollHandler::on_timeout`] is due (`None`: forever).
    fn timeout(&self) -> Option<Duration> {
        None
    }

    /// Called when the timeout elapsed without an event.
    fn on_timeout(&mut self) {}
}

/// One run of a handler, executed in the worker thread with its kill eventfd.
type Job = Box<dyn FnOnce(&EventFd) + Send>;

/// A device's worker thread.
#[derive(Debug)]
pub struct Worker {
    name: String,
    kill: EventFd,
    jobs: Option<mpsc::Sender<Job>>,
    /// Disconnects when the current run has ended and dropped its handler.
    current: Option<mpsc::Receiver<()>>,
    /// Whether the handler of the run submitted last was built, until [`Worker::built`] asks.
    building: Option<mpsc::Receiver<io::Result<()>>>,
    confinement: Confinement,
    thread: Option<JoinHandle<()>>,
}

/// Where a worker thread's confinement stands, as far as its owner knows.
#[derive(Debug)]
enum Confinement {
    /// The thread says how it went on this channel.
    Pending(mpsc::Receiver<io::Result<()>>),
    /// Confined.
    Done,
    /// It failed (the message); the thread has ended.
    Failed(String),
}

/// Adds `fd` to `epoll` for input readiness under `token`.
pub fn add_fd(epoll: &Epoll, fd: &impl AsRawFd, token: u64) -> io::Result<()> {
    epoll.ctl(
        ControlOperation::Add,
        fd.as_raw_fd(),
        EpollEvent::new(EventSet::IN, token),
    )
}

impl Worker {
    /// Starts thread `name`, which runs `confine` first and then waits for runs. Fails if the
    /// thread cannot start or `confine` fails (then the thread has already ended).
    pub fn start(
        name: &str,
        confine: impl FnOnce() -> io::Result<()> + Send + 'static,
    ) -> io::Result<Worker> {
        let mut w = Worker::spawn(name, confine)?;
        w.confined()?;
        Ok(w)
    }

    /// [`Worker::start`] without the wait: the thread confines itself while the caller goes on
    /// (several devices' threads then confine themselves at once), and [`Worker::confined`]
    /// says how that went. Runs submitted meanwhile wait in the queue: the thread takes none
    /// before it is confined, and none at all if that failed.
    pub fn spawn(
        name: &str,
        confine: impl FnOnce() -> io::Result<()> + Send + 'static,
    ) -> io::Result<Worker> {
        let kill = EventFd::new(libc::EFD_NONBLOCK)?;
        let their_kill = kill.try_clone()?;
        let (jobs, queue) = mpsc::channel::<Job>();
        let (ready, confined) = mpsc::sync_channel(1);
        let thread = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                let outcome = confine();
                let ok = outcome.is_ok();
                let _ = ready.send(outcome);
                if ok {
                    while let Ok(job) = queue.recv() {
                        job(&their_kill);
                    }
                }
            })?;
        Ok(Worker {
            name: name.to_string(),
            kill,
            jobs: Some(jobs),
            current: None,
            building: None,
            confinement: Confinement::Pending(confined),
            thread: Some(thread),
        })
    }

    /// Waits until the thread has confined itself: its error if that failed (the thread has
    /// then ended, and so has every run submitted to it). Later calls answer at once.
    pub fn confined(&mut self) -> io::Result<()> {
        let outcome = match &self.confinement {
            Confinement::Done => return Ok(()),
            Confinement::Failed(why) => return Err(io::Error::other(why.clone())),
            Confinement::Pending(rx) => rx
                .recv()
                .unwrap_or_else(|_| Err(io::Error::other("the thread panicked"))),
        };
        match outcome {
            Ok(()) => {
                self.confinement = Confinement::Done;
                Ok(())
            }
            Err(e) => {
                let e = io::Error::new(e.kind(), format!("confining thread {}: {e}", self.name));
                self.confinement = Confinement::Failed(e.to_string());
                self.jobs = None;
                if let Some(thread) = self.thread.take() {
                    let _ = thread.join();
                }
                Err(e)
            }
        }
    }

    /// The worker in `slot`, spawned first (as [`Worker::spawn`] does) if there is none yet:
    /// a device's worker is started at setup, or at its first activation when nobody did.
    pub fn started<'a>(
        slot: &'a mut Option<Worker>,
        name: &str,
        confine: impl FnOnce() -> io::Result<()> + Send + 'static,
    ) -> io::Result<&'a mut Worker> {
        if slot.is_none() {
            *slot = Some(Worker::spawn(name, confine)?);
        }
        Ok(slot.as_mut().expect("set above"))
    }

    /// Whether a handler runs (between [`Worker::run`] and [`Worker::stop`]).
    pub fn is_running(&self) -> bool {
        self.current.is_some()
    }

    /// Submits the handler `make` builds, for a device (see [`Worker::submit`]): if the handler
    /// fails or panics, the device sets DEVICE_NEEDS_RESET and interrupts the driver through
    /// `interrupt`, and the VMM goes on.
    pub fn submit_for_device<H: EpollHandler>(
        &mut self,
        make: impl FnOnce() -> io::Result<H> + Send + 'static,
        interrupt: Arc<dyn VirtioInterrupt>,
    ) -> io::Result<()> {
        self.submit(make, move || {
            let _ = interrupt.trigger(InterruptReason::NeedsReset);
        })
    }

    /// Builds a handler with `make` in the worker thread and runs it until [`Worker::stop`];
    /// `on_fault` runs (in the worker thread) if the handler fails or panics. Returns once the
    /// handler exists, with `make`'s error if it failed.
    pub fn run<H: EpollHandler>(
        &mut self,
        make: impl FnOnce() -> io::Result<H> + Send + 'static,
        on_fault: impl FnOnce() + Send + 'static,
    ) -> io::Result<()> {
        self.submit(make, on_fault)?;
        self.built()
    }

    /// [`Worker::run`] without the wait: hands the run to the thread and returns while the thread
    /// builds the handler, so that several devices' threads build theirs at once (a restore);
    /// [`Worker::built`] then says how that went.
    pub fn submit<H: EpollHandler>(
        &mut self,
        make: impl FnOnce() -> io::Result<H> + Send + 'static,
        on_fault: impl FnOnce() + Send + 'static,
    ) -> io::Result<()> {
        if self.current.is_some() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("thread {} already runs a handler", self.name),
            ));
        }
        let (started, made) = mpsc::sync_channel::<io::Result<()>>(1);
        let (done, ended) = mpsc::channel::<()>();
        let name = self.name.clone();
        let job: Job = Box::new(move |kill| {
            // Dropped last, after the handler: `stop` returns once the backend is closed.
            let _done = done;
            // A kill written for an earlier run (one that had ended on its own) is stale.
            let _ = kill.read();
            let built = catch_unwind(AssertUnwindSafe(|| -> io::Result<(Epoll, H)> {
                let epoll = Epoll::new()?;
                add_fd(&epoll, kill, KILL_TOKEN)?;
                Ok((epoll, make()?))
            }))
            .unwrap_or_else(|_| Err(io::Error::other("building the handler panicked")));
            let (epoll, mut handler) = match built {
                Ok(b) => {
                    let _ = started.send(Ok(()));
                    b
                }
                Err(e) => {
                    let _ = started.send(Err(e));
                    return;
                }
            };
            match catch_unwind(AssertUnwindSafe(|| run_loop(&epoll, &mut handler))) {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    eprintln!("husk-vmm: warning: device thread {name} stopped: {e}");
                    on_fault();
                }
                Err(_) => {
                    eprintln!(
                        "husk-vmm: warning: device thread {name} panicked; the device needs a reset"
                    );
                    on_fault();
                }
            }
            drop(handler);
        });
        let gone = || io::Error::other(format!("device thread {} is gone", self.name));
        self.jobs
            .as_ref()
            .ok_or_else(gone)?
            .send(job)
            .map_err(|_| gone())?;
        self.building = Some(made);
        self.current = Some(ended);
        Ok(())
    }

    /// Waits until the handler of the run submitted last exists; `make`'s error if it failed
    /// (then no run is current). Nothing to wait for is success.
    pub fn built(&mut self) -> io::Result<()> {
        let Some(made) = self.building.take() else {
            return self.confined();
        };
        if let Err(e) = self.confined() {
            self.current = None;
            return Err(e);
        }
        let outcome = made.recv().unwrap_or_else(|_| {
            Err(io::Error::other(format!(
                "device thread {} is gone",
                self.name
            )))
        });
        if outcome.is_err() {
            self.current = None;
        }
        outcome
    }

    /// Ends the current run, if any, and returns once its handler is dropped. The thread stays,
    /// ready for the next run.
    pub fn stop(&mut self) {
        // A run whose handler is still being built would take the kill below for a stale one.
        let _ = self.built();
        if let Some(ended) = self.current.take() {
            let _ = self.kill.write(1);
            // Disconnected (not a message) when the run is over.
            let _ = ended.recv();
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.stop();
        // No more jobs: the thread's loop ends.
        self.jobs = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// [`Worker::built`] for a device's worker, if it has one.
pub fn built_in(slot: &mut Option<Worker>) -> io::Result<()> {
    slot.as_mut().map_or(Ok(()), Worker::built)
}

/// [`Worker::confined`] for a device's worker, if it has one.
pub fn confined_in(slot: &mut Option<Worker>) -> io::Result<()> {
    slot.as_mut().map_or(Ok(()), Worker::confined)
}

fn run_loop<H: EpollHandler>(epoll: &Epoll, handler: &mut H) -> io::Result<()> {
    handler.register(epoll)?;
    let mut events = vec![EpollEvent::default(); 32];
    loop {
        let timeout = handler
            .timeout()
            .map(|d| i32::try_from(d.as_millis().max(1)).unwrap_or(i32::MAX))
            .unwrap_or(-1);
        let n = match epoll.wait(timeout, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        for ev in &events[..n] {
            if ev.data() == KILL_TOKEN {
                return Ok(());
            }
            handler.handle(ev.data(), ev.event_set());
        }
        // Due timers run even when events keep the loop busy.
        if n == 0 || handler.timeout() == Some(Duration::ZERO) {
            handler.on_timeout();
        }
    }
}

#[cfg(test)]
mod tests;

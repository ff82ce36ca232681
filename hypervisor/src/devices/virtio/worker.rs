//! A device's worker thread: one epoll loop over the descriptors its handler registers, plus a
//! kill eventfd that ends it.
//!
//! [`Worker::spawn`] starts the thread; [`Worker::stop`] (or dropping the worker) writes the
//! kill eventfd and joins it, so a device reset returns only once its thread is gone and the
//! handler (with every backend descriptor it owned) is dropped. A panic in the handler is
//! caught: the device reports it through `on_panic` (normally DEVICE_NEEDS_RESET) instead of
//! taking the VMM down.

use std::io;
use std::os::fd::AsRawFd;
use std::panic::{catch_unwind, AssertUnwindSafe};
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

/// A running worker thread.
#[derive(Debug)]
pub struct Worker {
    kill: EventFd,
    thread: Option<JoinHandle<()>>,
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
    /// Starts a device's worker thread `name`: if `handler` fails or panics, the device sets
    /// DEVICE_NEEDS_RESET and interrupts the driver through `interrupt`, and the VMM goes on.
    pub fn spawn_for_device<H: EpollHandler>(
        name: &str,
        handler: H,
        interrupt: Arc<dyn VirtioInterrupt>,
    ) -> io::Result<Worker> {
        Self::spawn(name, handler, move || {
            let _ = interrupt.trigger(InterruptReason::NeedsReset);
        })
    }

    /// Starts thread `name` running `handler`; `on_panic` runs if the handler panics.
    pub fn spawn<H: EpollHandler>(
        name: &str,
        handler: H,
        on_panic: impl FnOnce() + Send + 'static,
    ) -> io::Result<Worker> {
        let kill = EventFd::new(libc::EFD_NONBLOCK)?;
        let their_kill = kill.try_clone()?;
        let epoll = Epoll::new()?;
        add_fd(&epoll, &their_kill, KILL_TOKEN)?;
        let thread_name = name.to_string();
        let thread = std::thread::Builder::new()
            .name(thread_name.clone())
            .spawn(move || {
                let mut handler = handler;
                let run = catch_unwind(AssertUnwindSafe(|| run_loop(&epoll, &mut handler)));
                match run {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        eprintln!("husk-vmm: warning: device thread {thread_name} stopped: {e}");
                        on_panic();
                    }
                    Err(_) => {
                        eprintln!(
                            "husk-vmm: warning: device thread {thread_name} panicked; the device needs a reset"
                        );
                        on_panic();
                    }
                }
                drop(their_kill);
            })?;
        Ok(Worker {
            kill,
            thread: Some(thread),
        })
    }

    /// Asks the thread to exit and joins it.
    pub fn stop(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        if let Some(thread) = self.thread.take() {
            let _ = self.kill.write(1);
            let _ = thread.join();
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.stop_and_join();
    }
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
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    struct Counter {
        evt: EventFd,
        seen: Arc<AtomicUsize>,
        panic_on: usize,
    }

    impl EpollHandler for Counter {
        fn register(&mut self, epoll: &Epoll) -> io::Result<()> {
            add_fd(epoll, &self.evt, 7)
        }
        fn handle(&mut self, token: u64, _: EventSet) {
            assert_eq!(token, 7);
            let _ = self.evt.read();
            if self.seen.fetch_add(1, Ordering::SeqCst) + 1 == self.panic_on {
                panic!("handler bug");
            }
        }
    }

    fn wait_for(f: impl Fn() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !f() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn events_reach_the_handler_and_stop_joins() {
        let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let seen = Arc::new(AtomicUsize::new(0));
        let h = Counter {
            evt: evt.try_clone().unwrap(),
            seen: seen.clone(),
            panic_on: 0,
        };
        let w = Worker::spawn("test-worker", h, || {}).unwrap();
        evt.write(1).unwrap();
        wait_for(|| seen.load(Ordering::SeqCst) == 1);
        assert_eq!(seen.load(Ordering::SeqCst), 1);
        w.stop();
    }

    #[test]
    fn a_panicking_handler_reports_instead_of_killing_the_process() {
        let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let flagged = Arc::new(AtomicUsize::new(0));
        let f = flagged.clone();
        let h = Counter {
            evt: evt.try_clone().unwrap(),
            seen: Arc::new(AtomicUsize::new(0)),
            panic_on: 1,
        };
        let w = Worker::spawn("test-panic", h, move || {
            f.fetch_add(1, Ordering::SeqCst);
        })
        .unwrap();
        evt.write(1).unwrap();
        wait_for(|| flagged.load(Ordering::SeqCst) == 1);
        assert_eq!(flagged.load(Ordering::SeqCst), 1);
        drop(w);
    }
}

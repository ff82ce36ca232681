//! The one owner of `waitpid`: a SIGCHLD-driven `waitpid(-1, WNOHANG)` loop that routes each
//! exit to whoever registered the pid.
//!
//! Container processes are not the agent's children when they are created (the runner forks
//! them); they become its children when the runner exits. A process may therefore exit, and be
//! reaped here, before anybody asked for it: such exits wait in a bounded "unclaimed" map. Each
//! exit carries the reaper's event number, and a registration names the event number it starts
//! from (taken before the process could exist), so a stale exit of an earlier process with a
//! recycled pid is never handed to a new one. Orphans reparented to PID 1 land in the same map
//! and age out.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use tokio::sync::oneshot;

/// How many unclaimed exits are kept (the oldest are dropped first).
pub const UNCLAIMED_CAP: usize = 4096;

/// A reaped process: its status as runc reports it, and when it was reaped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    /// The exit code, or 128 + N when killed by signal N.
    pub status: u32,
    /// When the reaper collected it.
    pub at: SystemTime,
}

impl Exit {
    /// Nanoseconds since the Unix epoch.
    pub fn at_ns(&self) -> u64 {
        self.at
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
            .unwrap_or(0)
    }
}

/// The exit status runc reports for a `waitpid` status word.
pub fn runc_status(wstatus: i32) -> u32 {
    if libc::WIFEXITED(wstatus) {
        libc::WEXITSTATUS(wstatus) as u32
    } else if libc::WIFSIGNALED(wstatus) {
        128 + libc::WTERMSIG(wstatus) as u32
    } else {
        255
    }
}

/// The bookkeeping, without any system call (unit-tested with made-up exits).
#[derive(Debug, Default)]
pub struct Book {
    event: u64,
    waiting: HashMap<i32, (u64, oneshot::Sender<Exit>)>,
    unclaimed: HashMap<i32, (u64, Exit)>,
    order: VecDeque<(i32, u64)>,
}

impl Book {
    /// The current event number: exits recorded from now on are numbered higher.
    pub fn epoch(&self) -> u64 {
        self.event
    }

    /// Asks for `pid`'s exit, counting only exits recorded after event `since`.
    pub fn watch(&mut self, pid: i32, since: u64) -> oneshot::Receiver<Exit> {
        let (tx, rx) = oneshot::channel();
        match self.unclaimed.remove(&pid) {
            Some((event, exit)) if event > since => {
                let _ = tx.send(exit);
            }
            _ => {
                self.waiting.insert(pid, (since, tx));
            }
        }
        rx
    }

    /// Records a reaped process.
    pub fn record(&mut self, pid: i32, exit: Exit) {
        self.event += 1;
        if let Some((since, tx)) = self.waiting.remove(&pid) {
            if self.event > since && tx.send(exit).is_ok() {
                return;
            }
        }
        self.unclaimed.insert(pid, (self.event, exit));
        self.order.push_back((pid, self.event));
        while self.order.len() > UNCLAIMED_CAP {
            if let Some((old, event)) = self.order.pop_front() {
                if self.unclaimed.get(&old).is_some_and(|(e, _)| *e == event) {
                    self.unclaimed.remove(&old);
                }
            }
        }
    }

    /// Unclaimed exits currently held.
    pub fn unclaimed_len(&self) -> usize {
        self.unclaimed.len()
    }
}

/// Where exits come from: `waitpid(-1, WNOHANG)` in the agent, a script in tests.
pub trait ExitSource: Send + 'static {
    /// The next reaped child, or `None` when no child has exited (or none exists).
    fn next_exit(&mut self) -> Option<(i32, u32)>;
}

/// The real source.
#[derive(Debug, Default)]
pub struct WaitPid;

impl ExitSource for WaitPid {
    fn next_exit(&mut self) -> Option<(i32, u32)> {
        let mut wstatus = 0;
        loop {
            // SAFETY: waitpid(2) writes only to `wstatus`, a live local.
            let pid = unsafe { libc::waitpid(-1, &mut wstatus, libc::WNOHANG) };
            if pid > 0 {
                return Some((pid, runc_status(wstatus)));
            }
            if pid < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return None;
        }
    }
}

/// Shared handle to the reaper's book.
#[derive(Debug, Clone, Default)]
pub struct Reaper {
    book: Arc<Mutex<Book>>,
}

impl Reaper {
    /// A reaper with an empty book (start [`Reaper::run`] to feed it).
    pub fn new() -> Self {
        Reaper::default()
    }

    fn book(&self) -> std::sync::MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// See [`Book::epoch`]: take it before creating a process, pass it to [`Reaper::watch`].
    pub fn epoch(&self) -> u64 {
        self.book().epoch()
    }

    /// See [`Book::watch`].
    pub fn watch(&self, pid: i32, since: u64) -> oneshot::Receiver<Exit> {
        self.book().watch(pid, since)
    }

    /// Collects every exit `source` has now.
    pub fn drain(&self, source: &mut dyn ExitSource) {
        while let Some((pid, status)) = source.next_exit() {
            tracing::debug!(pid, status, "reaped");
            self.book().record(
                pid,
                Exit {
                    status,
                    at: SystemTime::now(),
                },
            );
        }
    }

    /// Reaps on every SIGCHLD (and once a second, in case a signal was missed). The SIGCHLD
    /// handler must be installed before the first child is spawned: call this first.
    pub fn spawn(&self) -> std::io::Result<()> {
        use tokio::signal::unix::{signal, SignalKind};
        let mut sigchld = signal(SignalKind::child())?;
        let reaper = self.clone();
        tokio::spawn(async move {
            let mut source = WaitPid;
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
            loop {
                reaper.drain(&mut source);
                tokio::select! {
                    _ = sigchld.recv() => {}
                    _ = tick.tick() => {}
                }
            }
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exit(status: u32) -> Exit {
        Exit {
            status,
            at: SystemTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn statuses_are_reported_as_runc_does() {
        assert_eq!(runc_status(3 << 8), 3);
        assert_eq!(runc_status(libc::SIGKILL), 137);
        assert_eq!(runc_status(0), 0);
    }

    #[test]
    fn exit_before_and_after_registration_both_arrive() {
        let mut book = Book::default();
        let since = book.epoch();
        book.record(10, exit(3)); // exits before anybody watches
        let mut early = book.watch(10, since);
        assert_eq!(early.try_recv().unwrap().status, 3);

        let mut late = book.watch(11, book.epoch());
        assert!(late.try_recv().is_err());
        book.record(11, exit(137));
        assert_eq!(late.try_recv().unwrap().status, 137);
        assert_eq!(book.unclaimed_len(), 0);
    }

    #[test]
    fn a_stale_exit_of_a_recycled_pid_is_not_handed_out() {
        let mut book = Book::default();
        book.record(42, exit(1)); // an earlier process with pid 42
        let since = book.epoch(); // a new process is about to be created
        let mut rx = book.watch(42, since);
        assert!(rx.try_recv().is_err(), "stale exit delivered");
        book.record(42, exit(0));
        assert_eq!(rx.try_recv().unwrap().status, 0);
    }

    #[test]
    fn unclaimed_exits_are_bounded() {
        let mut book = Book::default();
        for pid in 0..(UNCLAIMED_CAP as i32 + 100) {
            book.record(pid, exit(0));
        }
        assert_eq!(book.unclaimed_len(), UNCLAIMED_CAP);
        // The oldest went first.
        let mut rx = book.watch(0, 0);
        assert!(rx.try_recv().is_err());
        let mut rx = book.watch(UNCLAIMED_CAP as i32 + 99, 0);
        assert!(rx.try_recv().is_ok());
    }

    struct Script(Vec<(i32, u32)>);
    impl ExitSource for Script {
        fn next_exit(&mut self) -> Option<(i32, u32)> {
            self.0.pop()
        }
    }

    #[test]
    fn drain_routes_every_exit() {
        let reaper = Reaper::new();
        let mut a = reaper.watch(1, 0);
        let mut b = reaper.watch(2, 0);
        reaper.drain(&mut Script(vec![(1, 0), (2, 143), (3, 1)]));
        assert_eq!(a.try_recv().unwrap().status, 0);
        assert_eq!(b.try_recv().unwrap().status, 143);
        assert_eq!(reaper.book().unclaimed_len(), 1);
    }
}

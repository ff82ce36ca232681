//! One process as containerd sees it: a container's init (empty exec id) or an exec, with its
//! status (a checked state machine), its exit, and its stdio.

use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use containerd_shim_protos::api::Status;
use tokio::sync::watch;

use crate::error::ShimError;
use crate::io::{ProcessIo, StdioSpec};

/// A process's life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcStatus {
    /// Created in the guest, not started.
    Created,
    /// Started.
    Running,
    /// Exited (or never ran and was stopped).
    Stopped,
    /// Forgotten by Delete.
    Deleted,
}

impl ProcStatus {
    /// Whether `self -> to` is a legal step.
    pub fn can_become(self, to: ProcStatus) -> bool {
        use ProcStatus::*;
        matches!(
            (self, to),
            (Created, Running)
                | (Created, Stopped)
                | (Running, Stopped)
                | (Stopped, Deleted)
                | (Created, Deleted)
        )
    }

    /// containerd's name for it (pausing is the container's business).
    pub fn to_proto(self, paused: bool) -> Status {
        match self {
            ProcStatus::Created => Status::CREATED,
            ProcStatus::Running if paused => Status::PAUSED,
            ProcStatus::Running => Status::RUNNING,
            ProcStatus::Stopped | ProcStatus::Deleted => Status::STOPPED,
        }
    }
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitInfo {
    /// As runc reports it: the code, or 128 + signal.
    pub status: u32,
    /// When.
    pub at: SystemTime,
}

impl ExitInfo {
    /// A process whose start failed: it never ran (255, the status of a command that could not
    /// be run at all).
    pub fn never_started() -> ExitInfo {
        ExitInfo {
            status: 255,
            at: SystemTime::now(),
        }
    }

    /// Killed by SIGKILL now (what runc reports for a process whose VM vanished).
    pub fn killed() -> ExitInfo {
        ExitInfo {
            status: 128 + libc::SIGKILL as u32,
            at: SystemTime::now(),
        }
    }
}

#[derive(Debug)]
struct Inner {
    status: ProcStatus,
    guest_pid: u32,
}

/// One process.
#[derive(Debug)]
pub struct Process {
    /// Its container.
    pub container_id: String,
    /// Empty for the init process.
    pub exec_id: String,
    /// The stdio containerd asked for.
    pub stdio: StdioSpec,
    inner: Mutex<Inner>,
    exit_tx: watch::Sender<Option<ExitInfo>>,
    /// Its live stdio.
    pub io: Arc<ProcessIo>,
    /// Held across "start in the guest + publish start", so an exit (even one from a VM crash)
    /// is never published before the start.
    pub start_lock: tokio::sync::Mutex<()>,
}

impl Process {
    /// A process the agent created.
    pub fn new(container_id: &str, exec_id: &str, stdio: StdioSpec, io: ProcessIo) -> Process {
        let (exit_tx, _) = watch::channel(None);
        Process {
            container_id: container_id.to_string(),
            exec_id: exec_id.to_string(),
            stdio,
            inner: Mutex::new(Inner {
                status: ProcStatus::Created,
                guest_pid: 0,
            }),
            exit_tx,
            io: Arc::new(io),
            start_lock: tokio::sync::Mutex::new(()),
        }
    }

    /// The id containerd uses for this process in events (`TaskExit.id`).
    pub fn event_id(&self) -> &str {
        if self.exec_id.is_empty() {
            &self.container_id
        } else {
            &self.exec_id
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The current status.
    pub fn status(&self) -> ProcStatus {
        self.lock().status
    }

    /// Its pid in the guest (0 before it started).
    pub fn guest_pid(&self) -> u32 {
        self.lock().guest_pid
    }

    /// Moves to `to`, or says why it cannot.
    pub fn transition(&self, to: ProcStatus) -> Result<(), ShimError> {
        let mut inner = self.lock();
        if !inner.status.can_become(to) {
            return Err(ShimError::FailedPrecondition(format!(
                "process {} is {:?} and cannot become {:?}",
                self.event_id(),
                inner.status,
                to
            )));
        }
        inner.status = to;
        Ok(())
    }

    /// Records the start.
    pub fn set_running(&self, guest_pid: u32) -> Result<(), ShimError> {
        self.transition(ProcStatus::Running)?;
        self.lock().guest_pid = guest_pid;
        Ok(())
    }

    /// Records the exit; true only for the first caller (the one that publishes it).
    pub fn set_exited(&self, exit: ExitInfo) -> bool {
        {
            let mut inner = self.lock();
            if !inner.status.can_become(ProcStatus::Stopped) {
                return false;
            }
            inner.status = ProcStatus::Stopped;
        }
        self.exit_tx.send_replace(Some(exit));
        true
    }

    /// The exit, once known.
    pub fn exit(&self) -> Option<ExitInfo> {
        *self.exit_tx.borrow()
    }

    /// Waits for the exit.
    pub async fn wait(&self) -> ExitInfo {
        let mut rx = self.exit_tx.subscribe();
        let exit = rx.wait_for(Option::is_some).await.ok().and_then(|v| *v);
        exit.unwrap_or_else(ExitInfo::killed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p() -> Process {
        Process::new("c1", "", StdioSpec::default(), ProcessIo::none())
    }

    #[test]
    fn transitions_are_checked() {
        let p = p();
        assert_eq!(p.status(), ProcStatus::Created);
        assert!(p.transition(ProcStatus::Deleted).is_ok());
        let p2 = Process::new("c1", "e1", StdioSpec::default(), ProcessIo::none());
        p2.set_running(42).unwrap();
        assert!(matches!(
            p2.set_running(43),
            Err(ShimError::FailedPrecondition(_))
        ));
        assert_eq!(p2.guest_pid(), 42);
        assert_eq!(p2.event_id(), "e1");
        assert_eq!(p2.status().to_proto(true), Status::PAUSED);
    }

    #[tokio::test]
    async fn the_first_exit_wins_and_wakes_waiters() {
        let p = Arc::new(p());
        p.set_running(1).unwrap();
        let waiter = tokio::spawn({
            let p = p.clone();
            async move { p.wait().await }
        });
        let first = ExitInfo {
            status: 3,
            at: SystemTime::now(),
        };
        assert!(p.set_exited(first));
        assert!(!p.set_exited(ExitInfo::killed()));
        assert_eq!(waiter.await.unwrap().status, 3);
        assert_eq!(p.exit().unwrap().status, 3);
        assert_eq!(p.status(), ProcStatus::Stopped);
    }
}

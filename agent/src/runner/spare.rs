//! One runner started ahead of need, so that a container's creation (or an exec) does not wait
//! for a runner's exec and start-up.
//!
//! The spare is started after a runner has been used, or after a pod's sandbox container was
//! created by an anchor ([`crate::container::pause`]), never earlier. So the spare for the
//! pod's next container starts while the guest has nothing else to do: while containerd, on
//! the host, prepares that container. Started earlier (at `Restored` or `SetupSandbox`), a spare
//! only took the guest's one vCPU from the pod's own setup (measured: `make bench BENCH=cri`,
//! SetupSandbox 40 ms longer for 45 ms less runner time). And a template, snapshotted when
//! the agent is ready, never holds one: no runner's memory, its random state included, is
//! shared by the pods restored from one template. A spare nobody uses only waits on its
//! socket, and exits quietly when the agent drops it.

use std::os::fd::BorrowedFd;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use super::spawn::{self, Outcome, Started};
use super::Request;
use crate::error::Result;
use crate::reaper::Reaper;

/// Starts runners, keeping one spare.
#[derive(Debug)]
pub struct Runners {
    exe: PathBuf,
    reaper: Reaper,
    spare: Mutex<Option<Started>>,
}

impl Runners {
    /// Runners of `exe`, collected by `reaper`; no spare yet.
    pub fn new(exe: PathBuf, reaper: Reaper) -> Self {
        Runners {
            exe,
            reaper,
            spare: Mutex::new(None),
        }
    }

    fn slot(&self) -> MutexGuard<'_, Option<Started>> {
        self.spare.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a spare is waiting.
    pub fn has_spare(&self) -> bool {
        self.slot().is_some()
    }

    /// Starts a spare in the background unless one is waiting. Needs a tokio runtime.
    pub fn prime(self: &Arc<Self>) {
        if self.has_spare() {
            return;
        }
        let me = Arc::clone(self);
        tokio::task::spawn_blocking(move || me.fill());
    }

    /// Starts a spare now unless one is waiting (two racing fills keep the first; the other
    /// runner is dropped and exits).
    fn fill(&self) {
        match spawn::start(&self.exe, &self.reaper) {
            Ok(runner) => {
                let mut slot = self.slot();
                if slot.is_none() {
                    *slot = Some(runner);
                }
            }
            Err(e) => tracing::warn!(error = %e, "starting a spare runner"),
        }
    }

    /// Runs `request` with `fds` on the spare, or on a runner started now when none is
    /// waiting or the spare died waiting (the guest's OOM killer may take it: the request
    /// never reached it, or reached its socket but was never read, so it goes to a fresh
    /// runner), then starts the next spare in the background. Blocking: call it from
    /// `spawn_blocking`.
    pub fn run(self: &Arc<Self>, request: &Request, fds: &[BorrowedFd<'_>]) -> Result<Outcome> {
        let spare = self.slot().take();
        let outcome = match spare.map(|runner| spawn::send(runner, request, fds)) {
            Some(Ok(sent)) => match sent.reply() {
                // It died (killed while waiting) between the send and its read.
                Err(e) if spawn::never_read(&e) => {
                    tracing::warn!(error = %e, "the spare runner died before reading its request");
                    self.fresh(request, fds)
                }
                r => r,
            },
            Some(Err((dead, e))) => {
                tracing::warn!(pid = dead.pid(), error = %e, "the spare runner is gone");
                self.fresh(request, fds)
            }
            None => self.fresh(request, fds),
        };
        self.prime();
        outcome
    }

    /// Runs `request` on a runner started now.
    fn fresh(&self, request: &Request, fds: &[BorrowedFd<'_>]) -> Result<Outcome> {
        spawn::call(spawn::start(&self.exe, &self.reaper)?, request, fds)
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::time::{Duration, Instant};

    use super::*;

    /// A stand-in runner: reads one request from its socket (stdin) and answers with its own
    /// pid, as the real one answers with the container's.
    fn fake_runner(dir: &std::path::Path) -> PathBuf {
        let exe = dir.join("runner");
        std::fs::write(
            &exe,
            "#!/bin/sh\n\
             f=\"$0.$$\"\n\
             dd bs=65536 count=1 status=none of=\"$f\"\n\
             [ -s \"$f\" ] || { rm -f \"$f\"; exit 0; }\n\
             rm -f \"$f\"\n\
             printf '{\"Ok\":{\"pid\":%d}}' $$ >&0\n",
        )
        .unwrap();
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
        exe
    }

    fn request() -> Request {
        Request::Start {
            container_id: "c".into(),
            state_root: "/nonexistent".into(),
        }
    }

    async fn wait_for_spare(runners: &Runners) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !runners.has_spare() {
            assert!(Instant::now() < deadline, "no spare runner after 10 s");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_request_takes_the_spare_and_a_new_one_follows() {
        let dir = tempfile::tempdir().unwrap();
        let runners = Arc::new(Runners::new(fake_runner(dir.path()), Reaper::new()));
        assert!(!runners.has_spare(), "no spare before a runner is used");
        runners.prime();
        wait_for_spare(&runners).await;
        let spare_pid = runners.slot().as_ref().map(|r| r.pid()).unwrap();

        let r = Arc::clone(&runners);
        let first = tokio::task::spawn_blocking(move || r.run(&request(), &[]))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(first.pid, spare_pid, "the request ran on the spare");
        wait_for_spare(&runners).await;
        let next_pid = runners.slot().as_ref().map(|r| r.pid()).unwrap();
        assert_ne!(next_pid, spare_pid, "a fresh spare follows");

        // Priming with a spare waiting starts nothing more.
        runners.prime();
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(runners.slot().as_ref().map(|r| r.pid()), Some(next_pid));
        drop(runners.slot().take());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_request_goes_to_a_fresh_runner_when_the_spare_died() {
        let dir = tempfile::tempdir().unwrap();
        let runners = Arc::new(Runners::new(fake_runner(dir.path()), Reaper::new()));
        runners.prime();
        wait_for_spare(&runners).await;
        let dead = runners.slot().as_ref().map(|r| r.pid()).unwrap();
        // The stand-in is a shell whose dd also holds the socket (a real runner is one
        // process): once dd is waiting, kill it first.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !std::process::Command::new("pgrep")
            .args(["-P", &dead.to_string()])
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap()
            .success()
        {
            assert!(Instant::now() < deadline, "the stand-in's dd never started");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let _ = std::process::Command::new("pkill")
            .args(["-KILL", "-P", &dead.to_string()])
            .status();
        // SAFETY: kill(2) on the stand-in runner this test started.
        unsafe { libc::kill(dead, libc::SIGKILL) };
        let mut status = 0;
        // SAFETY: waitpid(2) on that child, so its socket end is closed for sure.
        unsafe { libc::waitpid(dead, &mut status, 0) };
        let r = Arc::clone(&runners);
        let out = tokio::task::spawn_blocking(move || r.run(&request(), &[]))
            .await
            .unwrap()
            .unwrap();
        assert_ne!(out.pid, dead, "the request ran on a fresh runner");
        wait_for_spare(&runners).await;
        drop(runners.slot().take());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn without_a_spare_a_runner_starts_on_demand() {
        let dir = tempfile::tempdir().unwrap();
        let runners = Arc::new(Runners::new(fake_runner(dir.path()), Reaper::new()));
        let r = Arc::clone(&runners);
        let out = tokio::task::spawn_blocking(move || r.run(&request(), &[]))
            .await
            .unwrap()
            .unwrap();
        assert!(out.pid > 0);
        wait_for_spare(&runners).await;
        drop(runners.slot().take());
    }
}

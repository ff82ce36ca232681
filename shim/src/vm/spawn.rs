//! The husk-vmm process: started with `--config <state>/vm.json`, its stdout (the guest
//! console) and stderr (the VMM's own messages) read line by line, each line bounded
//! ([`crate::lines`]), into the shim's log (console at debug level, rate-limited) and into small ring buffers whose tails go into error
//! messages, and one task that reaps it and reports how it ended (`protocol::VmmExit`).
//!
//! The shim does not use containerd-shim's reaper (`Config::no_reaper`): the shim reaps this
//! child itself, through the pidfd [`launch`] returns.

use std::collections::VecDeque;
use std::ffi::OsStr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use husk_protocol::VmmExit;

use crate::lines::{BoundedLines, RateLimit, MAX_LINE};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::io::unix::AsyncFd;
use tokio::io::AsyncRead;
use tokio::net::unix::pipe;
use tokio::sync::watch;

use super::launch::{launch, reap, Ended, Lifetime};
use crate::cgroup::Join;

/// Console lines kept for error messages.
pub const TAIL_LINES: usize = 50;
/// Console lines logged per second before the rest is dropped (and counted).
const CONSOLE_LINES_PER_SEC: u32 = 50;

/// husk-vmm's milestone lines, kept by a [`Tail`] whatever follows them (at most
/// [`MILESTONES_KEPT`]): how far a VM got must not be pushed out by later lines.
const MILESTONES: [&str; 3] = [
    husk_protocol::vmm::RESTORED,
    husk_protocol::vmm::VCPUS_RUNNING,
    husk_protocol::vmm::DRIVER_READY,
];
/// Milestone lines kept (one timeline, a few devices).
const MILESTONES_KEPT: usize = 8;

/// The last lines of a stream, and, for husk-vmm's stderr, its milestone lines.
#[derive(Debug, Default)]
pub struct Tail {
    lines: VecDeque<String>,
    /// Whether milestone lines are kept: only on husk-vmm's own stderr, never on the console,
    /// whose lines the guest writes.
    keeps_milestones: bool,
    milestones: Vec<String>,
}

impl Tail {
    /// The tail of husk-vmm's stderr: it also keeps the milestone lines.
    pub fn vmm_stderr() -> Tail {
        Tail {
            keeps_milestones: true,
            ..Tail::default()
        }
    }

    /// Adds a line, forgetting the oldest beyond [`TAIL_LINES`] (milestones stay).
    pub fn push(&mut self, line: String) {
        if self.keeps_milestones
            && self.milestones.len() < MILESTONES_KEPT
            && MILESTONES.iter().any(|m| line.starts_with(m))
        {
            self.milestones.push(line.clone());
        }
        if self.lines.len() == TAIL_LINES {
            self.lines.pop_front();
        }
        self.lines.push_back(line);
    }

    /// Whether husk-vmm printed a milestone line starting with `prefix`, however long ago.
    pub fn reached(&self, prefix: &str) -> bool {
        self.milestones.iter().any(|l| l.starts_with(prefix))
    }

    /// The kept lines, newline-separated, each indented by two spaces; `(nothing)` when empty.
    /// The indent keeps a kept line (which the guest may have written) from starting a line of
    /// the log or message it is put in: none of them can pose as a log record of the host's.
    pub fn text(&self) -> String {
        if self.lines.is_empty() {
            return "(nothing)".into();
        }
        self.lines
            .iter()
            .map(|l| format!("  {l}"))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The last `n` kept lines on one line, joined by ` | `; `(nothing)` when empty. For a
    /// warning or an error that must stay one log line (the e2e rule and log readers match a
    /// cause, such as a triple fault, on the line that names what failed).
    pub fn last_words(&self, n: usize) -> String {
        if self.lines.is_empty() {
            return "(nothing)".into();
        }
        let skip = self.lines.len().saturating_sub(n);
        self.lines
            .iter()
            .skip(skip)
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join(" | ")
    }

    /// Whether any kept line contains `needle`.
    pub fn contains(&self, needle: &str) -> bool {
        self.lines.iter().any(|l| l.contains(needle))
    }

    /// The kept lines, oldest first.
    pub fn lines(&self) -> impl Iterator<Item = &str> {
        self.lines.iter().map(String::as_str)
    }

    /// The first kept line containing `needle`.
    pub fn find(&self, needle: &str) -> Option<String> {
        self.lines.iter().find(|l| l.contains(needle)).cloned()
    }

    /// Whether nothing was kept.
    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }
}

/// A shared tail.
pub type SharedTail = Arc<Mutex<Tail>>;

/// How the VMM ended, with what it said last.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmmEnd {
    /// The decoded exit code.
    pub exit: VmmExit,
}

impl std::fmt::Display for VmmEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.exit {
            VmmExit::GuestShutdown => write!(f, "the guest shut down (exit 0)"),
            VmmExit::Error => write!(f, "husk-vmm failed (exit 1)"),
            VmmExit::Usage => write!(f, "husk-vmm was called wrongly (exit 2)"),
            VmmExit::Signal(n) => write!(f, "husk-vmm stopped on signal {n}"),
        }
    }
}

/// A running (or ended) husk-vmm.
#[derive(Debug)]
pub struct VmmProcess {
    /// Its host pid.
    pub pid: u32,
    /// The guest console's last lines.
    pub console: SharedTail,
    /// husk-vmm's own last stderr lines.
    pub stderr: SharedTail,
    /// `Some` once it was reaped.
    pub ended: watch::Receiver<Option<VmmEnd>>,
}

fn pump<R: AsyncRead + Unpin + Send + 'static>(reader: R, tail: SharedTail, console: bool) {
    tokio::spawn(async move {
        let mut lines = BoundedLines::new(reader, MAX_LINE);
        let mut limit = RateLimit::new(CONSOLE_LINES_PER_SEC);
        while let Ok(Some(line)) = lines.next_line().await {
            if !console {
                tracing::info!("husk-vmm: {line}");
            } else if limit.allow(Instant::now(), |n| {
                tracing::debug!(
                    lines = n,
                    cut = lines.cut,
                    "guest console: lines not logged (rate limit)"
                )
            }) {
                tracing::debug!("guest: {line}");
            }
            if let Ok(mut t) = tail.lock() {
                t.push(line);
            }
        }
    });
}

/// Starts `vmm --config <config>` as PID 1 of a PID namespace of its own ([`launch`]; without
/// one when `pid_namespace` is false, for unprivileged tests), in the cgroup `join` opened,
/// and the tasks that read and reap it.
pub fn spawn(
    vmm: &Path,
    config: &Path,
    pid_namespace: bool,
    join: Option<&Join>,
    lifetime: Lifetime,
) -> std::io::Result<VmmProcess> {
    let launched = launch(
        vmm,
        &[OsStr::new("--config"), config.as_os_str()],
        pid_namespace,
        join,
        lifetime,
    )?;
    let pid = launched.pid;
    let console = SharedTail::default();
    let stderr: SharedTail = Arc::new(Mutex::new(Tail::vmm_stderr()));
    pump(
        pipe::Receiver::from_owned_fd(launched.stdout)?,
        console.clone(),
        true,
    );
    pump(
        pipe::Receiver::from_owned_fd(launched.stderr)?,
        stderr.clone(),
        false,
    );
    // SAFETY: an OwnedFd keeps its descriptor open and the same until the AsyncFd drops it.
    let pidfd = unsafe { AsyncFd::register(launched.pidfd) }.map_err(|e| e.into_parts().1)?;
    let (tx, ended) = watch::channel(None);
    tokio::spawn(async move {
        let exit = loop {
            // Readable once the process exited; then waitid reaps it.
            let ready = pidfd.readable().await;
            match reap(pidfd.get_ref()) {
                Ok(Some(Ended::Code(code))) => break VmmExit::from_code(code),
                Ok(Some(Ended::Signal(sig))) => break VmmExit::Signal(sig),
                Ok(None) => {
                    if let Ok(mut guard) = ready {
                        guard.clear_ready();
                    }
                }
                Err(e) => {
                    tracing::error!("waiting for husk-vmm {pid}: {e}");
                    break VmmExit::Error;
                }
            }
        };
        tracing::info!(pid, "husk-vmm ended: {}", VmmEnd { exit });
        let _ = tx.send(Some(VmmEnd { exit }));
    });
    Ok(VmmProcess {
        pid,
        console,
        stderr,
        ended,
    })
}

impl VmmProcess {
    /// Sends `sig` unless it already ended.
    pub fn signal(&self, sig: Signal) {
        if self.ended.borrow().is_none() {
            if let Ok(pid) = i32::try_from(self.pid) {
                let _ = kill(Pid::from_raw(pid), sig);
            }
        }
    }

    /// Waits for the end, at most `limit`.
    pub async fn wait(&self, limit: Duration) -> Option<VmmEnd> {
        tokio::time::timeout(limit, self.end()).await.ok().flatten()
    }

    /// Resolves when it ended (`None` if the reaper is gone without saying how); it does not
    /// borrow the process, so it can outlive it.
    pub fn end(&self) -> impl std::future::Future<Output = Option<VmmEnd>> + Send + 'static {
        let mut rx = self.ended.clone();
        async move {
            rx.wait_for(Option::is_some)
                .await
                .ok()
                .and_then(|v| v.clone())
        }
    }

    /// SIGTERM, then SIGKILL after `grace`; returns once it was reaped (or 10 s after SIGKILL).
    pub async fn terminate(&self, grace: Duration) -> Option<VmmEnd> {
        self.signal(Signal::SIGTERM);
        if let Some(end) = self.wait(grace).await {
            return Some(end);
        }
        self.signal(Signal::SIGKILL);
        self.wait(Duration::from_secs(10)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_the_last_lines() {
        let mut t = Tail::default();
        assert_eq!(t.text(), "(nothing)");
        for i in 0..(TAIL_LINES + 5) {
            t.push(format!("line {i}"));
        }
        assert!(!t.contains("line 4\n") && t.text().starts_with("  line 5\n"));
        assert!(t.text().ends_with(&format!("line {}", TAIL_LINES + 4)));
        assert_eq!(t.find("line 10"), Some("line 10".into()));
    }

    #[test]
    fn a_tail_never_starts_a_line_of_what_it_is_put_in() {
        let mut t = Tail::default();
        assert_eq!(t.last_words(3), "(nothing)");
        // A guest console line that poses as one of the shim's own log records.
        let forged = "2026-12-06T19:41:23.855652Z ERROR the sandbox VM ended unexpectedly";
        t.push("booting".into());
        t.push(forged.into());
        t.push("husk-vmm: guest shut down (vCPU 0: triple fault (reboot))".into());
        let text = t.text();
        assert!(text.lines().all(|l| l.starts_with("  ")), "{text}");
        assert!(text.contains(forged));
        let words = t.last_words(2);
        assert_eq!(words.lines().count(), 1, "{words}");
        assert_eq!(
            words,
            format!("{forged} | husk-vmm: guest shut down (vCPU 0: triple fault (reboot))")
        );
        assert_eq!(t.last_words(10).matches(" | ").count(), 2);
    }

    #[tokio::test]
    async fn exit_codes_and_output_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("fake-vmm");
        std::fs::write(
            &script,
            "#!/bin/sh\necho \"console $2\"\necho 'vmm says no' >&2\nexit 1\n",
        )
        .unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let p = spawn(&script, Path::new("/x/vm.json"), false, None, Lifetime::Own).unwrap();
        let end = p.wait(Duration::from_secs(10)).await.unwrap();
        assert_eq!(end.exit, VmmExit::Error);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(p.console.lock().unwrap().contains("console /x/vm.json"));
        assert!(p.stderr.lock().unwrap().contains("vmm says no"));
    }

    #[tokio::test]
    async fn terminate_escalates_to_sigkill() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("stubborn-vmm");
        std::fs::write(
            &script,
            "#!/bin/sh\ntrap '' TERM\nwhile :; do sleep 1; done\n",
        )
        .unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let p = spawn(&script, Path::new("/x"), false, None, Lifetime::Own).unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let end = p.terminate(Duration::from_millis(300)).await.unwrap();
        assert_eq!(end.exit, VmmExit::Signal(9));
    }
}

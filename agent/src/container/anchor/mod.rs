//! Pod namespace anchors: `husk-agent` re-executed with [`ANCHOR_ARG`] in new namespaces, where
//! it forks once; the child holds the namespaces (PID 1 of the new PID namespace, if there is
//! one) and only waits and reaps, the parent reports the child's pid and exits. Containers then
//! join `/proc/<anchor>/ns/*`. Two kinds:
//!
//! - **A pod without a sandbox container** (containerd 2.x's sandbox API, where the VM is the
//!   sandbox): every container of the pod names the sandbox's IPC and UTS namespaces (and PID,
//!   with `shareProcessNamespace`) in its spec; the first makes a bare anchor in new IPC, UTS
//!   and PID namespaces, which lives as long as the VM.
//! - **A pod's sandbox (pause) container** ([`crate::container::pause`]): the anchor *is* the
//!   container's init. It gets the spec (`--spec <config.json>`), applies its settings to
//!   itself ([`setup`]) before it reports ready, and ends on SIGTERM or SIGINT as pause does.
//!
//! What the two processes print is in [`report`].

pub mod report;
pub mod setup;

use std::io::{BufRead, BufReader, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sched::CloneFlags;
use nix::sys::signal::{SigSet, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{fork, ForkResult, Pid};
use oci_spec::runtime::Spec;

use crate::error::{AgentError, Result};
use report::{Outcome, Report, MAX_REPORT};

/// The internal subcommand that makes `husk-agent` a pod anchor.
pub const ANCHOR_ARG: &str = "__husk-pod-anchor";
/// Its option naming the sandbox container's prepared spec.
const SPEC_ARG: &str = "--spec";
/// Its option for a guest whose root cannot be pivoted away from (see `init.rs`).
const NO_PIVOT_ARG: &str = "--no-pivot";

/// What an anchor is for.
#[derive(Debug, Clone, Copy)]
pub enum Role<'a> {
    /// A pod without a sandbox container: namespaces only.
    Bare,
    /// A pod's sandbox container: its prepared spec, applied by the anchor.
    Sandbox {
        /// The spec (config.json).
        spec: &'a Path,
        /// Enter its root with MS_MOVE and chroot instead of pivot_root.
        no_pivot: bool,
    },
}

/// How long an anchor may take to report (nested test hosts run at emulation speed).
pub const REPORT_TIMEOUT: Duration = Duration::from_secs(60);

/// Starts an anchor from `exe` in new `namespaces`, for `role` (a sandbox container's anchor
/// applies its spec first). Returns its pid once it is ready. Blocking: call it from
/// `spawn_blocking`.
pub fn spawn(exe: &Path, namespaces: CloneFlags, role: Role<'_>) -> Result<i32> {
    let mut cmd = Command::new(exe);
    cmd.arg(ANCHOR_ARG)
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    match role {
        Role::Bare => {
            cmd.stderr(Stdio::inherit());
        }
        Role::Sandbox { spec, no_pivot } => {
            cmd.stderr(Stdio::null()).arg(SPEC_ARG).arg(spec);
            if no_pivot {
                cmd.arg(NO_PIVOT_ARG);
            }
        }
    }
    // SAFETY: runs in the forked child before exec; unshare(2) is async-signal-safe and touches
    // no memory of the parent.
    unsafe {
        cmd.pre_exec(move || nix::sched::unshare(namespaces).map_err(std::io::Error::from));
    }
    let mut child = cmd.spawn().map_err(AgentError::io(format!(
        "starting the pod anchor {}",
        exe.display()
    )))?;
    let stdout = child.stdout.take();
    // The agent's reaper collects the parent (and, much later, the anchor).
    drop(child);
    let stdout = stdout.ok_or_else(|| AgentError::Runner("the pod anchor has no stdout".into()))?;
    let report = read_report(OwnedFd::from(stdout), REPORT_TIMEOUT);
    let (pid, failure) = match report {
        Ok(Report {
            pid: Some(pid),
            outcome: Some(Outcome::Ready),
        }) => return Ok(pid),
        Ok(Report {
            pid,
            outcome: Some(Outcome::Invalid(why)),
        }) => (pid, AgentError::InvalidArgument(why)),
        Ok(Report {
            pid,
            outcome: Some(Outcome::Failed(why)),
        }) => (pid, AgentError::Runner(format!("the pod anchor: {why}"))),
        Ok(r) => (
            r.pid,
            AgentError::Runner(format!(
                "the pod anchor ended its report early ({r:?}; see the agent log)"
            )),
        ),
        Err((r, why)) => (
            r.pid,
            AgentError::Runner(format!("the pod anchor's report: {why}")),
        ),
    };
    if let Some(pid) = pid {
        let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
    Err(failure)
}

/// Reads report lines until they are complete, at EOF or after `timeout`.
fn read_report(fd: OwnedFd, timeout: Duration) -> std::result::Result<Report, (Report, String)> {
    let deadline = Instant::now() + timeout;
    let mut report = Report::default();
    let mut reader = BufReader::new(std::fs::File::from(fd).take(MAX_REPORT));
    let mut line = String::new();
    while !report.complete() {
        if !reader.buffer().contains(&b'\n') {
            match readable(reader.get_ref().get_ref(), deadline) {
                Ok(true) => {}
                Ok(false) => return Err((report, format!("nothing complete within {timeout:?}"))),
                Err(e) => return Err((report, format!("poll: {e}"))),
            }
        }
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) => return Ok(report),
            Ok(_) => {
                if let Err(why) = report.line(&line) {
                    return Err((report, why));
                }
            }
            Err(e) => return Err((report, e.to_string())),
        }
    }
    Ok(report)
}

/// Whether `f` has something to read (or EOF) before `deadline`; a signal (the agent's reaper
/// takes SIGCHLD) only restarts the wait.
fn readable(f: &std::fs::File, deadline: Instant) -> nix::Result<bool> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let ms = i32::try_from(left.as_millis()).unwrap_or(i32::MAX);
        let timeout = PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX);
        let mut fds = [PollFd::new(f.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, timeout) {
            Ok(n) => return Ok(n > 0),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// `husk-agent __husk-pod-anchor [--spec <config.json> [--no-pivot]]`: already in the new
/// namespaces (its children are in the new PID namespace). Never returns in the anchor itself.
pub fn main() -> i32 {
    let (spec_path, no_pivot): (Option<PathBuf>, bool) = {
        let args: Vec<String> = std::env::args().skip(2).collect();
        match args.as_slice() {
            [] => (None, false),
            [flag, path] if flag == SPEC_ARG => (Some(path.into()), false),
            [flag, path, np] if flag == SPEC_ARG && np == NO_PIVOT_ARG => (Some(path.into()), true),
            _ => {
                report_line(&Outcome::Failed(format!("bad arguments {args:?}")));
                return 2;
            }
        }
    };
    let spec = match spec_path.as_deref().map(Spec::load).transpose() {
        Ok(s) => s,
        Err(e) => {
            report_line(&Outcome::Failed(format!("reading the spec: {e}")));
            return 1;
        }
    };
    // A sandbox container ends on SIGTERM and SIGINT as pause does; a bare anchor lives as
    // long as the VM. Blocked before the fork so that nothing arrives between two waits
    // unseen: sigwait takes them.
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGCHLD);
    if spec.is_some() {
        signals.add(Signal::SIGTERM);
        signals.add(Signal::SIGINT);
    }
    if let Err(e) = signals.thread_block() {
        report_line(&Outcome::Failed(format!("blocking signals: {e}")));
        return 1;
    }
    // SAFETY: this process has one thread (it was just exec'd and started none), so the child
    // may run any code after the fork.
    match unsafe { fork() } {
        Ok(ForkResult::Parent { child }) => {
            send(std::io::stdout().as_fd(), &report::pid_line(child.as_raw()));
            0
        }
        Ok(ForkResult::Child) => anchor(spec.as_ref(), no_pivot, &signals),
        Err(e) => {
            report_line(&Outcome::Failed(format!("fork: {e}")));
            1
        }
    }
}

/// The anchor: sets itself up, reports, lets go of the report pipe, then waits.
fn anchor(spec: Option<&Spec>, no_pivot: bool, signals: &SigSet) -> i32 {
    // The report goes out on a copy of stdout; stdout itself becomes /dev/null before the
    // setup (whose seccomp filter could forbid a later dup2), so the anchor never holds the
    // agent's pipe past its report.
    // SAFETY: dup(2) of this process's own stdout, whose result is owned by nobody else.
    let report = unsafe { libc::dup(1) };
    if report < 0 {
        report_line(&Outcome::Failed("dup(stdout) failed".into()));
        return 1;
    }
    // SAFETY: `report` is a fresh fd that nothing else owns.
    let report = unsafe { OwnedFd::from_raw_fd(report) };
    if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
        let _ = nix::unistd::dup2(null.as_raw_fd(), 1);
    }
    let outcome = match spec.map(|s| setup::apply(s, no_pivot)).transpose() {
        Ok(_) => Outcome::Ready,
        Err(AgentError::InvalidArgument(why)) => Outcome::Invalid(why),
        Err(e) => Outcome::Failed(e.to_string()),
    };
    let failed = outcome != Outcome::Ready;
    send(report.as_fd(), &outcome.line());
    drop(report);
    if failed {
        return 1;
    }
    reap_forever(signals)
}

/// A report line on stdout (from the parent, before or instead of the fork).
fn report_line(outcome: &Outcome) {
    send(std::io::stdout().as_fd(), &outcome.line());
}

/// Writes `line` in one write(2): the two processes share the pipe, and a pipe keeps a write of
/// at most PIPE_BUF bytes whole.
fn send(fd: BorrowedFd<'_>, line: &str) {
    loop {
        match nix::unistd::write(fd, line.as_bytes()) {
            Err(nix::errno::Errno::EINTR) => continue,
            _ => return,
        }
    }
}

/// Collects the orphans reparented to the anchor; a sandbox container's anchor exits 0 on
/// SIGTERM or SIGINT.
fn reap_forever(signals: &SigSet) -> ! {
    loop {
        while let Ok(status) = waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            if status == WaitStatus::StillAlive {
                break;
            }
        }
        if let Ok(Signal::SIGTERM | Signal::SIGINT) = signals.wait() {
            std::process::exit(0)
        }
    }
}

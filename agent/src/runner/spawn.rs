//! The agent's side: start a runner, hand it a request and fds, read its reply. Blocking: call
//! it from `spawn_blocking`.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use super::{wire, FailureKind, Reply, Request, RUNNER_ARG};
use crate::error::{AgentError, Result};
use crate::reaper::Reaper;

/// How long a runner may take (nested test hosts run at emulation speed).
const RUNNER_TIMEOUT: Duration = Duration::from_secs(120);

/// The result of a runner call: the new pid and, in terminal mode, the pty master.
#[derive(Debug)]
pub struct Outcome {
    /// The created process (0 for Start).
    pub pid: i32,
    /// The pty master, when a console socket was used.
    pub master: Option<OwnedFd>,
}

/// A runner started and waiting for its one request.
#[derive(Debug)]
pub struct Started {
    pid: i32,
    sock: OwnedFd,
}

impl Started {
    /// The runner's pid.
    pub fn pid(&self) -> i32 {
        self.pid
    }
}

/// Starts a runner (`exe __husk-runner`): it waits for a request on its socket. The reaper
/// collects it; its exit status only matters for the log. A runner whose socket is dropped
/// unused exits at once, quietly.
pub fn start(exe: &Path, reaper: &Reaper) -> Result<Started> {
    let (ours, theirs) = wire::pair().map_err(AgentError::io("runner socketpair"))?;
    let since = reaper.epoch();
    let child = Command::new(exe)
        .arg(RUNNER_ARG)
        .stdin(Stdio::from(theirs))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(AgentError::io(format!(
            "starting the runner {}",
            exe.display()
        )))?;
    let pid = child.id() as i32;
    let exit = reaper.watch(pid, since);
    drop(child);
    tokio::spawn(async move {
        if let Ok(e) = exit.await {
            if e.status != 0 {
                tracing::warn!(pid, status = e.status, "runner exited with an error");
            }
        }
    });
    Ok(Started { pid, sock: ours })
}

/// Hands `request` and `fds` to the started runner `runner` and reads its reply.
pub fn call(runner: Started, request: &Request, fds: &[BorrowedFd<'_>]) -> Result<Outcome> {
    send(runner, request, fds)
        .map_err(|(_, e)| AgentError::io("sending the runner request")(e))?
        .reply()
}

/// A runner that has its request.
#[derive(Debug)]
pub struct Sent(Started);

/// Hands `request` and `fds` to `runner`. On failure the request was not delivered (a runner
/// that died waiting, say), and the runner comes back with the error.
pub fn send(
    runner: Started,
    request: &Request,
    fds: &[BorrowedFd<'_>],
) -> std::result::Result<Sent, (Started, std::io::Error)> {
    let body = match serde_json::to_vec(request) {
        Ok(b) => b,
        Err(e) => return Err((runner, std::io::Error::other(e))),
    };
    match wire::send(runner.sock.as_fd(), &body, fds) {
        Ok(()) => Ok(Sent(runner)),
        Err(e) => Err((runner, e)),
    }
}

impl Sent {
    /// Reads the runner's reply.
    pub fn reply(self) -> Result<Outcome> {
        let Started { pid, sock: ours } = self.0;
        reply(pid, ours)
    }
}

/// Whether a failed reply means the runner never read its request: it died with the request
/// still queued on its socket. The kernel then resets the connection (a runner that read the
/// request and died gives EOF instead), so the request may go to another runner.
pub fn never_read(e: &AgentError) -> bool {
    let reset = std::io::ErrorKind::ConnectionReset;
    matches!(e, AgentError::Io { source, .. } if source.kind() == reset)
}

fn reply(pid: i32, ours: OwnedFd) -> Result<Outcome> {
    set_timeout(&ours, RUNNER_TIMEOUT)?;
    let (data, mut attached) = wire::recv(ours.as_fd()).map_err(|e| {
        // SAFETY: kill(2) on the runner we spawned; at worst it already exited and the reaper
        // has not collected it yet (a zombie), which ignores the signal.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        AgentError::io("reading the runner reply")(e)
    })?;
    if data.is_empty() {
        return Err(AgentError::Runner(
            "the runner exited without answering (see the agent log)".into(),
        ));
    }
    let reply: Reply =
        serde_json::from_slice(&data).map_err(AgentError::json("bad runner reply"))?;
    match reply {
        Reply::Ok { pid } => Ok(Outcome {
            pid,
            master: if attached.is_empty() {
                None
            } else {
                Some(attached.swap_remove(0))
            },
        }),
        Reply::Failed {
            kind: FailureKind::Invalid,
            message,
        } => Err(AgentError::InvalidArgument(message)),
        Reply::Failed { message, .. } => Err(AgentError::Runner(message)),
    }
}

fn set_timeout(fd: &OwnedFd, timeout: Duration) -> Result<()> {
    let tv = nix::sys::time::TimeVal::new(timeout.as_secs() as _, 0);
    nix::sys::socket::setsockopt(fd, nix::sys::socket::sockopt::ReceiveTimeout, &tv)
        .map_err(|e| AgentError::io("SO_RCVTIMEO on the runner socket")(e.into()))
}

//! The pod's namespace anchor, for pods without a sandbox container.
//!
//! With containerd 2.x's sandbox API the pod sandbox is the VM itself: no pause container is
//! created, yet every container of the pod names the sandbox's IPC and UTS namespaces (and PID,
//! with `shareProcessNamespace`) in its spec. The first such container makes the anchor: this
//! binary re-executed with [`ANCHOR_ARG`] in new IPC, UTS and PID namespaces, which forks once;
//! the child is PID 1 of the pod's PID namespace and only reaps, the parent prints the child's
//! pid and exits. Containers then join `/proc/<anchor>/ns/*`. The anchor lives as long as the
//! VM (the VM is the pod).

use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use nix::sched::CloneFlags;
use nix::sys::signal::{SigSet, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag};
use nix::unistd::{fork, ForkResult, Pid};

use crate::error::{AgentError, Result};

/// The internal subcommand that makes `husk-agent` a pod anchor.
pub const ANCHOR_ARG: &str = "__husk-pod-anchor";

/// Starts an anchor from `exe`; returns its pid (PID 1 of the pod's PID namespace). Blocking:
/// call it from `spawn_blocking`.
pub fn spawn(exe: &Path) -> Result<i32> {
    let mut cmd = Command::new(exe);
    cmd.arg(ANCHOR_ARG)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    // SAFETY: runs in the forked child before exec; unshare(2) is async-signal-safe and touches
    // no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            nix::sched::unshare(
                CloneFlags::CLONE_NEWIPC | CloneFlags::CLONE_NEWUTS | CloneFlags::CLONE_NEWPID,
            )
            .map_err(std::io::Error::from)
        });
    }
    let mut child = cmd.spawn().map_err(AgentError::io(format!(
        "starting the pod anchor {}",
        exe.display()
    )))?;
    let mut out = String::new();
    if let Some(stdout) = child.stdout.take() {
        // One line from the parent (the anchor itself lets go of the pipe, but a line is all
        // there is to read).
        let _ = BufReader::new(stdout.take(32)).read_line(&mut out);
    }
    // The agent's reaper collects the parent (and, much later, the anchor).
    drop(child);
    out.trim()
        .parse::<i32>()
        .ok()
        .filter(|pid| *pid > 1)
        .ok_or_else(|| {
            AgentError::Runner(format!("the pod anchor did not report its pid ({out:?})"))
        })
}

/// `husk-agent __husk-pod-anchor`: already in the new namespaces (its children are in the new
/// PID namespace). Never returns in the anchor itself.
pub fn main() -> i32 {
    let mut sigchld = SigSet::empty();
    sigchld.add(Signal::SIGCHLD);
    // Blocked before the fork so that no exit between two waits is lost: sigwait takes it.
    if let Err(e) = sigchld.thread_block() {
        eprintln!("husk-agent: pod anchor: blocking SIGCHLD: {e}");
        return 1;
    }
    // SAFETY: this process has one thread (it was just exec'd and started none), so the child
    // may run any code after the fork.
    match unsafe { fork() } {
        Ok(ForkResult::Parent { child }) => {
            println!("{child}");
            0
        }
        Ok(ForkResult::Child) => {
            // The pipe to the agent is the parent's to answer on; the anchor holds no end of it.
            if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
                let _ = nix::unistd::dup2(std::os::fd::AsRawFd::as_raw_fd(&null), 1);
            }
            reap_forever(&sigchld)
        }
        Err(e) => {
            eprintln!("husk-agent: pod anchor: fork: {e}");
            1
        }
    }
}

/// PID 1 of the pod's PID namespace: collects the orphans reparented to it.
fn reap_forever(sigchld: &SigSet) -> ! {
    loop {
        while let Ok(status) = waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            if status == nix::sys::wait::WaitStatus::StillAlive {
                break;
            }
        }
        let _ = sigchld.wait();
    }
}

//! Child-process helpers shared by the harness: die with the parent, wait with a deadline,
//! report exit codes the way a shell does.

use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

/// Makes the child receive SIGKILL when the harness dies, so no QEMU outlives it.
pub fn kill_with_parent(cmd: &mut Command) {
    let hook = || {
        // SAFETY: prctl(2) with PR_SET_PDEATHSIG takes a signal number and touches no memory.
        if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    };
    // SAFETY: the hook runs between fork and exec and calls only prctl(2), which is
    // async-signal-safe; it allocates nothing and touches no memory shared with the parent.
    unsafe { cmd.pre_exec(hook) };
}

/// Puts the child in a process group of its own, so a timeout can kill everything it started.
pub fn own_process_group(cmd: &mut Command) {
    cmd.process_group(0);
}

/// Waits for `child` until `deadline`; `None` means it is still running.
pub fn wait_until(child: &mut Child, deadline: Instant) -> std::io::Result<Option<ExitStatus>> {
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// How long a SIGKILLed child may take to be reaped before the harness gives up on it. A process
/// stuck in an uninterruptible KVM call (seen with nested KVM under TCG) never finishes exiting;
/// the harness must report that instead of hanging.
pub const REAP_GRACE: Duration = Duration::from_secs(10);

/// Kills the child's process group (or the child alone) with SIGKILL and reaps it within
/// [`REAP_GRACE`]; returns false when the child would not die.
pub fn kill_and_reap(child: &mut Child, group: bool) -> bool {
    let pid = child.id() as libc::pid_t;
    // SAFETY: kill(2) with a pid we spawned and have not reaped yet (so it cannot have been
    // reused); a negative pid addresses its process group.
    unsafe { libc::kill(if group { -pid } else { pid }, libc::SIGKILL) };
    let reaped = matches!(wait_until(child, Instant::now() + REAP_GRACE), Ok(Some(_)));
    if !reaped {
        eprintln!("husk-tests: pid {pid} did not exit within {REAP_GRACE:?} of SIGKILL (stuck in the kernel?)");
    }
    reaped
}

/// The exit code a shell would report: the code, or 128 + signal number.
pub fn shell_code(status: ExitStatus) -> i32 {
    status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_codes_match_sh() {
        let exit3 = Command::new("sh").args(["-c", "exit 3"]).status().unwrap();
        assert_eq!(shell_code(exit3), 3);
        let killed = Command::new("sh")
            .args(["-c", "kill -9 $$"])
            .status()
            .unwrap();
        assert_eq!(shell_code(killed), 137);
    }

    #[test]
    fn deadline_and_kill() {
        let mut cmd = Command::new("sleep");
        cmd.arg("30");
        own_process_group(&mut cmd);
        let mut child = cmd.spawn().unwrap();
        let got = wait_until(&mut child, Instant::now() + Duration::from_millis(100)).unwrap();
        assert!(got.is_none());
        kill_and_reap(&mut child, true);
        assert!(child.try_wait().unwrap().is_some());
    }
}

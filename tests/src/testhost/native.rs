//! Native mode: the host has hardware KVM, so the command simply runs here, bounded in time.

use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::{io_err, Mode, Outcome, RunSpec, TestHostError, INTERRUPTED};
use crate::process::{kill_and_reap, kill_with_parent, own_process_group, shell_code, wait_until};

pub(super) fn run(spec: &RunSpec) -> Result<Outcome, TestHostError> {
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(&spec.command)
        .current_dir(&spec.cwd)
        .envs(spec.env.iter().cloned());
    own_process_group(&mut cmd);
    kill_with_parent(&mut cmd);
    let mut child = cmd.spawn().map_err(io_err("starting /bin/sh"))?;
    let deadline = Instant::now() + spec.timeout;
    loop {
        let step = (Instant::now() + Duration::from_millis(200)).min(deadline);
        if let Some(status) = wait_until(&mut child, step).map_err(io_err("waiting"))? {
            return Ok(Outcome {
                code: shell_code(status),
                mode: Mode::Native,
                ready_secs: None,
            });
        }
        if INTERRUPTED.load(Ordering::SeqCst) {
            let _ = kill_and_reap(&mut child, true);
            return Err(TestHostError::Interrupted(String::new()));
        }
        if Instant::now() >= deadline {
            let _ = kill_and_reap(&mut child, true);
            return Err(TestHostError::Timeout(spec.timeout, String::new()));
        }
    }
}

//! Running a command bounded in time: [`run_bounded`] feeds it stdin, collects stdout and
//! stderr, kills its process group at the deadline, and returns a [`CtrOutput`].

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::process::{kill_and_reap, kill_with_parent, own_process_group, shell_code, wait_until};

/// The result of one ctr command.
#[derive(Debug, Clone)]
pub struct CtrOutput {
    /// Exit code (128 + N for signal N; 124 on timeout).
    pub code: i32,
    /// Its stdout.
    pub stdout: String,
    /// Its stderr.
    pub stderr: String,
}

impl std::fmt::Display for CtrOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}; stdout {:?}; stderr {:?}",
            self.code, self.stdout, self.stderr
        )
    }
}
/// Runs `cmd` with `stdin`, bounded by `timeout` (its process group is killed then).
pub fn run_bounded(mut cmd: Command, stdin: Option<&[u8]>, timeout: Duration) -> CtrOutput {
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    own_process_group(&mut cmd);
    kill_with_parent(&mut cmd);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            return CtrOutput {
                code: 127,
                stdout: String::new(),
                stderr: format!("spawning {cmd:?}: {e}"),
            }
        }
    };
    let input = stdin.map(<[u8]>::to_vec);
    let mut pipe_in = child.stdin.take();
    let writer = std::thread::spawn(move || {
        if let (Some(p), Some(data)) = (pipe_in.as_mut(), input) {
            let _ = p.write_all(&data);
        }
        drop(pipe_in);
    });
    let read = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut s = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut s);
            }
            String::from_utf8_lossy(&s).into_owned()
        })
    };
    let out = read(
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    );
    let err = read(
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    );
    let status = wait_until(&mut child, Instant::now() + timeout)
        .ok()
        .flatten();
    let code = match status {
        Some(s) => shell_code(s),
        None => {
            kill_and_reap(&mut child, true);
            124
        }
    };
    let _ = writer.join();
    let stdout = out.join().unwrap_or_default();
    let mut stderr = err.join().unwrap_or_default();
    if code == 124 && status.is_none() {
        stderr.push_str(&format!("\n[husk-tests: killed after {timeout:?}]"));
    }
    CtrOutput {
        code,
        stdout,
        stderr,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_runs_report_codes_output_and_timeouts() {
        let mut c = Command::new("sh");
        c.args(["-c", "cat; echo err >&2; exit 3"]);
        let out = run_bounded(c, Some(b"in\n"), Duration::from_secs(10));
        assert_eq!(
            (out.code, out.stdout.as_str(), out.stderr.as_str()),
            (3, "in\n", "err\n")
        );
        let mut c = Command::new("sleep");
        c.arg("30");
        let out = run_bounded(c, None, Duration::from_millis(200));
        assert_eq!(out.code, 124);
    }
}

//! `binary:///path?k=v` log URIs (containerd's `NewBinaryIO`): the shim runs the logging
//! binary with the query pairs as arguments and only `CONTAINER_ID` / `CONTAINER_NAMESPACE` in
//! its environment; fd 3 is the read end of stdout, fd 4 of stderr, and fd 5 a "ready" pipe
//! the logger closes (or writes to) once it is ready. The process is not started before that.
//! When the output ends the shim closes the pipes and gives the logger a grace period to exit
//! before killing it.

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use nix::fcntl::OFlag;
use tokio::process::{Child, Command};

use super::IoError;

/// How long a logger may take to say it is ready.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a logger may take to exit once its input closed (containerd uses 12 s).
const EXIT_GRACE: Duration = Duration::from_secs(12);

/// A running logging binary and the write ends of its stdout and stderr pipes.
#[derive(Debug)]
pub struct Logger {
    child: Child,
    path: PathBuf,
}

/// The write ends handed to the output copiers.
#[derive(Debug)]
pub struct LoggerPipes {
    /// Write end of the logger's fd 3.
    pub stdout: OwnedFd,
    /// Write end of the logger's fd 4.
    pub stderr: OwnedFd,
}

fn err(path: &std::path::Path, message: impl Into<String>) -> IoError {
    IoError::Logger {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// Starts the logger and waits until it is ready.
pub async fn start(
    path: PathBuf,
    args: &[String],
    container_id: &str,
    namespace: &str,
) -> Result<(Logger, LoggerPipes), IoError> {
    let pipe =
        || nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| err(&path, format!("pipe: {e}")));
    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    let (ready_r, ready_w) = pipe()?;
    let fds = [out_r.as_raw_fd(), err_r.as_raw_fd(), ready_w.as_raw_fd()];
    let mut cmd = Command::new(&path);
    cmd.args(args)
        .env_clear()
        .env("CONTAINER_ID", container_id)
        .env("CONTAINER_NAMESPACE", namespace)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let place_fds = move || -> std::io::Result<()> {
        // Copy each to a free number >= 10 first so that placing one cannot overwrite another.
        let mut high = [0; 3];
        for (i, fd) in fds.iter().enumerate() {
            // SAFETY: fcntl(F_DUPFD_CLOEXEC) duplicates an open descriptor we own; no memory is touched.
            high[i] = unsafe { libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, 10) };
            if high[i] < 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        for (i, fd) in high.iter().enumerate() {
            // SAFETY: dup2 onto 3, 4, 5 in the child between fork and exec; the result is not
            // close-on-exec, which is the point.
            if unsafe { libc::dup2(*fd, 3 + i as libc::c_int) } < 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(())
    };
    // SAFETY: the hook only calls fcntl(2) and dup2(2), both async-signal-safe, and allocates
    // nothing.
    unsafe { cmd.as_std_mut().pre_exec(place_fds) };
    let child = cmd
        .spawn()
        .map_err(|e| err(&path, format!("starting it: {e}")))?;
    drop((out_r, err_r, ready_w));
    let ready = tokio::task::spawn_blocking(move || {
        let mut byte = [0u8; 1];
        let _ = nix::unistd::read(ready_r.as_raw_fd(), &mut byte);
    });
    let mut logger = Logger { child, path };
    if tokio::time::timeout(READY_TIMEOUT, ready).await.is_err() {
        let _ = logger.child.start_kill();
        return Err(err(
            &logger.path,
            format!("it did not signal ready on fd 5 within {READY_TIMEOUT:?}"),
        ));
    }
    if let Ok(Some(status)) = logger.child.try_wait() {
        return Err(err(&logger.path, format!("it exited at once ({status})")));
    }
    Ok((
        logger,
        LoggerPipes {
            stdout: out_w,
            stderr: err_w,
        },
    ))
}

impl Logger {
    /// Waits for the logger to exit after its input closed; kills it after the grace period.
    pub async fn finish(mut self) {
        if tokio::time::timeout(EXIT_GRACE, self.child.wait())
            .await
            .is_err()
        {
            tracing::warn!(path = %self.path.display(), "logging binary did not exit; killing it");
            let _ = self.child.kill().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;

    use super::*;

    #[tokio::test]
    async fn the_logger_gets_fds_args_and_env() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let script = dir.path().join("logger");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\nexec 5>&-\n{{ echo \"$1=$2 $CONTAINER_ID/$CONTAINER_NAMESPACE\"; cat <&3; cat <&4; }} > {}\n",
                out.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let (logger, pipes) = start(script, &["k".into(), "v".into()], "c1", "ns")
            .await
            .unwrap();
        let mut so = tokio::net::unix::pipe::Sender::from_owned_fd(pipes.stdout).unwrap();
        so.write_all(b"to stdout\n").await.unwrap();
        drop(so);
        let mut se = tokio::net::unix::pipe::Sender::from_owned_fd(pipes.stderr).unwrap();
        se.write_all(b"to stderr\n").await.unwrap();
        drop(se);
        logger.finish().await;
        assert_eq!(
            std::fs::read_to_string(&out).unwrap(),
            "k=v c1/ns\nto stdout\nto stderr\n"
        );
    }
}

//! Opening the client's FIFOs without blocking the shim.
//!
//! containerd's clients create the FIFOs and open their ends around Create; which side opens
//! first is not fixed. An output FIFO is opened non-blocking (works when the reader is there,
//! as ctr and CRI arrange); otherwise the blocking `open(2)` runs on a blocking thread and
//! completes when the reader appears, and [`unblock`] ends such a pending open (by briefly
//! opening the other end) when the process goes away first.
//!
//! stdin is opened read-write, which never blocks and never reads end-of-file: the process's
//! stdin ends with CloseIO, as with runc, not when a client closes (or never opens) its end.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use tokio::net::unix::pipe;

/// Which end the shim opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The shim reads (stdin).
    Read,
    /// The shim writes (stdout, stderr).
    Write,
}

fn blocking_open(path: &Path, end: End) -> std::io::Result<File> {
    match end {
        End::Read => OpenOptions::new().read(true).open(path),
        End::Write => OpenOptions::new().write(true).open(path),
    }
}

/// Opens `path` for writing; waits (off the runtime) for a reader if there is none yet.
pub async fn open_writer(path: PathBuf) -> std::io::Result<pipe::Sender> {
    match OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&path)
    {
        Ok(f) => return pipe::Sender::from_file(f),
        Err(e) if e.raw_os_error() == Some(libc::ENXIO) => {}
        Err(e) => return Err(e),
    }
    let f = tokio::task::spawn_blocking(move || blocking_open(&path, End::Write))
        .await
        .map_err(std::io::Error::other)??;
    pipe::Sender::from_file(f)
}

/// Opens stdin's FIFO for reading, at once (read-write: no end-of-file when writers come and
/// go; CloseIO ends the process's stdin).
pub async fn open_reader(path: PathBuf) -> std::io::Result<pipe::Receiver> {
    pipe::OpenOptions::new()
        .read_write(true)
        .open_receiver(path)
}

/// Completes a pending blocking open of `end` on `path` by opening (and closing) the other end
/// without blocking. Harmless when nothing is pending.
pub fn unblock(path: &Path, end: End) {
    let other = match end {
        End::Read => OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path),
        End::Write => OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path),
    };
    drop(other);
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    fn mkfifo(path: &Path) {
        nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    }

    #[tokio::test]
    async fn stdin_opens_at_once_and_outlives_its_writers() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("in");
        mkfifo(&p);
        let mut r = tokio::time::timeout(Duration::from_secs(5), open_reader(p.clone()))
            .await
            .expect("opening stdin must not wait for a writer")
            .unwrap();
        for word in [&b"one"[..], b"two"] {
            let mut w = open_writer(p.clone()).await.unwrap();
            w.write_all(word).await.unwrap();
            drop(w);
            let mut got = [0u8; 3];
            r.read_exact(&mut got).await.unwrap();
            assert_eq!(&got, word);
        }
        let eof = tokio::time::timeout(Duration::from_millis(200), r.read(&mut [0u8; 1])).await;
        assert!(
            eof.is_err(),
            "a writer closing is not the process's end of input"
        );
    }

    #[tokio::test]
    async fn a_pending_open_can_be_cancelled() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("out");
        mkfifo(&p);
        let writer = tokio::spawn(open_writer(p.clone()));
        tokio::time::sleep(Duration::from_millis(50)).await;
        unblock(&p, End::Write);
        let done = tokio::time::timeout(Duration::from_secs(5), writer).await;
        assert!(done.is_ok(), "the pending open did not end");
    }
}

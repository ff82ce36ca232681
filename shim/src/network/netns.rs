//! Running netlink work inside the pod's network namespace: on a dedicated OS thread that
//! `setns`es and then ends, never on a tokio worker (a worker moved into another namespace
//! would carry it into every task it runs later).

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use super::NetError;

/// Opens `netns` (a bind-mounted `/proc/<pid>/ns/net`, e.g. `/var/run/netns/cni-...`).
fn open(netns: &Path) -> Result<std::fs::File, NetError> {
    std::fs::File::open(netns).map_err(|source| NetError::Netns {
        path: netns.to_path_buf(),
        source,
    })
}

/// Runs `f` on a new thread inside `netns` and waits for it (blocking).
pub fn run_in<T: Send + 'static>(
    netns: &Path,
    f: impl FnOnce() -> Result<T, NetError> + Send + 'static,
) -> Result<T, NetError> {
    let ns = open(netns)?;
    let path = netns.to_path_buf();
    std::thread::Builder::new()
        .name("husk-netns".into())
        .spawn(move || enter_and_run(ns, path, f))
        .map_err(|source| NetError::Netns {
            path: netns.to_path_buf(),
            source,
        })?
        .join()
        .map_err(|_| NetError::Panicked)?
}

/// [`run_in`] for async callers: the thread reports through a channel, so no tokio worker
/// blocks on the join.
pub async fn run_in_async<T: Send + 'static>(
    netns: &Path,
    f: impl FnOnce() -> Result<T, NetError> + Send + 'static,
) -> Result<T, NetError> {
    let ns = open(netns)?;
    let path = netns.to_path_buf();
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("husk-netns".into())
        .spawn(move || {
            let _ = tx.send(enter_and_run(ns, path, f));
        })
        .map_err(|source| NetError::Netns {
            path: netns.to_path_buf(),
            source,
        })?;
    rx.await.map_err(|_| NetError::Panicked)?
}

fn enter_and_run<T>(
    ns: std::fs::File,
    path: PathBuf,
    f: impl FnOnce() -> Result<T, NetError>,
) -> Result<T, NetError> {
    // SAFETY: setns(2) on a descriptor this thread owns; it changes only the calling thread's
    // network namespace, and this thread ends after `f`.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(NetError::Netns {
            path,
            source: std::io::Error::last_os_error(),
        });
    }
    f()
}

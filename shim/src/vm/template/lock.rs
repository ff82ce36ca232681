//! One builder per template key on a node: `<template_dir>/.lock-<key>` holds the builder's
//! pid, created with `O_EXCL`. A lock whose pid no longer runs (a shim killed mid-build) is
//! taken over.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// A held build lock; released (its file removed) on drop.
#[derive(Debug)]
pub struct BuildLock {
    path: PathBuf,
}

/// Whether `pid` runs.
fn alive(pid: i32) -> bool {
    // SAFETY: kill with signal 0 only checks that the process exists.
    pid > 0
        && (unsafe { libc::kill(pid, 0) } == 0
            || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM))
}

impl BuildLock {
    /// Takes the lock for `key` under `root`; `Ok(None)` when a live builder holds it.
    pub fn take(root: &Path, key: &str) -> io::Result<Option<BuildLock>> {
        let path = root.join(format!(".lock-{key}"));
        for _ in 0..2 {
            match std::fs::File::options()
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(mut f) => {
                    write!(f, "{}", std::process::id())?;
                    return Ok(Some(BuildLock { path }));
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    let holder = std::fs::read_to_string(&path)
                        .ok()
                        .and_then(|s| s.trim().parse::<i32>().ok());
                    if holder.is_some_and(alive) {
                        return Ok(None);
                    }
                    // A builder that died (or a lock never written): take it over.
                    std::fs::remove_file(&path)?;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(None)
    }
}

impl Drop for BuildLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_holder_at_a_time_and_a_dead_holders_lock_is_taken_over() {
        let t = tempfile::tempdir().unwrap();
        let held = BuildLock::take(t.path(), "k").unwrap().expect("free");
        assert!(
            BuildLock::take(t.path(), "k").unwrap().is_none(),
            "held by us"
        );
        drop(held);
        assert!(!t.path().join(".lock-k").exists());
        // A pid that cannot run: past pid_max.
        std::fs::write(t.path().join(".lock-k"), "2147483647").unwrap();
        let taken = BuildLock::take(t.path(), "k").unwrap();
        assert!(taken.is_some(), "a dead builder's lock is taken over");
    }
}

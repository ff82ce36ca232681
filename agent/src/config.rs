//! Where the agent keeps its files and how it runs containers.

use std::path::PathBuf;

/// Where the agent keeps its files and how it runs containers.
#[derive(Debug, Clone)]
pub struct Config {
    /// State directory (libcontainer state, bundles, console sockets). Keep it short: console
    /// socket paths live below it.
    pub state_dir: PathBuf,
    /// The agent's own binary, re-executed as the runner.
    pub exe: PathBuf,
    /// MS_MOVE + chroot instead of pivot_root (the root is an initramfs that cannot pivot).
    pub no_pivot: bool,
    /// PID 1 in a guest (Shutdown reboots) rather than host mode (Shutdown exits).
    pub guest: bool,
}

impl Config {
    /// libcontainer's state root.
    pub fn containers_root(&self) -> PathBuf {
        self.state_dir.join("c")
    }
    /// Bundles (config.json, exec process files).
    pub fn bundles(&self) -> PathBuf {
        self.state_dir.join("b")
    }
    /// Console sockets.
    pub fn sockets(&self) -> PathBuf {
        self.state_dir.join("s")
    }
}

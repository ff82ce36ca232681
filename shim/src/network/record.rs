//! `<state>/net.json`: what the shim created in the pod's network namespace, written before it
//! creates anything, so teardown (last Delete, failed boot, or the `delete` action after a
//! shim crash) finds it without the daemon.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::NetError;

/// The record's file name in the sandbox state directory.
pub const FILE: &str = "net.json";

/// The taps and qdiscs of one sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct NetRecord {
    /// The network namespace (`/var/run/netns/...`).
    pub netns: PathBuf,
    /// Taps the shim created there.
    pub taps: Vec<String>,
    /// The veths that carry an ingress qdisc of the shim's.
    pub veths: Vec<String>,
}

impl NetRecord {
    /// Writes `<root>/net.json`.
    pub fn write(&self, root: &Path) -> Result<(), NetError> {
        let path = root.join(FILE);
        let text = serde_json::to_vec_pretty(self).expect("a NetRecord serializes");
        std::fs::write(&path, text).map_err(|source| NetError::Record { path, source })
    }

    /// Reads `<root>/net.json`; `None` when there is none (no pod network).
    pub fn read(root: &Path) -> Result<Option<NetRecord>, NetError> {
        let path = root.join(FILE);
        match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| NetError::Record {
                    path,
                    source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(NetError::Record { path, source }),
        }
    }

    /// Removes `<root>/net.json` (missing is fine).
    pub fn remove(root: &Path) {
        let _ = std::fs::remove_file(root.join(FILE));
    }
}

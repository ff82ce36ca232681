//! What creating and starting a container needs from the agent, and nothing more: its
//! configuration, the reaper, the OOM watcher, the runners and fresh console socket paths. The sandbox owns
//! one and lends it to [`super::create`] and [`super::exec`], which so never see the sandbox's
//! container table (a container that joins another's namespaces gets that init's pid through
//! a lookup the caller passes in).

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::oom::OomWatcher;
use crate::config::Config;
use crate::reaper::Reaper;
use crate::runner::spare::Runners;

/// The runtime context of every container of the agent.
#[derive(Debug)]
pub struct Runtime {
    /// Configuration.
    pub config: Config,
    /// The reaper.
    pub reaper: Reaper,
    /// OOM events.
    pub oom: Arc<OomWatcher>,
    /// The runners, with a spare once the pod is set up.
    pub runners: Arc<Runners>,
    sockets: AtomicU64,
}

impl Runtime {
    /// A context over `config` and `reaper`, with an OOM watcher of its own.
    pub fn new(config: Config, reaper: Reaper) -> Self {
        Runtime {
            runners: Arc::new(Runners::new(config.exe.clone(), reaper.clone())),
            config,
            reaper,
            oom: Arc::new(OomWatcher::default()),
            sockets: AtomicU64::new(0),
        }
    }

    /// A fresh console socket path.
    pub fn console_socket_path(&self) -> PathBuf {
        let n = self.sockets.fetch_add(1, Ordering::Relaxed);
        self.config.sockets().join(format!("{n}.sock"))
    }
}

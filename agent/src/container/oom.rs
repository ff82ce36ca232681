//! OOM-kill events: the `oom_kill` counter of each container's `memory.events`, checked every
//! [`POLL`] and whenever a process of the container exits, queued for `WaitOomEvent`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;

use super::cgroup;

/// How often the counters are read.
pub const POLL: Duration = Duration::from_millis(200);
/// Queued events nobody asked for yet (more are dropped and logged).
const QUEUE: usize = 256;

#[derive(Debug)]
struct Watched {
    dir: PathBuf,
    seen: u64,
}

/// The watcher; share it behind an `Arc`.
#[derive(Debug)]
pub struct OomWatcher {
    watched: Mutex<HashMap<String, Watched>>,
    tx: mpsc::Sender<String>,
    rx: tokio::sync::Mutex<mpsc::Receiver<String>>,
}

impl Default for OomWatcher {
    fn default() -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        OomWatcher {
            watched: Mutex::default(),
            tx,
            rx: tokio::sync::Mutex::new(rx),
        }
    }
}

impl OomWatcher {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Watched>> {
        self.watched.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts watching a container's cgroup (its current count is the baseline).
    pub fn add(&self, id: &str, dir: PathBuf) {
        let seen = cgroup::oom_kills(&dir);
        self.lock().insert(id.into(), Watched { dir, seen });
    }

    /// Stops watching (after a last check).
    pub fn remove(&self, id: &str) {
        self.check(id);
        self.lock().remove(id);
    }

    /// Reads one container's counter and queues an event when it grew.
    pub fn check(&self, id: &str) {
        let grew = {
            let mut map = self.lock();
            let Some(w) = map.get_mut(id) else { return };
            let now = cgroup::oom_kills(&w.dir);
            let grew = now > w.seen;
            w.seen = w.seen.max(now);
            grew
        };
        if grew {
            tracing::warn!(container_id = id, "OOM kill in the container's cgroup");
            if self.tx.try_send(id.into()).is_err() {
                tracing::warn!(container_id = id, "OOM event queue full; event dropped");
            }
        }
    }

    /// Waits for the next OOM event.
    pub async fn next(&self) -> String {
        let mut rx = self.rx.lock().await;
        // The sender lives in self, so the channel never closes.
        rx.recv().await.unwrap_or_default()
    }

    /// The polling task.
    pub fn spawn(self: &Arc<Self>) {
        let me = Arc::clone(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(POLL);
            loop {
                tick.tick().await;
                let ids: Vec<String> = me.lock().keys().cloned().collect();
                for id in ids {
                    me.check(&id);
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_growing_counter_is_one_event() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("memory.events"), "oom 0\noom_kill 0\n").unwrap();
        let w = OomWatcher::default();
        w.add("c1", d.path().into());
        w.check("c1");
        std::fs::write(d.path().join("memory.events"), "oom 1\noom_kill 1\n").unwrap();
        w.check("c1");
        w.check("c1");
        assert_eq!(w.next().await, "c1");
        assert!(w.rx.lock().await.try_recv().is_err(), "one kill, one event");
        w.remove("c1");
        w.check("c1");
    }
}

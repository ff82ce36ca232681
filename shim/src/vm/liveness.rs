//! Liveness after boot: the shim asks the agent `Check` every [`interval`] and, when the guest
//! has not answered for `liveness_timeout_secs`, kills its VM. Every started task of the pod
//! then exits 137 with its exit event, exactly as when husk-vmm dies, and the shim's log names
//! the cause. Pausing a container does not pause the agent, so a paused task is never taken
//! for a hung guest. `liveness_timeout_secs = 0` turns the watch off.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{wait_gone, Vm};

/// How often the agent is asked: a quarter of the timeout, between 1 and 15 s.
pub fn interval(timeout: Duration) -> Duration {
    (timeout / 4).clamp(Duration::from_secs(1), Duration::from_secs(15))
}

/// The decision, apart from the clock and the agent.
#[derive(Debug, Clone, Copy)]
pub struct Silence {
    timeout: Duration,
    last_answer: Instant,
}

impl Silence {
    /// Counting from `now`, with the guest just booted.
    pub fn new(timeout: Duration, now: Instant) -> Self {
        Silence {
            timeout,
            last_answer: now,
        }
    }

    /// The agent answered at `now`.
    pub fn answered(&mut self, now: Instant) {
        self.last_answer = now;
    }

    /// How long the guest has been silent at `now`, if that is longer than the timeout.
    pub fn hung(&self, now: Instant) -> Option<Duration> {
        let silent = now.saturating_duration_since(self.last_answer);
        (silent >= self.timeout).then_some(silent)
    }
}

/// Watches `vm` until it ends; kills it if the guest stops answering for `timeout`.
pub async fn watch(vm: Arc<Vm>, timeout: Duration) {
    if timeout.is_zero() {
        return;
    }
    let every = interval(timeout);
    let mut silence = Silence::new(timeout, Instant::now());
    loop {
        if wait_gone(&vm.gone, every).await.is_some() {
            return;
        }
        match tokio::time::timeout(every, vm.agent.check()).await {
            Ok(Ok(_)) => silence.answered(Instant::now()),
            Ok(Err(e)) => {
                tracing::warn!(pid = vm.pid, error = %e, "the guest agent's health check failed")
            }
            Err(_) => tracing::warn!(pid = vm.pid, "the guest agent's health check timed out"),
        }
        if let Some(silent) = silence.hung(Instant::now()) {
            tracing::error!(
                pid = vm.pid,
                silent_secs = silent.as_secs(),
                "the guest stopped answering (liveness_timeout_secs = {}): killing its VM; \
                 every task of the pod exits 137",
                timeout.as_secs()
            );
            vm.kill().await;
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_interval_is_a_quarter_of_the_timeout_within_bounds() {
        assert_eq!(interval(Duration::from_secs(60)), Duration::from_secs(15));
        assert_eq!(interval(Duration::from_secs(20)), Duration::from_secs(5));
        assert_eq!(interval(Duration::from_secs(2)), Duration::from_secs(1));
        assert_eq!(interval(Duration::from_secs(600)), Duration::from_secs(15));
    }

    #[test]
    fn silence_counts_from_the_last_answer() {
        let t0 = Instant::now();
        let mut s = Silence::new(Duration::from_secs(30), t0);
        assert_eq!(s.hung(t0 + Duration::from_secs(29)), None);
        s.answered(t0 + Duration::from_secs(29));
        assert_eq!(s.hung(t0 + Duration::from_secs(58)), None);
        assert_eq!(
            s.hung(t0 + Duration::from_secs(59)),
            Some(Duration::from_secs(30))
        );
    }
}

//! Where a VM's setup time went: named phases from the start of the process to the moment the
//! vCPUs run, printed as one line on stderr (which the shim keeps in its log), so a slow boot
//! can be told apart into VMM setup and guest time without a profiler.

use std::fmt;
use std::time::{Duration, Instant};

/// Phases of setup, each with the time it took.
#[derive(Debug)]
pub struct Timeline {
    start: Instant,
    last: Instant,
    phases: Vec<(&'static str, Duration)>,
}

impl Timeline {
    /// Starts the clock at `start` (the process's start, or as near as the caller knows).
    pub fn new(start: Instant) -> Self {
        Timeline {
            start,
            last: start,
            phases: Vec::new(),
        }
    }

    /// Ends the phase `name` now: it took the time since the previous mark.
    pub fn mark(&mut self, name: &'static str) {
        self.mark_at(name, Instant::now());
    }

    fn mark_at(&mut self, name: &'static str, now: Instant) {
        self.phases
            .push((name, now.saturating_duration_since(self.last)));
        self.last = now;
    }

    /// Time from the start to the last mark.
    pub fn total(&self) -> Duration {
        self.last.saturating_duration_since(self.start)
    }
}

impl fmt::Display for Timeline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "setup {} ms (", self.total().as_millis())?;
        for (i, (name, took)) in self.phases.iter().enumerate() {
            let sep = if i == 0 { "" } else { ", " };
            write!(f, "{sep}{name} {} ms", took.as_millis())?;
        }
        write!(f, ")")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_add_up_to_the_total_and_print_in_order() {
        let t0 = Instant::now();
        let mut t = Timeline::new(t0);
        t.mark_at("vm", t0 + Duration::from_millis(5));
        t.mark_at("kernel", t0 + Duration::from_millis(12));
        assert_eq!(t.total(), Duration::from_millis(12));
        assert_eq!(t.to_string(), "setup 12 ms (vm 5 ms, kernel 7 ms)");
    }
}

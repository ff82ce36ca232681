//! Warnings the guest can trigger, rate-limited.
//!
//! A hostile guest can produce a bad descriptor or vsock packet per notification, millions a
//! second; printing each would turn the VMM's stderr into the guest's weapon. Every message a
//! guest can cause goes through [`guest_warn!`](crate::guest_warn), which gives each call site
//! its own budget of [`BURST`] messages per [`WINDOW`] and then says how many it held back.
//! Messages the guest cannot trigger (setup errors, the exit reason) keep using `eprintln!`.

use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Messages one call site may print per window.
pub const BURST: u32 = 10;
/// Length of a rate-limiting window.
pub const WINDOW: Duration = Duration::from_secs(5);

#[derive(Debug)]
struct Window {
    start: Instant,
    printed: u32,
    suppressed: u64,
}

/// One call site's budget.
#[derive(Debug, Default)]
pub struct RateLimiter {
    window: Mutex<Option<Window>>,
}

/// What a limiter decided for one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Print it; `held_back` similar messages were dropped in the window before.
    Print {
        /// Messages suppressed since the last printed one.
        held_back: u64,
    },
    /// Drop it.
    Suppress,
}

impl RateLimiter {
    /// A limiter with a full budget.
    pub const fn new() -> Self {
        RateLimiter {
            window: Mutex::new(None),
        }
    }

    /// Decides about a message at `now`.
    pub fn check(&self, now: Instant) -> Verdict {
        let mut guard = self.window.lock().unwrap_or_else(|p| p.into_inner());
        let w = guard.get_or_insert(Window {
            start: now,
            printed: 0,
            suppressed: 0,
        });
        if now.saturating_duration_since(w.start) >= WINDOW {
            w.start = now;
            w.printed = 0;
        }
        if w.printed < BURST {
            w.printed += 1;
            let held_back = std::mem::take(&mut w.suppressed);
            Verdict::Print { held_back }
        } else {
            w.suppressed += 1;
            Verdict::Suppress
        }
    }

    /// Prints `msg` as a warning on stderr unless the budget is spent.
    pub fn warn(&self, msg: fmt::Arguments<'_>) {
        match self.check(Instant::now()) {
            Verdict::Print { held_back: 0 } => eprintln!("husk-vmm: warning: {msg}"),
            Verdict::Print { held_back } => eprintln!(
                "husk-vmm: warning: {msg} ({held_back} similar warnings suppressed before this)"
            ),
            Verdict::Suppress => {}
        }
    }
}

/// Prints a warning about something the guest did, rate-limited per call site.
#[macro_export]
macro_rules! guest_warn {
    ($($arg:tt)*) => {{
        static LIMITER: $crate::logger::RateLimiter = $crate::logger::RateLimiter::new();
        LIMITER.warn(format_args!($($arg)*));
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_silence_then_a_count() {
        let l = RateLimiter::new();
        let t0 = Instant::now();
        for _ in 0..BURST {
            assert_eq!(l.check(t0), Verdict::Print { held_back: 0 });
        }
        for _ in 0..7 {
            assert_eq!(l.check(t0 + Duration::from_secs(1)), Verdict::Suppress);
        }
        assert_eq!(l.check(t0 + WINDOW), Verdict::Print { held_back: 7 });
        assert_eq!(l.check(t0 + WINDOW), Verdict::Print { held_back: 0 });
    }
}

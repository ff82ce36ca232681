//! A writer that never blocks and never grows without bound: guest console output is a
//! guest-controlled stream, so it passes through a token bucket and the excess is dropped
//! (and counted, with a note in the output once the bucket refills).

use std::io::Write;
use std::time::Instant;

/// Token-bucket limited output.
pub struct RateLimitedWriter {
    sink: Box<dyn Write + Send>,
    burst: u64,
    per_sec: u64,
    tokens: u64,
    last: Instant,
    dropped: u64,
}

impl std::fmt::Debug for RateLimitedWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimitedWriter")
            .field("dropped", &self.dropped)
            .finish()
    }
}

impl RateLimitedWriter {
    /// Up to `burst` bytes at once, refilled at `per_sec` bytes per second.
    pub fn new(sink: Box<dyn Write + Send>, burst: u64, per_sec: u64) -> Self {
        RateLimitedWriter {
            sink,
            burst,
            per_sec,
            tokens: burst,
            last: Instant::now(),
            dropped: 0,
        }
    }

    /// Bytes dropped so far.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last);
        let add = (elapsed.as_micros() as u64).saturating_mul(self.per_sec) / 1_000_000;
        if add > 0 {
            self.tokens = (self.tokens + add).min(self.burst);
            self.last = now;
        }
    }

    fn write_at(&mut self, buf: &[u8], now: Instant) {
        self.refill(now);
        if self.dropped > 0 && self.tokens >= self.burst / 2 {
            let note = format!(
                "\n[husk-vmm: {} bytes of guest console output dropped]\n",
                self.dropped
            );
            let _ = self.sink.write_all(note.as_bytes());
            self.dropped = 0;
        }
        let take = buf.len().min(self.tokens as usize);
        if take > 0 && self.sink.write_all(&buf[..take]).is_err() {
            self.dropped += take as u64;
        }
        self.tokens -= take as u64;
        self.dropped += (buf.len() - take) as u64;
    }
}

impl Write for RateLimitedWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.write_at(buf, Instant::now());
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.sink.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::legacy::SharedBuf;
    use std::time::Duration;

    #[test]
    fn excess_is_dropped_counted_and_reported_after_refill() {
        let out = SharedBuf::default();
        let mut w = RateLimitedWriter::new(Box::new(out.clone()), 10, 100);
        let t0 = w.last;
        w.write_at(b"0123456789abcdef", t0);
        assert_eq!(out.0.lock().unwrap().as_slice(), b"0123456789");
        assert_eq!(w.dropped(), 6);
        // 100 ms refills 10 bytes: the note comes first, then the new bytes.
        w.write_at(b"xyz", t0 + Duration::from_millis(100));
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        assert!(
            text.contains("6 bytes of guest console output dropped"),
            "{text}"
        );
        assert!(text.ends_with("xyz"), "{text}");
        assert_eq!(w.dropped(), 0);
    }
}

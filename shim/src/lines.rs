//! Line reading and logging for streams the guest writes (its console, the agent's log port):
//! every line is cut at a maximum length, whatever the guest sends, and every log line it can
//! trigger goes through a rate limit. A guest that sends a gigabyte without a newline costs the
//! shim one line buffer; a guest that floods gets a count of what was not logged.

use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

/// The longest line kept from a guest stream; the rest of a longer line is skipped.
pub const MAX_LINE: usize = 4096;

/// A line reader with a bound on the line length.
#[derive(Debug)]
pub struct BoundedLines<R> {
    reader: BufReader<R>,
    max: usize,
    skipping: bool,
    /// Lines that were cut at `max` so far.
    pub cut: u64,
}

impl<R: AsyncRead + Unpin> BoundedLines<R> {
    /// Lines of `reader`, each at most `max` bytes (lossy UTF-8).
    pub fn new(reader: R, max: usize) -> Self {
        BoundedLines {
            reader: BufReader::with_capacity(max.clamp(64, 64 * 1024), reader),
            max,
            skipping: false,
            cut: 0,
        }
    }

    /// The next line without its newline; `None` at the end. A line longer than the bound is
    /// returned cut as soon as the bound is reached, and the rest of it is skipped.
    pub async fn next_line(&mut self) -> std::io::Result<Option<String>> {
        let mut line = Vec::new();
        loop {
            let buf = self.reader.fill_buf().await?;
            if buf.is_empty() {
                self.skipping = false;
                return Ok((!line.is_empty()).then(|| String::from_utf8_lossy(&line).into()));
            }
            let newline = buf.iter().position(|&b| b == b'\n');
            let end = newline.unwrap_or(buf.len());
            if self.skipping {
                self.skipping = newline.is_none();
                self.reader.consume(newline.map_or(end, |n| n + 1));
                continue;
            }
            let room = self.max - line.len();
            if end > room {
                line.extend_from_slice(&buf[..room]);
                self.reader.consume(room);
                self.skipping = true;
                self.cut += 1;
                return Ok(Some(String::from_utf8_lossy(&line).into()));
            }
            line.extend_from_slice(&buf[..end]);
            self.reader.consume(newline.map_or(end, |n| n + 1));
            if newline.is_some() {
                return Ok(Some(String::from_utf8_lossy(&line).into()));
            }
        }
    }
}

/// At most `per_second` events a second; the rest are counted.
#[derive(Debug)]
pub struct RateLimit {
    per_second: u32,
    window: Instant,
    in_window: u32,
    dropped: u64,
}

impl RateLimit {
    /// A limit of `per_second`.
    pub fn new(per_second: u32) -> Self {
        RateLimit {
            per_second,
            window: Instant::now(),
            in_window: 0,
            dropped: 0,
        }
    }

    /// Whether one more event may pass now. When a new window starts, `on_dropped` is told how
    /// many were held back in the last one.
    pub fn allow(&mut self, now: Instant, on_dropped: impl FnOnce(u64)) -> bool {
        if now.duration_since(self.window) >= Duration::from_secs(1) {
            if self.dropped > 0 {
                on_dropped(self.dropped);
            }
            self.window = now;
            self.in_window = 0;
            self.dropped = 0;
        }
        if self.in_window < self.per_second {
            self.in_window += 1;
            true
        } else {
            self.dropped += 1;
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;

    use super::*;

    async fn lines_of(input: Vec<u8>, max: usize) -> (Vec<String>, u64) {
        let (mut w, r) = tokio::io::duplex(64);
        tokio::spawn(async move {
            for chunk in input.chunks(7) {
                w.write_all(chunk).await.unwrap();
            }
        });
        let mut lines = BoundedLines::new(r, max);
        let mut out = Vec::new();
        while let Some(l) = lines.next_line().await.unwrap() {
            out.push(l);
        }
        (out, lines.cut)
    }

    #[tokio::test]
    async fn lines_are_cut_at_the_bound_and_the_rest_is_skipped() {
        let mut input = b"short\n".to_vec();
        input.extend(std::iter::repeat_n(b'x', 1000));
        input.extend(b"\nafter\nexact-16-bytes!\nno newline at the end");
        let (lines, cut) = lines_of(input, 16).await;
        assert_eq!(
            lines,
            [
                "short",
                "xxxxxxxxxxxxxxxx",
                "after",
                "exact-16-bytes!",
                "no newline at th"
            ]
        );
        assert_eq!(cut, 2);
    }

    #[tokio::test]
    async fn a_huge_line_without_a_newline_costs_one_line() {
        let (lines, cut) = lines_of(vec![b'y'; 1 << 20], MAX_LINE).await;
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0].len(), MAX_LINE);
        assert_eq!(cut, 1);
    }

    #[test]
    fn the_rate_limit_counts_what_it_holds_back() {
        let mut r = RateLimit::new(3);
        let t0 = Instant::now();
        let passed = (0..10).filter(|_| r.allow(t0, |_| panic!())).count();
        assert_eq!(passed, 3);
        let mut reported = 0;
        assert!(r.allow(t0 + Duration::from_secs(1), |n| reported = n));
        assert_eq!(reported, 7);
    }
}

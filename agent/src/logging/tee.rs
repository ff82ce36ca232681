//! The `tracing` writer. Each event's line goes into the host log stream's queue and, only
//! while no stream carries the lines to the host, to the console (stderr) as well.
//!
//! The console is the guest's serial port: every byte written to it is a VM exit, so a line
//! costs the guest about a hundred exits (tens of milliseconds nested, where each exit is dear;
//! still a needless cost on hardware). The host gets the same lines from the stream, so the
//! console carries them only before the stream opens, after it broke for good, and in host mode.

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc;
use tracing_subscriber::fmt::MakeWriter;

/// What the writer and the stream's forwarder share.
#[derive(Debug)]
pub struct Sinks {
    /// Lines go to the console too.
    console: AtomicBool,
    /// Lines dropped because the queue was full, not yet reported to the host.
    dropped: AtomicU64,
}

impl Sinks {
    /// Console on, nothing dropped.
    pub fn new() -> Arc<Self> {
        Arc::new(Sinks {
            console: AtomicBool::new(true),
            dropped: AtomicU64::new(0),
        })
    }

    /// Whether lines go to the console.
    pub fn console(&self) -> bool {
        self.console.load(Ordering::Relaxed)
    }

    /// Turns the console copy on or off.
    pub fn set_console(&self, on: bool) {
        self.console.store(on, Ordering::Relaxed);
    }

    /// Takes the count of dropped lines, leaving zero.
    pub fn take_dropped(&self) -> u64 {
        self.dropped.swap(0, Ordering::Relaxed)
    }

    /// Counts `n` more dropped lines (a count taken whose report did not get out).
    pub fn add_dropped(&self, n: u64) {
        self.dropped.fetch_add(n, Ordering::Relaxed);
    }
}

/// Where log lines go: the host queue (in the guest) and, while [`Sinks::console`], stderr.
#[derive(Debug, Clone)]
pub struct Tee {
    tx: Option<mpsc::Sender<Vec<u8>>>,
    sinks: Arc<Sinks>,
}

impl Tee {
    /// A writer queueing on `tx` (none in host mode: stderr only).
    pub fn new(tx: Option<mpsc::Sender<Vec<u8>>>, sinks: Arc<Sinks>) -> Self {
        Tee { tx, sinks }
    }
}

/// One event's text, sent on drop.
#[derive(Debug)]
pub struct TeeWriter {
    tee: Tee,
    buf: Vec<u8>,
}

impl Write for TeeWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for TeeWriter {
    fn drop(&mut self) {
        let Some(tx) = &self.tee.tx else {
            let _ = std::io::stderr().write_all(&self.buf);
            return;
        };
        if self.tee.sinks.console() {
            let _ = std::io::stderr().write_all(&self.buf);
        }
        if tx.try_send(std::mem::take(&mut self.buf)).is_err() {
            self.tee.sinks.add_dropped(1);
        }
    }
}

impl<'a> MakeWriter<'a> for Tee {
    type Writer = TeeWriter;
    fn make_writer(&'a self) -> TeeWriter {
        TeeWriter {
            tee: self.clone(),
            buf: Vec::with_capacity(256),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_is_queued_whether_or_not_the_console_has_it() {
        let (tx, mut rx) = mpsc::channel(1);
        let sinks = Sinks::new();
        let tee = Tee::new(Some(tx), Arc::clone(&sinks));
        sinks.set_console(false);
        let mut w = tee.make_writer();
        w.write_all(b"one\n").unwrap();
        drop(w);
        assert_eq!(rx.try_recv().unwrap(), b"one\n");
        let mut w = tee.make_writer();
        w.write_all(b"two\n").unwrap();
        drop(w);
        let mut w = tee.make_writer();
        w.write_all(b"three\n").unwrap();
        drop(w);
        assert_eq!(rx.try_recv().unwrap(), b"two\n");
        assert_eq!(sinks.take_dropped(), 1, "the queue held one line");
        assert_eq!(sinks.take_dropped(), 0);
    }
}

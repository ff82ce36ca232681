//! Logging: `tracing` into containerd's `log` FIFO in the bundle (the daemon), or stderr (the
//! `delete` action, whose stderr containerd records as "cleanup warnings"). `start` logs
//! nothing: containerd 1.6/1.7 read its stdout *and* stderr as the shim address.
//!
//! The FIFO is opened non-blocking and stays so: a stalled reader makes the shim drop log
//! lines instead of blocking a task request. Lines are shorter than PIPE_BUF, so each write is
//! all or nothing. The crate's own `log` records reach the same subscriber (tracing-log).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

/// Writes each formatted line to the FIFO; errors (no reader, full pipe) drop the line.
#[derive(Debug, Clone)]
struct FifoWriter(Arc<File>);

impl Write for FifoWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        // A failed write loses the line; logging must never fail or block a request.
        let _ = (&*self.0).write(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for FifoWriter {
    type Writer = FifoWriter;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

fn filter(level: &str) -> EnvFilter {
    EnvFilter::try_from_env("HUSK_LOG").unwrap_or_else(|_| EnvFilter::new(level))
}

/// The daemon: logs go to `<bundle>/log` (the shim's working directory). Without a reader
/// (tests, a hand-run shim) logging is off.
pub fn init_daemon(bundle: &Path, level: &str) {
    let file = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(bundle.join("log"));
    let Ok(file) = file else {
        return;
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter(level))
        .with_ansi(false)
        .with_target(false)
        .with_writer(FifoWriter(Arc::new(file)))
        .try_init();
}

/// The `delete` action: warnings and errors to stderr.
pub fn init_stderr() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter("warn"))
        .with_ansi(false)
        .with_target(false)
        .with_writer(std::io::stderr)
        .try_init();
}

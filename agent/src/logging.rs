//! Logs: `tracing` events (with `container_id` / `exec_id` fields) to stderr, which is the
//! console in the guest, and in the guest also to the host over the one vsock stream the agent
//! opens to port 1026 at its start, before any container exists. The stream never blocks the
//! agent: lines go through a bounded queue and are dropped (and counted) when it is full.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

/// Lines queued for the host before the oldest new ones are dropped.
const QUEUE: usize = 1024;
/// Default filter (HUSK_AGENT_LOG, or `husk.log=` on the guest's command line, overrides it).
pub const DEFAULT_FILTER: &str = "info,libcontainer=warn,libcgroups=warn";

/// Where log lines go besides stderr.
#[derive(Debug, Clone)]
pub struct Tee {
    tx: Option<mpsc::Sender<Vec<u8>>>,
    dropped: Arc<AtomicU64>,
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
        let _ = std::io::stderr().write_all(&self.buf);
        if let Some(tx) = &self.tee.tx {
            if tx.try_send(std::mem::take(&mut self.buf)).is_err() {
                self.tee.dropped.fetch_add(1, Ordering::Relaxed);
            }
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

fn filter(cmdline_level: Option<String>) -> EnvFilter {
    let spec = std::env::var("HUSK_AGENT_LOG")
        .ok()
        .or(cmdline_level)
        .unwrap_or_else(|| DEFAULT_FILTER.into());
    EnvFilter::try_new(&spec).unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER))
}

/// `husk.log=<filter>` from the kernel command line.
pub fn cmdline_level() -> Option<String> {
    let cmdline = std::fs::read_to_string("/proc/cmdline").ok()?;
    cmdline
        .split_whitespace()
        .find_map(|w| w.strip_prefix("husk.log="))
        .map(str::to_string)
}

/// Installs the subscriber. With `to_host`, returns the queue's receiving end for
/// [`connect_host_log`].
pub fn init(
    to_host: bool,
    cmdline_level: Option<String>,
) -> (Option<mpsc::Receiver<Vec<u8>>>, Arc<AtomicU64>) {
    let (tx, rx) = if to_host {
        let (tx, rx) = mpsc::channel(QUEUE);
        (Some(tx), Some(rx))
    } else {
        (None, None)
    };
    let dropped = Arc::new(AtomicU64::new(0));
    let tee = Tee {
        tx,
        dropped: Arc::clone(&dropped),
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter(cmdline_level))
        .with_ansi(false)
        .with_target(false)
        .with_writer(tee)
        .try_init();
    (rx, dropped)
}

/// How long the agent tries to open its log stream at start (the shim listens before the VM
/// starts, so the first attempt normally succeeds).
const CONNECT_FOR: Duration = Duration::from_secs(2);

/// Asks the log forwarder to open its stream to the host again: once, in a VM restored from a
/// template, whose stream died with the snapshot (the shim listens for it again before it
/// asks, and before any container exists).
pub fn reopen_host_log() {
    REOPEN.notify_one();
}

static REOPEN: tokio::sync::Notify = tokio::sync::Notify::const_new();

async fn open_host_log() -> Option<tokio_vsock::VsockStream> {
    use tokio_vsock::{VsockAddr, VsockStream};
    let addr = VsockAddr::new(
        husk_protocol::hybrid::VSOCK_HOST_CID,
        husk_protocol::ports::LOG_PORT,
    );
    let deadline = tokio::time::Instant::now() + CONNECT_FOR;
    loop {
        match VsockStream::connect(addr).await {
            Ok(s) => return Some(s),
            Err(e) if tokio::time::Instant::now() >= deadline => {
                eprintln!(
                    "husk-agent: no log stream to the host ({e}); logging to the console only"
                );
                return None;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// Opens the log stream to the host (vsock CID 2, port 1026) before anything else runs, then
/// forwards queued lines over it from a task. The shim takes exactly this one connection and
/// stops listening (no container can reach a host service on the port afterwards), so a
/// stream that breaks is opened again only when [`reopen_host_log`] asks; meanwhile lines go
/// to the console only.
pub async fn connect_host_log(mut rx: mpsc::Receiver<Vec<u8>>, dropped: Arc<AtomicU64>) {
    let mut stream = open_host_log().await;
    tokio::spawn(async move {
        loop {
            if let Some(mut s) = stream.take() {
                loop {
                    let Some(line) = rx.recv().await else { return };
                    let lost = dropped.swap(0, Ordering::Relaxed);
                    if lost > 0 {
                        let note = format!("husk-agent: {lost} log lines dropped (queue full)\n");
                        let _ = AsyncWriteExt::write_all(&mut s, note.as_bytes()).await;
                    }
                    if AsyncWriteExt::write_all(&mut s, &line).await.is_err() {
                        eprintln!(
                            "husk-agent: the log stream to the host broke; logging to the \
                             console only"
                        );
                        break;
                    }
                }
            }
            REOPEN.notified().await;
            stream = open_host_log().await;
        }
    });
}

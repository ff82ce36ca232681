//! Logs: `tracing` events (with `container_id` / `exec_id` fields). In the guest they go to
//! the host over the one vsock stream the agent opens to port 1026 at its start, before any
//! container exists ([`stream`]), and to the console (stderr) only while no stream carries them
//! ([`tee`]); in host mode to stderr. The stream never blocks the agent: lines go through a
//! bounded queue and are dropped (and counted) when it is full.

mod stream;
mod tee;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tracing_subscriber::EnvFilter;

pub use stream::Breaks;
pub use tee::Sinks;
use tee::Tee;

/// Lines queued for the host before the oldest new ones are dropped.
const QUEUE: usize = 1024;
/// Default filter (HUSK_AGENT_LOG, or `husk.log=` on the guest's command line, overrides it).
pub const DEFAULT_FILTER: &str = "info,libcontainer=warn,libcgroups=warn";

fn filter(cmdline_level: Option<String>) -> EnvFilter {
    let spec = std::env::var("HUSK_AGENT_LOG")
        .ok()
        .or(cmdline_level)
        .unwrap_or_else(|| DEFAULT_FILTER.into());
    EnvFilter::try_new(&spec).unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER))
}

/// `husk.log=<filter>` from kernel command line `cmdline`.
pub fn cmdline_level(cmdline: &str) -> Option<String> {
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
) -> (Option<mpsc::Receiver<Vec<u8>>>, Arc<Sinks>) {
    let (tx, rx) = if to_host {
        let (tx, rx) = mpsc::channel(QUEUE);
        (Some(tx), Some(rx))
    } else {
        (None, None)
    };
    let sinks = Sinks::new();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter(cmdline_level))
        .with_ansi(false)
        .with_target(false)
        .with_writer(Tee::new(tx, Arc::clone(&sinks)))
        .try_init();
    (rx, sinks)
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
/// forwards queued lines over it from a task ([`stream`]); `breaks` says how a break is taken.
pub async fn connect_host_log(rx: mpsc::Receiver<Vec<u8>>, sinks: Arc<Sinks>, breaks: Breaks) {
    let first = open_host_log().await;
    let mut first = Some(first);
    let open = move || {
        let ready = first.take();
        async move {
            match ready {
                Some(stream) => stream,
                None => open_host_log().await,
            }
        }
    };
    tokio::spawn(stream::forward(rx, sinks, open, &REOPEN, breaks));
}

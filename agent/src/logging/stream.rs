//! The log stream to the host (vsock CID 2, port 1026): opened once at the agent's start,
//! before any container exists, and fed from the writer's queue by one task. The shim takes
//! exactly this one connection and stops listening (no container can reach a host service on
//! the port afterwards), so a stream that breaks is opened again only when
//! [`super::reopen_host_log`] asks.
//!
//! Once the stream is open, lines reach the host only through it (the console copy is off,
//! [`super::tee`]). How a break is taken depends on the guest:
//! - a template's guest expects one break: a VM restored from it resets its vsock transport,
//!   and the shim that restored it asks for a new stream before any container exists. The line
//!   the break was found on is kept, and every line waits in the queue for the new stream,
//!   none on the console;
//! - any other break (and a second one in a restored guest) is a failure: the console takes the
//!   lines again, with a note saying so, until a new stream opens.

use std::future::Future;
use std::io::Write;
use std::sync::Arc;

use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, Notify};

use super::tee::Sinks;

/// How the forwarder takes the stream's next break.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Breaks {
    /// The guest is a template's: the restore breaks the stream once, and a new one is asked
    /// for right after.
    ExpectedOnce,
    /// A break is a failure.
    Unexpected,
}

impl Breaks {
    /// The policy for a guest that is (or is not) a template's.
    pub fn for_guest(template: bool) -> Self {
        if template {
            Breaks::ExpectedOnce
        } else {
            Breaks::Unexpected
        }
    }
}

/// Writes `line` (after the note of lines dropped meanwhile, if any) to `stream`.
async fn send<S: AsyncWrite + Unpin>(
    stream: &mut S,
    sinks: &Sinks,
    line: &[u8],
) -> std::io::Result<()> {
    let lost = sinks.take_dropped();
    if lost > 0 {
        let note = format!("husk-agent: {lost} log lines dropped (queue full)\n");
        if let Err(e) = stream.write_all(note.as_bytes()).await {
            sinks.add_dropped(lost);
            return Err(e);
        }
    }
    stream.write_all(line).await
}

fn to_console(line: &[u8]) {
    let _ = std::io::stderr().write_all(line);
}

/// Forwards the queue `rx` to the stream `open` makes, opening a new one each time `reopen`
/// is notified after a break; returns when the queue closes.
pub async fn forward<S, O, F>(
    mut rx: mpsc::Receiver<Vec<u8>>,
    sinks: Arc<Sinks>,
    mut open: O,
    reopen: &Notify,
    mut breaks: Breaks,
) where
    S: AsyncWrite + Unpin,
    O: FnMut() -> F,
    F: Future<Output = Option<S>>,
{
    let mut pending: Option<Vec<u8>> = None;
    loop {
        match open().await {
            Some(mut stream) => {
                sinks.set_console(false);
                loop {
                    let line = match pending.take() {
                        Some(line) => line,
                        None => match rx.recv().await {
                            Some(line) => line,
                            None => return,
                        },
                    };
                    if send(&mut stream, &sinks, &line).await.is_ok() {
                        continue;
                    }
                    match breaks {
                        Breaks::ExpectedOnce => {
                            breaks = Breaks::Unexpected;
                            pending = Some(line);
                        }
                        Breaks::Unexpected => {
                            sinks.set_console(true);
                            to_console(
                                b"husk-agent: the log stream to the host broke; logging to the \
                                  console only\n",
                            );
                            to_console(&line);
                        }
                    }
                    break;
                }
            }
            None => {
                sinks.set_console(true);
                if let Some(line) = pending.take() {
                    to_console(&line);
                }
            }
        }
        reopen.notified().await;
    }
}

#[cfg(test)]
mod tests;

//! The control socket: a Unix socket on which the shim asks the VMM to ping, pause, resume or
//! shut down, and on which a person diagnosing a stalled guest asks for its virtio queues'
//! state (`queues`, which also has each device log its backend's state: the vsock connections'
//! credit and buffers). One request line per connection; the answer is one line (`ok <state>` or
//! `error <why>`). Connections are served on a thread of their own and handed to the main loop
//! through a channel, so a slow client never stalls the VM.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use husk_protocol::vmm::MAX_CONTROL_LINE;
use husk_protocol::ControlRequest;
use vmm_sys_util::eventfd::EventFd;

/// A request from a client, with the way back.
#[derive(Debug)]
pub struct Pending {
    /// What was asked.
    pub request: ControlRequest,
    /// Where the main loop sends the answer line (without newline).
    pub reply: mpsc::Sender<String>,
}

/// The listening socket; its file is removed when this is dropped.
#[derive(Debug)]
pub struct ControlSocket {
    path: PathBuf,
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Binds `path` (a stale socket file nobody listens on is replaced; a live one is an error).
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    match UnixListener::bind(path) {
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            if UnixStream::connect(path).is_ok() {
                return Err(std::io::Error::new(
                    e.kind(),
                    format!("{} is in use by another process", path.display()),
                ));
            }
            std::fs::remove_file(path)?;
            UnixListener::bind(path)
        }
        other => other,
    }
}

/// Starts serving `listener`; requests arrive on the returned channel and `wake` is written
/// for each.
pub fn serve(
    listener: UnixListener,
    path: &Path,
    wake: EventFd,
) -> std::io::Result<(ControlSocket, mpsc::Receiver<Pending>)> {
    let (tx, rx) = mpsc::channel();
    let (ready, filtered) = mpsc::sync_channel(1);
    std::thread::Builder::new()
        .name("control".into())
        .spawn(move || {
            let installed = crate::seccomp::install(crate::seccomp::ThreadKind::Control);
            let ok = installed.is_ok();
            let _ = ready.send(installed);
            if !ok {
                return;
            }
            for stream in listener.incoming().map_while(Result::ok) {
                // A client that misbehaves loses its own connection, nothing else.
                let _ = handle(stream, &tx, &wake);
            }
        })?;
    filtered
        .recv()
        .map_err(|_| std::io::Error::other("the control thread died"))?
        .map_err(std::io::Error::other)?;
    Ok((
        ControlSocket {
            path: path.to_path_buf(),
        },
        rx,
    ))
}

/// How long a client waits for the main loop's answer before it gets `error VM did not
/// answer`: longer than the slowest request (a pause, which waits up to 10 s for the vCPUs).
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(20);

fn handle(stream: UnixStream, tx: &mpsc::Sender<Pending>, wake: &EventFd) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.set_write_timeout(Some(Duration::from_secs(2)))?;
    let mut line = String::new();
    BufReader::new((&stream).take(MAX_CONTROL_LINE as u64)).read_line(&mut line)?;
    let mut out = &stream;
    let request = match ControlRequest::parse(&line) {
        Ok(r) => r,
        Err(why) => return writeln!(out, "error {why}"),
    };
    let (reply, answer) = mpsc::channel();
    tx.send(Pending { request, reply })
        .map_err(|_| std::io::Error::other("VM stopped"))?;
    wake.write(1)?;
    let text = answer
        .recv_timeout(ANSWER_TIMEOUT)
        .unwrap_or_else(|_| "error VM did not answer".into());
    writeln!(out, "{text}")
}

//! The request handlers: the accept loops, where every connection becomes a (port, [`Conn`])
//! pair, then port 1024 goes to the ttrpc service ([`rpc`]), port 1025 to the stdio attach
//! handler ([`attach`]) and port 1027 to port forwarding ([`forward`]).
//!
//! - Guest: vsock listeners on [`AGENT_PORT`], [`STDIO_PORT`] and [`FORWARD_PORT`].
//! - Host mode: one Unix socket serving the hybrid handshake (`CONNECT <port>\n` → `OK <port>\n`)
//!   so a client is the same as against husk-vmm's vsock socket.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use husk_protocol::agent::service::create_agent;
use husk_protocol::hybrid;
use husk_protocol::ports::{AGENT_PORT, FORWARD_PORT, STDIO_PORT};
use tokio::io::AsyncWriteExt;
use tokio::net::UnixListener;
use tokio::sync::mpsc;
use tokio_vsock::{VsockAddr, VsockListener, VMADDR_CID_ANY};
use ttrpc::asynchronous::transport::Listener;
use ttrpc::asynchronous::Server;

use self::rpc::AgentService;
use crate::conn::{read_line, Conn};
use crate::error::{AgentError, Result};
use crate::sandbox::Sandbox;

pub mod attach;
pub mod forward;
pub mod rpc;

/// Where the agent listens.
#[derive(Debug, Clone)]
pub enum Listen {
    /// vsock ports 1024, 1025 and 1027.
    Vsock,
    /// A Unix socket with the hybrid handshake.
    Unix(PathBuf),
}

/// How long a host-mode client may take to send `CONNECT <port>`.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Starts serving; returns the running ttrpc server (keep it alive; shut it down at the end).
pub async fn serve(sb: Arc<Sandbox>, listen: Listen) -> Result<Server> {
    let (rpc_tx, rpc_rx) = mpsc::channel::<std::io::Result<Conn>>(64);
    let incoming =
        futures::stream::unfold(
            rpc_rx,
            |mut rx| async move { rx.recv().await.map(|c| (c, rx)) },
        );
    let mut server = Server::new()
        .add_listener(Listener::new(incoming))
        .register_service(create_agent(Arc::new(AgentService::new(Arc::clone(&sb)))));
    server
        .start()
        .await
        .map_err(AgentError::runtime("starting the ttrpc server"))?;
    match listen {
        Listen::Vsock => {
            let rpc = vsock_listener(AGENT_PORT)?;
            let stdio = vsock_listener(STDIO_PORT)?;
            let forward = vsock_listener(FORWARD_PORT)?;
            tokio::spawn(async move {
                loop {
                    match forward.accept().await {
                        Ok((s, peer)) if from_host(peer) => {
                            tokio::spawn(forward::handle(Conn::Vsock(s)));
                        }
                        Ok((_, peer)) => refused(peer),
                        Err(e) => accept_failed(e).await,
                    }
                }
            });
            let tx = rpc_tx.clone();
            tokio::spawn(async move {
                loop {
                    match rpc.accept().await {
                        Ok((s, peer)) if from_host(peer) => {
                            let _ = tx.send(Ok(Conn::Vsock(s))).await;
                        }
                        Ok((_, peer)) => refused(peer),
                        Err(e) => accept_failed(e).await,
                    }
                }
            });
            let sb2 = Arc::clone(&sb);
            tokio::spawn(async move {
                loop {
                    match stdio.accept().await {
                        Ok((s, peer)) if from_host(peer) => {
                            tokio::spawn(attach::handle(Arc::clone(&sb2), Conn::Vsock(s)));
                        }
                        Ok((_, peer)) => refused(peer),
                        Err(e) => accept_failed(e).await,
                    }
                }
            });
        }
        Listen::Unix(path) => {
            let l = unix_listener(&path)?;
            tokio::spawn(async move {
                loop {
                    match l.accept().await {
                        Ok((s, _)) => {
                            tokio::spawn(hybrid_handshake(Arc::clone(&sb), rpc_tx.clone(), s));
                        }
                        Err(e) => accept_failed(e).await,
                    }
                }
            });
        }
    }
    Ok(server)
}

/// Only the host (the shim, through husk-vmm) talks to the agent: a connection from inside
/// the guest (a container opening AF_VSOCK to the guest's own CID) is closed at once.
fn from_host(peer: VsockAddr) -> bool {
    peer.cid() == husk_protocol::hybrid::VSOCK_HOST_CID
}

fn refused(peer: VsockAddr) {
    tracing::warn!(
        cid = peer.cid(),
        port = peer.port(),
        "refused a vsock connection that did not come from the host"
    );
}

async fn accept_failed(e: std::io::Error) {
    tracing::warn!(error = %e, "accept");
    // EMFILE and friends: do not spin.
    tokio::time::sleep(Duration::from_millis(50)).await;
}

fn vsock_listener(port: u32) -> Result<VsockListener> {
    VsockListener::bind(VsockAddr::new(VMADDR_CID_ANY, port))
        .map_err(AgentError::io(format!("listening on vsock port {port}")))
}

fn unix_listener(path: &Path) -> Result<UnixListener> {
    let _ = std::fs::remove_file(path);
    UnixListener::bind(path).map_err(AgentError::io(format!("listening on {}", path.display())))
}

/// Reads `CONNECT <port>`, answers `OK <port>` and routes the stream; closes it (as husk-vmm
/// does) when the line is bad or nothing serves the port.
async fn hybrid_handshake(
    sb: Arc<Sandbox>,
    rpc: mpsc::Sender<std::io::Result<Conn>>,
    mut s: tokio::net::UnixStream,
) {
    let line =
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, read_line(&mut s, hybrid::MAX_LINE)).await {
            Ok(Ok(l)) => l,
            _ => return,
        };
    let port = match hybrid::parse_connect(&line) {
        Ok(p @ (AGENT_PORT | STDIO_PORT | FORWARD_PORT)) => p,
        Ok(p) => {
            tracing::debug!(port = p, "hybrid connect to a port nobody serves");
            return;
        }
        Err(e) => {
            tracing::debug!(error = %e, "bad hybrid handshake");
            return;
        }
    };
    if s.write_all(hybrid::ok_line(port).as_bytes()).await.is_err() {
        return;
    }
    match port {
        AGENT_PORT => {
            let _ = rpc.send(Ok(Conn::Unix(s))).await;
        }
        FORWARD_PORT => forward::handle(Conn::Unix(s)).await,
        _ => attach::handle(sb, Conn::Unix(s)).await,
    }
}

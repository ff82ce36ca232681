//! CRI port forwarding into the VM, the host's half. containerd serves `PortForward` (what
//! `kubectl port-forward` uses) by dialling `localhost:<port>` inside the pod's network namespace
//! on the host, but a husk pod's processes listen in the guest. So when the VM is up the shim
//! binds a listener on that namespace's `127.0.0.1` and has the namespace's NAT send every other
//! IPv4 loopback TCP port there (`iptables -t nat ... -j REDIRECT`; the rule lives and dies with
//! the namespace). containerd dials `tcp4 localhost` first and `tcp6` only when that fails,
//! which it then never does, so no IPv6 listener is needed: a server bound to the guest's `::1`
//! alone is reached by the agent's fallback to the other family. Each
//! connection's original port (`SO_ORIGINAL_DST`) goes to the agent on its own vsock stream
//! ([`husk_protocol::forward`]), which connects to that port on the guest's loopback; the two
//! streams are spliced, each direction's end passed on (half-close), until both ended. The
//! listeners close when the VM ends. The guest's half is `agent/src/server/forward.rs`.

use std::io;
use std::mem::MaybeUninit;
use std::net::{Ipv4Addr, SocketAddr, TcpListener as StdListener};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use husk_protocol::client::read_line;
use husk_protocol::forward::{parse_answer, Family, Request, MAX_LINE};
use husk_protocol::ports::FORWARD_PORT;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream, UnixStream};
use tokio::sync::watch;

use super::{netns, NetError};
use crate::agent::hybrid_connect;
use crate::vm::VmGone;

/// `SO_ORIGINAL_DST` (`linux/netfilter_ipv4.h`), at `SOL_IP`.
const SO_ORIGINAL_DST: libc::c_int = 80;

/// How long the agent may take to answer a request.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(15);

/// Why port forwarding could not be set up for a pod.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// Entering the namespace failed.
    #[error(transparent)]
    Netns(#[from] NetError),
    /// The loopback listener could not be bound.
    #[error("binding {addr} in the pod's network namespace: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The redirect could not be installed.
    #[error(
        "iptables in the pod's network namespace failed: {detail} (port forwarding needs \
             iptables with its nat table and REDIRECT target on the node)"
    )]
    Redirect {
        /// Its exit and stderr, or why it did not run.
        detail: String,
    },
}

/// The iptables arguments that send every IPv4 loopback TCP port but `port` to `port`.
pub fn redirect_args(port: u16) -> Vec<String> {
    let port = port.to_string();
    [
        "-w",
        "5",
        "-t",
        "nat",
        "-A",
        "OUTPUT",
        "-o",
        "lo",
        "-p",
        "tcp",
        "-d",
        "127.0.0.0/8",
        "!",
        "--dport",
        &port,
        "-j",
        "REDIRECT",
        "--to-ports",
        &port,
    ]
    .map(String::from)
    .to_vec()
}

/// Binds the loopback listener and installs its redirect; runs inside the namespace.
fn listen() -> Result<StdListener, ForwardError> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    let bind = |source| ForwardError::Bind { addr, source };
    let l = StdListener::bind(addr).map_err(bind)?;
    let port = l.local_addr().map_err(bind)?.port();
    l.set_nonblocking(true).map_err(bind)?;
    // A child forked from this thread is in the thread's (the pod's) network namespace.
    let out = Command::new("iptables")
        .args(redirect_args(port))
        .output()
        .map_err(|e| ForwardError::Redirect {
            detail: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(ForwardError::Redirect {
            detail: format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    Ok(l)
}

/// Starts forwarding for the pod whose network namespace is `netns`, into the VM whose vsock
/// socket is `vsock`, until `gone` says the VM ended.
pub async fn start(
    netns: &Path,
    vsock: PathBuf,
    gone: watch::Receiver<Option<VmGone>>,
) -> Result<(), ForwardError> {
    let l = netns::run_in_async(netns, || Ok(listen())).await??;
    let l = TcpListener::from_std(l).map_err(|source| ForwardError::Bind {
        addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        source,
    })?;
    tokio::spawn(serve(l, vsock, gone));
    Ok(())
}

/// [`start`] in the background: a pod without port forwarding still runs (`kubectl
/// port-forward` then fails, and the shim's log says why).
pub fn spawn(netns: PathBuf, vsock: PathBuf, gone: watch::Receiver<Option<VmGone>>) {
    tokio::spawn(async move {
        if let Err(e) = start(&netns, vsock, gone).await {
            tracing::warn!("port forwarding into the VM is off: {e}");
        }
    });
}

/// Accepts until the VM ends.
async fn serve(l: TcpListener, vsock: PathBuf, mut gone: watch::Receiver<Option<VmGone>>) {
    loop {
        if gone.borrow().is_some() {
            return;
        }
        tokio::select! {
            accepted = l.accept() => match accepted {
                Ok((client, _)) => {
                    tokio::spawn(forward_one(client, vsock.clone()));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "port forwarding: accept");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            changed = gone.changed() => if changed.is_err() {
                return;
            },
        }
    }
}

/// Carries one connection into the guest.
async fn forward_one(mut client: TcpStream, vsock: PathBuf) {
    let port = match original_port(&client) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(error = %e, "port forwarding: the connection's original port");
            return;
        }
    };
    let req = Request {
        family: Family::V4,
        port,
    };
    let mut guest = match open(&vsock, req).await {
        Ok(s) => s,
        Err(e) => {
            tracing::info!(port, "port forwarding: {e}");
            return;
        }
    };
    match tokio::io::copy_bidirectional(&mut client, &mut guest).await {
        Ok((up, down)) => tracing::debug!(port, up, down, "forwarded stream ended"),
        Err(e) => tracing::debug!(port, error = %e, "forwarded stream broke off"),
    }
}

/// A vsock stream to the agent, connected to `req`'s port in the guest.
async fn open(vsock: &Path, req: Request) -> io::Result<UnixStream> {
    let mut s = hybrid_connect(vsock, FORWARD_PORT).await?;
    s.write_all(req.line().as_bytes()).await?;
    let line = tokio::time::timeout(ANSWER_TIMEOUT, read_line(&mut s, MAX_LINE + 1))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "the agent did not answer"))??;
    parse_answer(&line).map_err(|e| io::Error::new(io::ErrorKind::ConnectionRefused, e))?;
    Ok(s)
}

/// The port the client dialled before the redirect.
fn original_port(s: &TcpStream) -> io::Result<u16> {
    let mut addr = MaybeUninit::<libc::sockaddr_in>::zeroed();
    let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: `addr` is valid for writes of `len` bytes, the size of a sockaddr_in, and `len`
    // is a valid in/out length; the kernel writes at most `len` bytes.
    let r = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_IP,
            SO_ORIGINAL_DST,
            addr.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: zero-initialised and possibly filled by the kernel: valid either way.
    Ok(u16::from_be(unsafe { addr.assume_init() }.sin_port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_loopback_port_but_the_listeners_goes_to_it() {
        let v4 = redirect_args(40123).join(" ");
        assert_eq!(
            v4,
            "-w 5 -t nat -A OUTPUT -o lo -p tcp -d 127.0.0.0/8 ! --dport 40123 -j REDIRECT \
             --to-ports 40123"
        );
    }

    #[tokio::test]
    async fn a_connection_that_was_not_redirected_has_no_original_port() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let _c = TcpStream::connect(addr).await.unwrap();
        let (s, _) = l.accept().await.unwrap();
        // Without conntrack NAT the kernel has no original destination (ENOENT), or, where
        // conntrack tracks loopback, the destination itself.
        match original_port(&s) {
            Ok(p) => assert_eq!(p, addr.port()),
            Err(e) => assert_eq!(e.raw_os_error(), Some(libc::ENOENT), "{e}"),
        }
    }
}

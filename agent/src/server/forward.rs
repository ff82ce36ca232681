//! CRI port forwarding, the guest's half: a connection on
//! [`FORWARD_PORT`](husk_protocol::ports::FORWARD_PORT) names a loopback port
//! ([`husk_protocol::forward`]); the agent connects to it in the guest's root network namespace,
//! which is the pod's, answers, and copies both ways until both directions ended, passing each
//! end on (half-close). The shim's half is `shim/src/network/forward.rs`.
//!
//! A port nothing listens on in the family the client used is tried in the other one, as
//! containerd does under runc (IPv4 `localhost`, then IPv6): the host's redirect catches every
//! IPv4 loopback connection, so a server bound to `::1` alone is reached this way.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use husk_protocol::forward::{err_line, Family, Request, MAX_LINE, OK_LINE};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::conn::{read_line, Conn};

/// How long the shim may take to send its request line.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long connecting to the port in the guest may take (it is the guest's own loopback).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves one forwarded stream.
pub async fn handle(mut conn: Conn) {
    let req = match tokio::time::timeout(REQUEST_TIMEOUT, read_line(&mut conn, MAX_LINE)).await {
        Ok(Ok(line)) => match std::str::from_utf8(&line)
            .map_err(|_| "the request is not UTF-8".to_string())
            .and_then(|l| Request::parse(l).map_err(|e| e.to_string()))
        {
            Ok(r) => r,
            Err(why) => return refuse(conn, &why).await,
        },
        Ok(Err(e)) => return refuse(conn, &format!("reading the request: {e}")).await,
        Err(_) => return refuse(conn, "no request within 10 s").await,
    };
    let v4 = SocketAddr::from((Ipv4Addr::LOCALHOST, req.port));
    let v6 = SocketAddr::from((Ipv6Addr::LOCALHOST, req.port));
    let (first, other) = match req.family {
        Family::V4 => (v4, v6),
        Family::V6 => (v6, v4),
    };
    let (addr, mut tcp) = match connect(first).await {
        Ok(s) => (first, s),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => match connect(other).await {
            Ok(s) => (other, s),
            Err(e2) => {
                return refuse(
                    conn,
                    &format!("connecting to {first}: {e}; to {other}: {e2}"),
                )
                .await
            }
        },
        Err(e) => return refuse(conn, &format!("connecting to {first}: {e}")).await,
    };
    if conn.write_all(OK_LINE.as_bytes()).await.is_err() {
        return;
    }
    match tokio::io::copy_bidirectional(&mut conn, &mut tcp).await {
        Ok((up, down)) => tracing::debug!(%addr, up, down, "forwarded stream ended"),
        Err(e) => tracing::debug!(%addr, error = %e, "forwarded stream broke off"),
    }
}

async fn connect(addr: SocketAddr) -> std::io::Result<TcpStream> {
    tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "timed out"))?
}

async fn refuse(mut conn: Conn, why: &str) {
    tracing::debug!(why, "port-forward request refused");
    let _ = conn.write_all(err_line(why).as_bytes()).await;
    let _ = conn.shutdown().await;
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt;
    use tokio::net::{TcpListener, UnixStream};

    use super::*;

    /// A request through `handle` on one end of a socket pair; returns the host's end.
    async fn request(line: &str) -> UnixStream {
        let (host, guest) = UnixStream::pair().unwrap();
        tokio::spawn(handle(Conn::Unix(guest)));
        let mut host = host;
        host.write_all(line.as_bytes()).await.unwrap();
        host
    }

    async fn answer(s: &mut UnixStream) -> String {
        let line = read_line(s, MAX_LINE).await.unwrap();
        String::from_utf8(line).unwrap()
    }

    #[tokio::test]
    async fn a_stream_reaches_the_port_and_each_end_is_passed_on() {
        let server = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = server.local_addr().unwrap().port();
        // An echo server that answers after its client's end and then ends its own side.
        tokio::spawn(async move {
            let (mut s, _) = server.accept().await.unwrap();
            let mut got = Vec::new();
            s.read_to_end(&mut got).await.unwrap();
            s.write_all(&got).await.unwrap();
        });
        let mut host = request(&format!("TCP4 {port}\n")).await;
        assert_eq!(answer(&mut host).await, OK_LINE);
        host.write_all(b"ping").await.unwrap();
        host.shutdown().await.unwrap();
        let mut back = Vec::new();
        host.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"ping");
    }

    #[tokio::test]
    async fn a_port_nobody_serves_and_a_bad_request_are_refused_with_a_reason() {
        let free = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = free.local_addr().unwrap().port();
        drop(free);
        let mut host = request(&format!("TCP4 {port}\n")).await;
        let a = answer(&mut host).await;
        assert!(a.starts_with("ERR connecting to 127.0.0.1:"), "{a}");
        let mut host = request("TCP4 0\n").await;
        let a = answer(&mut host).await;
        assert!(a.starts_with("ERR bad port-forward request"), "{a}");
    }
}

//! A process's stdio streams to the guest: one vsock connection per stream (port 1025), opened
//! with the `husk-stdio` hello (`protocol::stdio`), and the copy loops between them and the
//! host side.
//!
//! Output: guest stream → host sink until the agent closes the stream (it does so only after the
//! process exited and everything it wrote was sent). A sink that fails (the reader went away)
//! is dropped and the stream is still read to its end, so the guest never blocks on it.
//! Input: host FIFO → guest stream. As with runc, the process's stdin reaches end-of-file only
//! with CloseIO (containerd's clients signal the end of input that way: CRI does, `ctr` never
//! does, and a `cat` under runc then never ends either); the FIFO's own end-of-file just stops
//! the copy. CloseIO half-closes the guest stream, which is the process's stdin EOF.

use husk_protocol::client::read_line;
use husk_protocol::stdio::{self, StdioHello, StreamKind};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::watch;

use super::IoError;
use crate::agent::Agent;

const BUF: usize = 32 * 1024;

/// Connects one stream of process `(cid, eid)` (`eid` empty for the init process).
pub async fn open(
    agent: &Agent,
    cid: &str,
    eid: &str,
    kind: StreamKind,
) -> Result<UnixStream, IoError> {
    // A connection that failed (`transport`) may be the VM's end; a refusal is the agent's.
    let failed = |message: String, transport: bool| IoError::Stream {
        kind,
        process: if eid.is_empty() {
            cid.to_string()
        } else {
            format!("{cid}/{eid}")
        },
        message,
        transport,
    };
    let fail = |message: String| failed(message, true);
    let mut s = agent
        .stdio_connection()
        .await
        .map_err(|e| fail(format!("connecting to vsock port 1025: {e}")))?;
    let hello = StdioHello {
        container_id: cid.to_string(),
        exec_id: eid.to_string(),
        kind,
    };
    s.write_all(hello.line().as_bytes())
        .await
        .map_err(|e| fail(format!("sending the hello: {e}")))?;
    let line = read_line(&mut s, stdio::MAX_LINE)
        .await
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => {
                fail("the agent closed the stream without answering".into())
            }
            _ => fail(format!("reading the answer: {e}")),
        })?;
    stdio::parse_answer(&line)
        .map_err(|why| failed(format!("the agent refused it: {why}"), false))?;
    Ok(s)
}

/// Copies `from` to the sink until `from` ends. The sink is awaited lazily (a FIFO whose reader
/// is not there yet) and dropped on its first error.
pub async fn copy_out<R, W, F>(mut from: R, sink: F)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
    F: std::future::Future<Output = Option<W>>,
{
    let mut to = sink.await;
    let mut buf = vec![0u8; BUF];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if let Some(w) = to.as_mut() {
            if let Err(e) = w.write_all(&buf[..n]).await {
                tracing::debug!("output sink failed ({e}); discarding the rest");
                to = None;
            }
        }
    }
    if let Some(mut w) = to {
        let _ = w.flush().await;
    }
}

/// Copies the host's stdin to the guest stream until the host side ends; half-closes the stream
/// once `closed` turns true (CloseIO, or the process went away).
pub async fn copy_in<R, F>(source: F, mut to: UnixStream, mut closed: watch::Receiver<bool>)
where
    R: AsyncRead + Unpin,
    F: std::future::Future<Output = Option<R>>,
{
    let from = tokio::select! {
        r = source => r,
        _ = closed.wait_for(|c| *c) => None,
    };
    if let Some(mut from) = from {
        let mut buf = vec![0u8; BUF];
        loop {
            let n = tokio::select! {
                r = from.read(&mut buf) => match r {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                },
                _ = closed.wait_for(|c| *c) => break,
            };
            if to.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
    }
    let _ = closed.wait_for(|c| *c).await;
    let _ = to.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn copy_out_drains_even_when_the_sink_breaks() {
        let (mut guest, host) = UnixStream::pair().unwrap();
        let (sink_w, mut sink_r) = UnixStream::pair().unwrap();
        let copier = tokio::spawn(copy_out(host, async move { Some(sink_w) }));
        guest.write_all(b"abc").await.unwrap();
        let mut got = [0u8; 3];
        sink_r.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"abc");
        drop(sink_r);
        guest.write_all(&vec![b'x'; 200_000]).await.unwrap();
        drop(guest);
        tokio::time::timeout(std::time::Duration::from_secs(5), copier)
            .await
            .expect("copy_out must finish at the stream's end")
            .unwrap();
    }

    #[tokio::test]
    async fn copy_in_half_closes_only_on_close() {
        let (mut guest, host) = UnixStream::pair().unwrap();
        let (mut src_w, src_r) = UnixStream::pair().unwrap();
        let (tx, rx) = watch::channel(false);
        let t = tokio::spawn(copy_in(async move { Some(src_r) }, host, rx));
        src_w.write_all(b"in").await.unwrap();
        drop(src_w);
        let mut got = [0u8; 2];
        guest.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"in");
        let more = tokio::time::timeout(
            std::time::Duration::from_millis(200),
            guest.read(&mut [0u8; 1]),
        )
        .await;
        assert!(
            more.is_err(),
            "the host FIFO's EOF alone must not end stdin (runc semantics)"
        );
        tx.send(true).unwrap();
        assert_eq!(guest.read(&mut [0u8; 1]).await.unwrap(), 0);
        t.await.unwrap();

        let (mut guest, host) = UnixStream::pair().unwrap();
        let (_src_w, src_r) = UnixStream::pair().unwrap();
        let (tx, rx) = watch::channel(false);
        let t = tokio::spawn(copy_in(async move { Some(src_r) }, host, rx));
        tx.send(true).unwrap();
        let mut got = Vec::new();
        guest.read_to_end(&mut got).await.unwrap();
        assert!(got.is_empty());
        t.await.unwrap();
    }
}

//! The copy loops between a process's pipes (or pty) and its stream connections.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Chunk size: one pipe buffer's worth of data per write.
const CHUNK: usize = 64 * 1024;

/// Copies a process's output to its stream until the output ends, then shuts the stream down
/// (the client's EOF). A chunk is read only after the previous one was written (back-pressure).
/// When the client goes away the output is still drained, so the process never blocks on a pipe
/// nobody reads. Returns the bytes delivered.
pub async fn pump_out<R, W>(mut src: R, mut dst: Option<W>) -> u64
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; CHUNK];
    let mut sent = 0u64;
    loop {
        let n = match src.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::debug!(error = %e, "reading process output");
                break;
            }
        };
        if let Some(w) = dst.as_mut() {
            match w.write_all(&buf[..n]).await {
                Ok(()) => sent += n as u64,
                Err(e) => {
                    tracing::debug!(error = %e, "output stream closed by the client; draining");
                    dst = None;
                }
            }
        }
    }
    if let Some(mut w) = dst {
        let _ = w.flush().await;
        let _ = w.shutdown().await;
    }
    sent
}

/// Copies a stream's bytes to a process's stdin until the client half-closes (or the process
/// stops reading); dropping `dst` then closes the pipe, which is the process's EOF.
pub async fn pump_in<R, W>(mut src: R, mut dst: W) -> u64
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; CHUNK];
    let mut sent = 0u64;
    loop {
        let n = match src.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if dst.write_all(&buf[..n]).await.is_err() {
            break;
        }
        sent += n as u64;
    }
    let _ = dst.shutdown().await;
    sent
}

#[cfg(test)]
mod tests {
    use tokio::net::UnixStream;

    use super::*;

    #[tokio::test]
    async fn everything_is_delivered_then_eof() {
        let (mut proc_side, agent_side) = UnixStream::pair().unwrap();
        let (stream, mut client) = UnixStream::pair().unwrap();
        let data: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
        let expected = data.clone();
        let writer = tokio::spawn(async move {
            proc_side.write_all(&data).await.unwrap();
        });
        let pump = tokio::spawn(pump_out(agent_side, Some(stream)));
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        writer.await.unwrap();
        assert_eq!(pump.await.unwrap(), expected.len() as u64);
        assert_eq!(got, expected);
    }

    #[tokio::test]
    async fn a_vanished_client_does_not_block_the_process() {
        let (mut proc_side, agent_side) = UnixStream::pair().unwrap();
        let (stream, client) = UnixStream::pair().unwrap();
        drop(client);
        let pump = tokio::spawn(pump_out(agent_side, Some(stream)));
        proc_side.write_all(&vec![7u8; 500_000]).await.unwrap();
        drop(proc_side);
        pump.await.unwrap();
    }

    #[tokio::test]
    async fn stdin_half_close_is_the_process_eof() {
        let (mut client, stream) = UnixStream::pair().unwrap();
        let (pipe_w, mut proc_r) = UnixStream::pair().unwrap();
        let pump = tokio::spawn(pump_in(stream, pipe_w));
        client.write_all(b"hello").await.unwrap();
        client.shutdown().await.unwrap();
        let mut got = Vec::new();
        proc_r.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"hello");
        assert_eq!(pump.await.unwrap(), 5);
    }
}

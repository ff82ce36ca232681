//! The copy loops between a process's pipes (or pty) and its stream connections.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Chunk size: one pipe buffer's worth of data per write.
const CHUNK: usize = 64 * 1024;
/// The smallest write [`write_all_to_stream`] falls back to.
const MIN_PIECE: usize = 4096;
/// How long [`write_all_to_stream`] waits for memory when even [`MIN_PIECE`] does not fit.
const ENOMEM_PATIENCE: Duration = Duration::from_secs(5);

/// Writes all of `data` to a vsock stream. The guest kernel allocates one contiguous buffer per
/// vsock packet, up to 64 KiB plus its header: an order-5 allocation that fails with ENOMEM
/// when the guest's memory is fragmented. That is not the client going away: write smaller
/// pieces (down to a page, which the allocator does not fail), and wait a little if even
/// those do not fit.
pub async fn write_all_to_stream<W: AsyncWrite + Unpin>(
    w: &mut W,
    mut data: &[u8],
) -> std::io::Result<()> {
    let mut piece = data.len().max(1);
    let mut waited = Duration::ZERO;
    while !data.is_empty() {
        match w.write(&data[..piece.min(data.len())]).await {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == std::io::ErrorKind::OutOfMemory => {
                if piece > MIN_PIECE {
                    piece = (piece / 2).max(MIN_PIECE);
                } else if waited < ENOMEM_PATIENCE {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    waited += Duration::from_millis(10);
                } else {
                    return Err(e);
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

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
            match write_all_to_stream(w, &buf[..n]).await {
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

    /// A stream whose kernel cannot allocate a packet bigger than `fits` for the first
    /// `refusals` writes (ENOMEM), and takes at most `fits` bytes a write.
    struct Fragmented {
        fits: usize,
        refusals: usize,
        got: Vec<u8>,
    }

    impl AsyncWrite for Fragmented {
        fn poll_write(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            if buf.len() > self.fits || self.refusals > 0 {
                self.refusals = self.refusals.saturating_sub(1);
                return std::task::Poll::Ready(Err(std::io::Error::from_raw_os_error(
                    libc::ENOMEM,
                )));
            }
            self.got.extend_from_slice(buf);
            std::task::Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
        fn poll_shutdown(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
    }

    #[tokio::test(start_paused = true)]
    async fn enomem_from_the_guest_kernel_means_smaller_writes_not_a_closed_stream() {
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 253) as u8).collect();
        let mut w = Fragmented {
            fits: 8192,
            refusals: 0,
            got: Vec::new(),
        };
        write_all_to_stream(&mut w, &data).await.unwrap();
        assert_eq!(w.got, data);
        // Not even a page fits for a while: it waits, then gets through.
        let mut w = Fragmented {
            fits: 8192,
            refusals: 20,
            got: Vec::new(),
        };
        write_all_to_stream(&mut w, &data[..5000]).await.unwrap();
        assert_eq!(w.got, &data[..5000]);
        // Never: the error comes back after the wait.
        let mut w = Fragmented {
            fits: 0,
            refusals: 0,
            got: Vec::new(),
        };
        let e = write_all_to_stream(&mut w, &data).await.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::OutOfMemory);
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

//! One accepted connection, whatever carried it: a vsock stream in the guest, a Unix stream (after
//! the hybrid handshake) in host mode. Both ttrpc and the stdio streams use it.

use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::UnixStream;
use tokio_vsock::VsockStream;

/// A byte stream to the host.
#[derive(Debug)]
pub enum Conn {
    /// Host mode, or tests.
    Unix(UnixStream),
    /// The guest's vsock.
    Vsock(VsockStream),
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Unix(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Vsock(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Conn::Unix(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Vsock(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Unix(s) => Pin::new(s).poll_flush(cx),
            Conn::Vsock(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Unix(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Vsock(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// Reads one `\n`-terminated line of at most `max` bytes, byte by byte, so nothing after the
/// newline is consumed (those bytes already belong to the stream's payload).
pub async fn read_line<R: AsyncRead + Unpin>(r: &mut R, max: usize) -> std::io::Result<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let mut line = Vec::with_capacity(32);
    let mut byte = [0u8; 1];
    while line.len() < max {
        if r.read(&mut byte).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        line.push(byte[0]);
        if byte[0] == b'\n' {
            return Ok(line);
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!("line longer than {max} bytes"),
    ))
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;

    use super::*;

    #[tokio::test]
    async fn a_line_is_read_without_running_ahead() {
        let (mut a, mut b) = UnixStream::pair().unwrap();
        a.write_all(b"CONNECT 1024\npayload").await.unwrap();
        assert_eq!(read_line(&mut b, 32).await.unwrap(), b"CONNECT 1024\n");
        let mut rest = [0u8; 7];
        tokio::io::AsyncReadExt::read_exact(&mut b, &mut rest)
            .await
            .unwrap();
        assert_eq!(&rest, b"payload");
        a.write_all(&[b'x'; 40]).await.unwrap();
        assert!(read_line(&mut b, 32).await.is_err());
    }
}

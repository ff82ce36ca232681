//! The host's end of a connection to a guest vsock port, written once for the shim and the
//! tests: husk-vmm's hybrid-vsock handshake (`CONNECT <port>` answered by `OK <host port>`) and
//! the bounded line reader every handshake on top of it uses (the stdio hello's answer, port
//! forwarding's). Lines are read byte by byte and never past their newline: every byte after it
//! is the stream's.

use std::io::{self, Read, Write};
use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use crate::hybrid;

/// Reads one line of at most `max` bytes (its newline included) and returns it without the
/// newline. The stream ending first is `UnexpectedEof`; a longer line is `InvalidData`.
pub async fn read_line<S: AsyncRead + Unpin>(s: &mut S, max: usize) -> io::Result<String> {
    let mut line = Vec::new();
    loop {
        let mut b = [0u8; 1];
        if s.read(&mut b).await? == 0 {
            return Err(eof());
        }
        if let Some(done) = push(&mut line, b[0], max)? {
            return Ok(done);
        }
    }
}

/// [`read_line`] on a blocking stream.
pub fn read_line_blocking<S: Read>(s: &mut S, max: usize) -> io::Result<String> {
    let mut line = Vec::new();
    loop {
        let mut b = [0u8; 1];
        if s.read(&mut b)? == 0 {
            return Err(eof());
        }
        if let Some(done) = push(&mut line, b[0], max)? {
            return Ok(done);
        }
    }
}

/// Adds `b` to `line`: the finished line at the newline, an error past `max`.
fn push(line: &mut Vec<u8>, b: u8, max: usize) -> io::Result<Option<String>> {
    if b == b'\n' {
        return Ok(Some(String::from_utf8_lossy(line).into_owned()));
    }
    line.push(b);
    if line.len() >= max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("line longer than {max} bytes"),
        ));
    }
    Ok(None)
}

fn eof() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "the stream ended before the end of the line",
    )
}

/// What a handshake answer's failure means: husk-vmm closes the connection when nothing
/// listens on the guest port (`ConnectionRefused`); an answer that is not `OK <port>` is
/// `InvalidData`.
fn handshake_error(port: u32, e: io::Error) -> io::Error {
    match e.kind() {
        io::ErrorKind::UnexpectedEof => io::Error::new(
            io::ErrorKind::ConnectionRefused,
            format!("nothing listens on guest vsock port {port} (yet)"),
        ),
        _ => e,
    }
}

fn check_ok(line: &str) -> io::Result<()> {
    hybrid::parse_ok(line.as_bytes())
        .map(|_| ())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Connects to guest vsock `port` through husk-vmm's hybrid socket `socket`; the stream returned
/// carries only the guest's data.
pub async fn hybrid_connect(socket: &Path, port: u32) -> io::Result<UnixStream> {
    let mut s = UnixStream::connect(socket).await?;
    s.write_all(hybrid::connect_line(port).as_bytes()).await?;
    let line = read_line(&mut s, hybrid::MAX_LINE)
        .await
        .map_err(|e| handshake_error(port, e))?;
    check_ok(&line)?;
    Ok(s)
}

/// [`hybrid_connect`] for callers without a runtime; `timeout` bounds the handshake's answer,
/// and the stream returned has no timeout.
pub fn hybrid_connect_blocking(
    socket: &Path,
    port: u32,
    timeout: Duration,
) -> io::Result<std::os::unix::net::UnixStream> {
    let mut s = std::os::unix::net::UnixStream::connect(socket)?;
    s.set_read_timeout(Some(timeout))?;
    s.write_all(hybrid::connect_line(port).as_bytes())?;
    let line =
        read_line_blocking(&mut s, hybrid::MAX_LINE).map_err(|e| handshake_error(port, e))?;
    check_ok(&line)?;
    s.set_read_timeout(None)?;
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_stops_at_its_newline_and_is_bounded() {
        let mut input: &[u8] = b"OK 1073741824\nguest data";
        assert_eq!(read_line_blocking(&mut input, 32).unwrap(), "OK 1073741824");
        assert_eq!(input, b"guest data", "nothing past the newline was read");

        let mut long: &[u8] = &[b'x'; 64];
        let e = read_line_blocking(&mut long, 32).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
        // 31 bytes and the newline fit in 32.
        let mut fits = [b'y'; 32];
        fits[31] = b'\n';
        assert_eq!(read_line_blocking(&mut &fits[..], 32).unwrap().len(), 31);

        let mut cut: &[u8] = b"OK 5";
        let e = read_line_blocking(&mut cut, 32).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[tokio::test]
    async fn the_async_reader_agrees() {
        let mut input: &[u8] = b"ok\nrest";
        assert_eq!(read_line(&mut input, 8).await.unwrap(), "ok");
        assert_eq!(input, b"rest");
        let mut long: &[u8] = b"0123456789\n";
        assert!(read_line(&mut long, 8).await.is_err());
    }

    fn vmm(answer: &'static [u8]) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vsock.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        std::thread::spawn(move || {
            let (mut c, _) = listener.accept().unwrap();
            let request = read_line_blocking(&mut c, hybrid::MAX_LINE).unwrap();
            assert_eq!(request, "CONNECT 1024");
            c.write_all(answer).unwrap();
        });
        (dir, path)
    }

    #[test]
    fn the_handshake_is_answered_refused_or_garbled() {
        let (_d, path) = vmm(b"OK 1073741824\nhello");
        let mut s = hybrid_connect_blocking(&path, 1024, Duration::from_secs(5)).unwrap();
        let mut rest = String::new();
        s.read_to_string(&mut rest).unwrap();
        assert_eq!(rest, "hello");

        let (_d, path) = vmm(b"");
        let e = hybrid_connect_blocking(&path, 1024, Duration::from_secs(5)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused, "{e}");
        assert!(e.to_string().contains("port 1024"), "{e}");

        let (_d, path) = vmm(b"NO\n");
        let e = hybrid_connect_blocking(&path, 1024, Duration::from_secs(5)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
    }

    #[tokio::test]
    async fn the_async_handshake_agrees() {
        let (_d, path) = vmm(b"OK 7\n");
        hybrid_connect(&path, 1024).await.unwrap();
        let (_d, path) = vmm(b"");
        let e = hybrid_connect(&path, 1024).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused, "{e}");
    }
}

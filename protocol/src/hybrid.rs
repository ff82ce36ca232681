//! The hybrid-vsock handshake: how a host process reaches a guest vsock port through the Unix
//! socket of `husk-vmm`'s virtio-vsock device (the protocol Firecracker and Cloud Hypervisor
//! use).
//!
//! The host connects to the VM's vsock socket and sends one line, `CONNECT <port>\n`; when a
//! guest program listens on that vsock port the VMM answers `OK <host port>\n` and from then on
//! the Unix stream carries the connection's bytes. When nothing listens, the VMM closes the
//! stream without answering. Guest-initiated connections go the other way: a guest connecting
//! to the host (CID 2) on port P reaches whatever listens on the Unix socket `<socket>_<P>`,
//! if the VM configuration allows P.
//!
//! Only pure parsing and formatting lives here (no I/O), so the VMM, the shim and tests share
//! one definition. Lines are short and bounded: a reader must give up after
//! [`MAX_LINE`] bytes without a newline. Read the `OK` reply byte by byte (or with a reader
//! that cannot run ahead): bytes after the newline are already the guest's data.

/// The host's context id: guest-initiated connections are addressed to it.
pub const VSOCK_HOST_CID: u32 = 2;

/// Longest handshake line, newline included (`CONNECT 4294967294\n` is 19 bytes).
pub const MAX_LINE: usize = 32;

/// A handshake line that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HybridError {
    /// No newline within [`MAX_LINE`] bytes.
    #[error("handshake line longer than {MAX_LINE} bytes")]
    TooLong,
    /// Not valid UTF-8 / ASCII.
    #[error("handshake line is not text")]
    NotText,
    /// The keyword was not the expected one.
    #[error("expected `{expected} <port>`, got {got:?}")]
    Keyword {
        /// The keyword the parser wanted.
        expected: &'static str,
        /// The line as received (trimmed).
        got: String,
    },
    /// The port is missing, not decimal, out of range, or followed by more words.
    #[error("bad vsock port in handshake line {0:?}")]
    Port(String),
}

/// Where the first line of `buf` ends: `Ok(Some(n))` when `buf[..n]` is a complete line
/// (newline included), `Ok(None)` when more bytes are needed, an error when no newline can
/// come within [`MAX_LINE`] bytes.
pub fn line_end(buf: &[u8]) -> Result<Option<usize>, HybridError> {
    match buf.iter().take(MAX_LINE).position(|b| *b == b'\n') {
        Some(i) => Ok(Some(i + 1)),
        None if buf.len() >= MAX_LINE => Err(HybridError::TooLong),
        None => Ok(None),
    }
}

/// Parses `<keyword> <port>` (keyword case-insensitive, trailing newline and spaces allowed).
fn parse_keyword_port(line: &[u8], keyword: &'static str) -> Result<u32, HybridError> {
    if line.len() > MAX_LINE {
        return Err(HybridError::TooLong);
    }
    let text = std::str::from_utf8(line).map_err(|_| HybridError::NotText)?;
    let trimmed = text.trim();
    let mut words = trimmed.split_ascii_whitespace();
    match words.next() {
        Some(w) if w.eq_ignore_ascii_case(keyword) => {}
        _ => {
            return Err(HybridError::Keyword {
                expected: keyword,
                got: trimmed.to_string(),
            })
        }
    }
    let port = words
        .next()
        .filter(|p| p.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|p| p.parse::<u32>().ok())
        .filter(|p| *p != u32::MAX);
    match (port, words.next()) {
        (Some(port), None) => Ok(port),
        _ => Err(HybridError::Port(trimmed.to_string())),
    }
}

/// Parses a host's request line, `CONNECT <port>\n`; returns the guest port.
pub fn parse_connect(line: &[u8]) -> Result<u32, HybridError> {
    parse_keyword_port(line, "CONNECT")
}

/// Parses the VMM's reply line, `OK <port>\n`; returns the host-side port it allocated.
pub fn parse_ok(line: &[u8]) -> Result<u32, HybridError> {
    parse_keyword_port(line, "OK")
}

/// The request line for guest port `port`.
pub fn connect_line(port: u32) -> String {
    format!("CONNECT {port}\n")
}

/// The reply line naming host-side port `port`.
pub fn ok_line(port: u32) -> String {
    format!("OK {port}\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_round_trip() {
        for port in [0, 52, 1024, 1 << 30, u32::MAX - 1] {
            assert_eq!(parse_connect(connect_line(port).as_bytes()), Ok(port));
            assert_eq!(parse_ok(ok_line(port).as_bytes()), Ok(port));
        }
    }

    #[test]
    fn keyword_is_case_insensitive_and_spacing_is_lenient() {
        assert_eq!(parse_connect(b"connect 1024\n"), Ok(1024));
        assert_eq!(parse_connect(b"Connect   7 \n"), Ok(7));
        assert_eq!(parse_connect(b"CONNECT 7"), Ok(7));
        assert_eq!(parse_ok(b"ok 1073741824\n"), Ok(1 << 30));
    }

    #[test]
    fn bad_lines_are_refused_by_kind() {
        type Case<'a> = (&'a [u8], fn(&HybridError) -> bool);
        let cases: [Case; 9] = [
            (b"CONNECT\n", |e| matches!(e, HybridError::Port(_))),
            (b"CONNECT -1\n", |e| matches!(e, HybridError::Port(_))),
            (b"CONNECT +5\n", |e| matches!(e, HybridError::Port(_))),
            (b"CONNECT 4294967295\n", |e| {
                matches!(e, HybridError::Port(_))
            }),
            (b"CONNECT 4294967296\n", |e| {
                matches!(e, HybridError::Port(_))
            }),
            (b"CONNECT 1 2\n", |e| matches!(e, HybridError::Port(_))),
            (b"OK 5\n", |e| matches!(e, HybridError::Keyword { .. })),
            (b"CONNECT \xff\n", |e| matches!(e, HybridError::NotText)),
            (&[b' '; 40], |e| matches!(e, HybridError::TooLong)),
        ];
        for (line, want) in cases {
            let err = parse_connect(line).unwrap_err();
            assert!(want(&err), "{:?}: {err:?}", String::from_utf8_lossy(line));
        }
        assert!(matches!(
            parse_ok(b"CONNECT 5\n"),
            Err(HybridError::Keyword { expected: "OK", .. })
        ));
    }

    #[test]
    fn line_end_is_bounded() {
        assert_eq!(line_end(b"CONN"), Ok(None));
        assert_eq!(line_end(b"OK 5\nrest"), Ok(Some(5)));
        assert_eq!(line_end(&[b'x'; MAX_LINE]), Err(HybridError::TooLong));
        let mut long = vec![b'x'; MAX_LINE - 1];
        long.push(b'\n');
        assert_eq!(line_end(&long), Ok(Some(MAX_LINE)));
    }
}

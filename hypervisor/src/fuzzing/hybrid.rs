//! `hybrid_handshake`: the host's `CONNECT <port>\n` line as the vsock muxer reads it (bytes
//! arriving in pieces, peeked at most [`MAX_LINE`] at a time), and the `OK <port>\n` reply as
//! the shim reads it.

use husk_protocol::hybrid::{connect_line, line_end, ok_line, parse_connect, parse_ok, MAX_LINE};

use super::Input;

/// Input: `u8` how many bytes arrive per step (0 = all at once), then the stream's bytes.
pub fn hybrid_handshake(data: &[u8]) {
    let mut input = Input::new(data);
    let step = usize::from(input.u8());
    let stream = input.rest();
    // The muxer peeks at what has arrived so far and waits for a whole line.
    let mut arrived = if step == 0 { stream.len() } else { 0 };
    loop {
        arrived = arrived.min(stream.len());
        let peeked = &stream[..arrived.min(MAX_LINE)];
        match line_end(peeked) {
            Ok(Some(end)) => {
                assert!(end <= MAX_LINE && end <= peeked.len() && peeked[end - 1] == b'\n');
                check_line(&stream[..end]);
                break;
            }
            Ok(None) => assert!(peeked.len() < MAX_LINE, "no newline within MAX_LINE"),
            Err(_) => {
                assert!(peeked.len() >= MAX_LINE, "refused a short line");
                break;
            }
        }
        if arrived >= stream.len() {
            break;
        }
        arrived += step.max(1);
    }
    // Unframed input straight to the parsers, as a client that skips line_end would pass it.
    let _ = parse_connect(stream);
    let _ = parse_ok(stream);
}

/// A complete line through both parsers; what parses must format back to itself.
fn check_line(line: &[u8]) {
    if let Ok(port) = parse_connect(line) {
        assert_ne!(port, u32::MAX);
        assert_eq!(parse_connect(connect_line(port).as_bytes()), Ok(port));
    }
    if let Ok(port) = parse_ok(line) {
        assert_eq!(parse_ok(ok_line(port).as_bytes()), Ok(port));
    }
}

//! CRI port forwarding's request on the agent's [`FORWARD_PORT`](crate::ports::FORWARD_PORT):
//! the shim opens one vsock connection per TCP stream that reached the pod network namespace's
//! loopback on the host, sends `TCP4 <port>\n` or `TCP6 <port>\n` (the family and port the
//! client dialled), and the agent answers `OK\n` once it is connected to that port on the
//! guest's loopback, or `ERR <reason>\n` and closes. After `OK` the connection carries the
//! stream's bytes both ways, and each direction's end (half-close) is passed on.
//!
//! Pure parsing and formatting; lines are bounded by [`MAX_LINE`] (a reader gives up there).

/// Longest request or answer line, newline included.
pub const MAX_LINE: usize = 128;

/// The address family the client dialled, which the agent dials in the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// `127.0.0.1`.
    V4,
    /// `::1`.
    V6,
}

/// A forwarding request: connect to this loopback port in the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// The family.
    pub family: Family,
    /// The TCP port (never 0).
    pub port: u16,
}

/// A request line that cannot be served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ForwardError {
    /// Not `TCP4 <port>` or `TCP6 <port>` with a port in 1..=65535.
    #[error("bad port-forward request {0:?} (want `TCP4 <port>` or `TCP6 <port>`, port 1-65535)")]
    BadRequest(String),
    /// The agent could not connect, in its words.
    #[error("the guest refused the forwarded connection: {0}")]
    Refused(String),
}

impl Request {
    /// The line the shim sends.
    pub fn line(&self) -> String {
        let f = match self.family {
            Family::V4 => "TCP4",
            Family::V6 => "TCP6",
        };
        format!("{f} {}\n", self.port)
    }

    /// Parses the shim's line (with or without its newline).
    pub fn parse(line: &str) -> Result<Request, ForwardError> {
        let bad = || ForwardError::BadRequest(line.trim_end().chars().take(64).collect());
        let mut words = line.trim_end_matches('\n').split(' ');
        let family = match words.next() {
            Some("TCP4") => Family::V4,
            Some("TCP6") => Family::V6,
            _ => return Err(bad()),
        };
        let port = words
            .next()
            .filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|p| p.parse::<u16>().ok())
            .filter(|p| *p != 0)
            .ok_or_else(bad)?;
        if words.next().is_some() {
            return Err(bad());
        }
        Ok(Request { family, port })
    }
}

/// The agent's answer when it is connected.
pub const OK_LINE: &str = "OK\n";

/// The agent's answer when it is not: one line, cut to fit [`MAX_LINE`].
pub fn err_line(reason: &str) -> String {
    let clean: String = reason
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(MAX_LINE - 6)
        .collect();
    let mut line = format!("ERR {clean}");
    while line.len() > MAX_LINE - 1 {
        line.pop();
    }
    line.push('\n');
    line
}

/// Reads the agent's answer line: `Ok` for `OK`, the reason for `ERR` (the guest's text, bound
/// for the host's logs: at most [`MAX_LINE`] characters, control characters made spaces).
pub fn parse_answer(line: &str) -> Result<(), ForwardError> {
    let line = line.trim_end_matches('\n');
    if line == "OK" {
        return Ok(());
    }
    Err(ForwardError::Refused(
        line.strip_prefix("ERR ")
            .unwrap_or(line)
            .chars()
            .take(MAX_LINE)
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_and_nonsense_is_refused() {
        for r in [
            Request {
                family: Family::V4,
                port: 8080,
            },
            Request {
                family: Family::V6,
                port: 65535,
            },
        ] {
            assert_eq!(Request::parse(&r.line()), Ok(r));
        }
        for bad in [
            "",
            "TCP4",
            "TCP4 0",
            "TCP4 65536",
            "TCP4 +80",
            "UDP4 53",
            "TCP4 80 x",
            "TCP4  80",
        ] {
            assert!(Request::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn answers_are_one_bounded_line() {
        assert_eq!(parse_answer(OK_LINE), Ok(()));
        let long = err_line(&format!("connection refused\n{}", "x".repeat(500)));
        assert!(long.len() <= MAX_LINE && long.ends_with('\n') && long.matches('\n').count() == 1);
        assert!(
            matches!(parse_answer(&long), Err(ForwardError::Refused(r)) if r.starts_with("connection refused"))
        );
    }
}

//! Process stdio over streams (agent.proto, "Stdio streams"): each of a process's stdin, stdout
//! and stderr is its own connection to port 1025, attached before the process starts.
//!
//! - [`pipes`]: the pipes between the agent and a process (the process's ends go to the runner);
//! - [`tty`]: the pty master in terminal mode (async reads/writes, window size);
//! - [`streams`]: the copy loops. Back-pressure: a pipe is read only when the previous chunk was
//!   written to its connection, so a slow client slows the process down instead of growing a
//!   buffer. Output streams are shut down only at the pipe's EOF (or when the exit grace ends).
//!
//! The hello line that binds a new connection to a process's stream is a request handler, with
//! the others in [`crate::server::attach`].

pub mod pipes;
pub mod streams;
pub mod tty;

use husk_protocol::agent::api;
use husk_protocol::stdio::StreamKind;

/// Which streams a process has, as the client asked for them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StdioRequest {
    /// A stdin stream.
    pub stdin: bool,
    /// A stdout stream.
    pub stdout: bool,
    /// A stderr stream (never with `terminal`).
    pub stderr: bool,
    /// A pty: stdout carries its output.
    pub terminal: bool,
}

impl StdioRequest {
    /// From the API message. With a terminal there is no stderr stream.
    pub fn from_api(s: Option<&api::Stdio>) -> Self {
        let Some(s) = s else {
            return StdioRequest::default();
        };
        StdioRequest {
            stdin: s.stdin,
            stdout: s.stdout,
            stderr: s.stderr && !s.terminal,
            terminal: s.terminal,
        }
    }

    /// Whether `kind` is one of the requested streams.
    pub fn wants(&self, kind: StreamKind) -> bool {
        match kind {
            StreamKind::Stdin => self.stdin,
            StreamKind::Stdout => self.stdout,
            StreamKind::Stderr => self.stderr,
        }
    }

    /// The requested streams.
    pub fn kinds(&self) -> impl Iterator<Item = StreamKind> + '_ {
        [StreamKind::Stdin, StreamKind::Stdout, StreamKind::Stderr]
            .into_iter()
            .filter(|k| self.wants(*k))
    }
}

/// Index of a stream in per-process arrays.
pub fn index(kind: StreamKind) -> usize {
    match kind {
        StreamKind::Stdin => 0,
        StreamKind::Stdout => 1,
        StreamKind::Stderr => 2,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_has_no_stderr_stream() {
        let api = api::Stdio {
            stdin: true,
            stdout: true,
            stderr: true,
            terminal: true,
            ..Default::default()
        };
        let r = StdioRequest::from_api(Some(&api));
        assert!(r.wants(StreamKind::Stdout) && !r.wants(StreamKind::Stderr));
        assert_eq!(r.kinds().count(), 2);
        assert_eq!(StdioRequest::from_api(None).kinds().count(), 0);
    }
}

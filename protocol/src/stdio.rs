//! The first line of a stdio stream (agent.proto, "Stdio streams"): which process and which of
//! its streams this connection carries, and the agent's answer. Pure parsing and formatting;
//! both sides bound what they read by [`MAX_LINE`].

use std::fmt;

use crate::ids;

/// Longest hello or answer line, newline included.
pub const MAX_LINE: usize = 256;

const MAGIC: &str = "husk-stdio";

/// One of a process's three standard streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StreamKind {
    /// Host to guest.
    Stdin,
    /// Guest to host (the pty's output in terminal mode).
    Stdout,
    /// Guest to host.
    Stderr,
}

impl StreamKind {
    /// The word used on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            StreamKind::Stdin => "stdin",
            StreamKind::Stdout => "stdout",
            StreamKind::Stderr => "stderr",
        }
    }
}

impl fmt::Display for StreamKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The client's first line: `husk-stdio <container_id> <exec_id|-> <kind>\n`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StdioHello {
    /// The container.
    pub container_id: String,
    /// The exec id; empty for the init process (`-` on the wire).
    pub exec_id: String,
    /// Which stream.
    pub kind: StreamKind,
}

/// A hello line that cannot be accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StdioHelloError {
    /// No newline within [`MAX_LINE`] bytes.
    #[error("stdio hello is longer than {MAX_LINE} bytes or has no newline")]
    TooLong,
    /// Not four words starting with `husk-stdio`.
    #[error("stdio hello {0:?} is not `husk-stdio <container> <exec|-> <stdin|stdout|stderr>`")]
    Malformed(String),
    /// A bad container or exec id.
    #[error("stdio hello: {0}")]
    Id(#[from] ids::IdError),
}

impl StdioHello {
    /// The line to send, newline included.
    pub fn line(&self) -> String {
        let exec = if self.exec_id.is_empty() {
            "-"
        } else {
            &self.exec_id
        };
        format!("{MAGIC} {} {exec} {}\n", self.container_id, self.kind)
    }

    /// Parses a line as read from the stream (with or without its newline).
    pub fn parse(line: &str) -> Result<Self, StdioHelloError> {
        if line.len() > MAX_LINE {
            return Err(StdioHelloError::TooLong);
        }
        let words: Vec<&str> = line.trim_end_matches('\n').split(' ').collect();
        let malformed = || StdioHelloError::Malformed(line.trim_end().to_string());
        let [magic, container, exec, kind] = words.as_slice() else {
            return Err(malformed());
        };
        if *magic != MAGIC {
            return Err(malformed());
        }
        let kind = match *kind {
            "stdin" => StreamKind::Stdin,
            "stdout" => StreamKind::Stdout,
            "stderr" => StreamKind::Stderr,
            _ => return Err(malformed()),
        };
        ids::validate(container)?;
        let exec_id = if *exec == "-" {
            String::new()
        } else {
            ids::validate(exec)?;
            exec.to_string()
        };
        Ok(StdioHello {
            container_id: container.to_string(),
            exec_id,
            kind,
        })
    }
}

/// The agent's answer line: `ok\n` or `error <why>\n`.
pub fn answer_line(result: Result<(), &str>) -> String {
    match result {
        Ok(()) => "ok\n".to_string(),
        Err(why) => {
            // One line, bounded: the reason must not break the framing.
            let mut why: String = why.chars().filter(|c| *c != '\n').collect();
            why.truncate(MAX_LINE - "error \n".len());
            format!("error {why}\n")
        }
    }
}

/// Reads an answer line back: `Ok(())` for `ok`, the reason for `error <why>`.
pub fn parse_answer(line: &str) -> Result<(), String> {
    let line = line.trim_end_matches('\n');
    match line {
        "ok" => Ok(()),
        _ => Err(line.strip_prefix("error ").unwrap_or(line).to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_round_trips_for_init_and_exec() {
        for (exec, kind) in [("", StreamKind::Stdout), ("e1", StreamKind::Stdin)] {
            let h = StdioHello {
                container_id: "c1".into(),
                exec_id: exec.into(),
                kind,
            };
            assert_eq!(StdioHello::parse(&h.line()), Ok(h));
        }
        assert_eq!(
            StdioHello::parse("husk-stdio c1 - stderr\n")
                .unwrap()
                .exec_id,
            ""
        );
    }

    #[test]
    fn bad_hellos_are_refused_by_reason() {
        assert!(matches!(
            StdioHello::parse("husk-stdio c1 - stdwhat\n"),
            Err(StdioHelloError::Malformed(_))
        ));
        assert!(matches!(
            StdioHello::parse("hello c1 - stdin\n"),
            Err(StdioHelloError::Malformed(_))
        ));
        assert!(matches!(
            StdioHello::parse("husk-stdio ../x - stdin\n"),
            Err(StdioHelloError::Id(_))
        ));
        assert_eq!(
            StdioHello::parse(&"x".repeat(300)),
            Err(StdioHelloError::TooLong)
        );
    }

    #[test]
    fn answers_are_one_bounded_line() {
        assert_eq!(parse_answer(&answer_line(Ok(()))), Ok(()));
        let long = format!("no such\nprocess {}", "y".repeat(400));
        let line = answer_line(Err(&long));
        assert!(line.len() <= MAX_LINE && line.ends_with('\n'));
        assert_eq!(line.matches('\n').count(), 1);
        assert!(parse_answer(&line)
            .unwrap_err()
            .starts_with("no suchprocess"));
    }
}

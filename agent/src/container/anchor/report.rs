//! What an anchor tells the agent on its stdout, one line each: its parent reports the anchor's
//! pid (`pid <n>`), the anchor reports the end of its setup (`ready`, `invalid <why>` for a spec
//! the kernel refused, `error <why>` for anything else). The two lines come from two processes,
//! in either order, on one pipe: each goes out in a single write(2) of at most [`MAX_LINE`]
//! bytes, which a pipe keeps whole (PIPE_BUF is 4096), so the lines never interleave.

use std::fmt;

/// The longest report the agent reads.
pub const MAX_REPORT: u64 = 4096;

/// The longest line a process writes, its newline included.
pub const MAX_LINE: usize = 1024;

/// `pid <n>` as one line.
pub fn pid_line(pid: i32) -> String {
    format!("pid {pid}\n")
}

/// How the anchor's setup ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Set up; the anchor now only waits and reaps.
    Ready,
    /// The spec asked for something the kernel refused (InvalidArgument).
    Invalid(String),
    /// Anything else (the message names it).
    Failed(String),
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // One line whatever the message holds: the agent reads lines.
        let one = |s: &str| s.replace(['\n', '\r'], " ");
        match self {
            Outcome::Ready => write!(f, "ready"),
            Outcome::Invalid(why) => write!(f, "invalid {}", one(why)),
            Outcome::Failed(why) => write!(f, "error {}", one(why)),
        }
    }
}

impl Outcome {
    /// The outcome as one line, cut to [`MAX_LINE`] bytes (at a character boundary).
    pub fn line(&self) -> String {
        let mut text = self.to_string();
        if text.len() > MAX_LINE - 1 {
            let mut end = MAX_LINE - 1;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text.truncate(end);
        }
        text.push('\n');
        text
    }
}

/// The report as read so far.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    /// The anchor's pid, as the agent sees it.
    pub pid: Option<i32>,
    /// The end of its setup.
    pub outcome: Option<Outcome>,
}

impl Report {
    /// Takes one line; a line that is none of the above is an error naming it.
    pub fn line(&mut self, line: &str) -> Result<(), String> {
        let line = line.trim_end();
        let (word, rest) = line.split_once(' ').unwrap_or((line, ""));
        match word {
            "pid" => {
                let pid = rest
                    .parse::<i32>()
                    .ok()
                    .filter(|p| *p > 1)
                    .ok_or_else(|| format!("a bad pid line {line:?}"))?;
                self.pid = Some(pid);
            }
            "ready" if rest.is_empty() => self.outcome = Some(Outcome::Ready),
            "invalid" => self.outcome = Some(Outcome::Invalid(rest.into())),
            "error" => self.outcome = Some(Outcome::Failed(rest.into())),
            _ => return Err(format!("an unexpected line {line:?}")),
        }
        Ok(())
    }

    /// Both lines are in, or the setup failed (a failure may come without a pid: the parent
    /// could not fork).
    pub fn complete(&self) -> bool {
        match self.outcome {
            Some(Outcome::Ready) => self.pid.is_some(),
            Some(_) => true,
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_in_either_order() {
        let mut r = Report::default();
        r.line("ready\n").unwrap();
        assert!(!r.complete());
        r.line("pid 42\n").unwrap();
        assert!(r.complete());
        assert_eq!(r.pid, Some(42));
        assert_eq!(r.outcome, Some(Outcome::Ready));
    }

    #[test]
    fn a_failure_is_complete_without_a_pid_and_round_trips() {
        let mut r = Report::default();
        let o = Outcome::Invalid("linux.sysctl \"kernel.x\":\nno such sysctl".into());
        r.line(&o.to_string()).unwrap();
        assert!(r.complete());
        assert_eq!(
            r.outcome,
            Some(Outcome::Invalid(
                "linux.sysctl \"kernel.x\": no such sysctl".into()
            ))
        );
        let mut r = Report::default();
        r.line(&Outcome::Failed("fork: EAGAIN".into()).to_string())
            .unwrap();
        assert_eq!(r.outcome, Some(Outcome::Failed("fork: EAGAIN".into())));
    }

    #[test]
    fn lines_are_whole_and_short() {
        let long = Outcome::Failed("é".repeat(2000));
        let line = long.line();
        assert!(
            line.len() <= MAX_LINE && line.ends_with('\n'),
            "{}",
            line.len()
        );
        assert_eq!(line.matches('\n').count(), 1);
        let mut r = Report::default();
        r.line(&line).unwrap();
        r.line(&pid_line(77)).unwrap();
        assert!(r.complete());
        assert_eq!(Outcome::Ready.line(), "ready\n");
    }

    #[test]
    fn junk_is_refused() {
        for bad in [
            "pid 1",
            "pid x",
            "pid",
            "readyx",
            "readypid 32",
            "ready now",
            "hello",
        ] {
            assert!(Report::default().line(bad).is_err(), "{bad}");
        }
    }
}

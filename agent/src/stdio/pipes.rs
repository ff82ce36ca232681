//! The pipes between the agent and a process that has no terminal. The process gets the read
//! end of stdin and the write ends of stdout/stderr (or /dev/null for a stream nobody asked
//! for); the agent keeps the other ends.

use std::os::fd::OwnedFd;

use super::StdioRequest;
use crate::error::{AgentError, Result};

/// The process's three fds (0, 1, 2), handed to the runner.
#[derive(Debug)]
pub struct ProcessEnds(pub [OwnedFd; 3]);

/// The agent's ends: where stdin is written and stdout/stderr are read.
#[derive(Debug, Default)]
pub struct AgentEnds {
    /// Write end of the process's stdin.
    pub stdin: Option<OwnedFd>,
    /// Read end of its stdout.
    pub stdout: Option<OwnedFd>,
    /// Read end of its stderr.
    pub stderr: Option<OwnedFd>,
}

fn dev_null(write: bool) -> Result<OwnedFd> {
    let f = std::fs::OpenOptions::new()
        .read(!write)
        .write(write)
        .open("/dev/null")
        .map_err(AgentError::io("opening /dev/null"))?;
    Ok(f.into())
}

fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| AgentError::io("pipe2")(e.into()))
}

/// Pipes for the requested streams, /dev/null for the others.
pub fn create(req: &StdioRequest) -> Result<(ProcessEnds, AgentEnds)> {
    let mut agent = AgentEnds::default();
    let stdin = if req.stdin {
        let (r, w) = pipe()?;
        agent.stdin = Some(w);
        r
    } else {
        dev_null(false)?
    };
    let stdout = if req.stdout {
        let (r, w) = pipe()?;
        agent.stdout = Some(r);
        w
    } else {
        dev_null(true)?
    };
    let stderr = if req.stderr {
        let (r, w) = pipe()?;
        agent.stderr = Some(r);
        w
    } else {
        dev_null(true)?
    };
    Ok((ProcessEnds([stdin, stdout, stderr]), agent))
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use super::*;

    #[test]
    fn requested_streams_get_pipes_and_others_dev_null() {
        let req = StdioRequest {
            stdin: false,
            stdout: true,
            stderr: false,
            terminal: false,
        };
        let (ProcessEnds([inp, out, _err]), agent) = create(&req).unwrap();
        assert!(agent.stdin.is_none() && agent.stderr.is_none());
        std::fs::File::from(out).write_all(b"hi").unwrap();
        let mut got = String::new();
        std::fs::File::from(agent.stdout.unwrap())
            .read_to_string(&mut got)
            .unwrap();
        assert_eq!(got, "hi");
        let mut buf = Vec::new();
        assert_eq!(std::fs::File::from(inp).read_to_end(&mut buf).unwrap(), 0);
    }
}

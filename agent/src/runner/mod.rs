//! The runner: `husk-agent` re-executed with [`RUNNER_ARG`] to do what forks (libcontainer's
//! create and exec clone the calling process), in a fresh single-threaded process instead of the
//! agent's multi-threaded tokio one (a fork there could inherit locks other threads hold).
//!
//! The agent passes one `SOCK_SEQPACKET` socket as the runner's stdin. Over it goes one
//! [`Request`] (JSON) with the container-side stdio fds attached (`SCM_RIGHTS`), and back one
//! [`Reply`] with the pty master attached in terminal mode. The runner exits right after; the
//! container processes it created are reparented to the agent (PID 1, or a child subreaper in
//! host mode), whose reaper owns their `waitpid`.

pub mod child;
pub mod seccomp;
pub mod spare;
pub mod spawn;
pub mod wire;

use std::path::PathBuf;

use oci_spec::runtime::LinuxSeccomp;
use serde::{Deserialize, Serialize};

/// The internal subcommand that makes `husk-agent` a runner.
pub const RUNNER_ARG: &str = "__husk-runner";

/// What the runner is asked to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// `runc create`: the container and its init process, stopped before exec. Three stdio fds
    /// come with it unless `console_socket` is set.
    Create {
        /// Container id.
        container_id: String,
        /// libcontainer's state root.
        state_root: PathBuf,
        /// The bundle directory holding config.json.
        bundle: PathBuf,
        /// Where the runner listens for the pty master (terminal mode).
        console_socket: Option<PathBuf>,
        /// Use MS_MOVE + chroot instead of pivot_root (root on an initramfs).
        no_pivot: bool,
    },
    /// `runc exec --detach`: a process in a running container, started at once.
    Exec {
        /// Container id.
        container_id: String,
        /// libcontainer's state root.
        state_root: PathBuf,
        /// The OCI Process JSON file.
        process_json: PathBuf,
        /// Where the runner listens for the pty master (terminal mode).
        console_socket: Option<PathBuf>,
        /// The container's `linux.seccomp`, installed on the exec ([`seccomp`]).
        seccomp: Option<LinuxSeccomp>,
    },
    /// `runc start` for a container whose spec has poststart hooks (they fork and wait).
    Start {
        /// Container id.
        container_id: String,
        /// libcontainer's state root.
        state_root: PathBuf,
    },
}

/// How a request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FailureKind {
    /// The spec or process was refused (maps to INVALID_ARGUMENT).
    Invalid,
    /// Anything else (INTERNAL).
    Internal,
}

/// The runner's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    /// Done; the pid of the created process (0 for Start).
    Ok {
        /// The new process, as the agent sees it.
        pid: i32,
    },
    /// Failed.
    Failed {
        /// Which error code.
        kind: FailureKind,
        /// libcontainer's error chain.
        message: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_as_json() {
        let req = Request::Exec {
            container_id: "c".into(),
            state_root: "/run/x".into(),
            process_json: "/run/x/p.json".into(),
            console_socket: None,
            seccomp: None,
        };
        let back: Request = serde_json::from_slice(&serde_json::to_vec(&req).unwrap()).unwrap();
        assert_eq!(back, req);
        let reply = Reply::Failed {
            kind: FailureKind::Invalid,
            message: "bad".into(),
        };
        let back: Reply = serde_json::from_slice(&serde_json::to_vec(&reply).unwrap()).unwrap();
        assert_eq!(back, reply);
    }
}

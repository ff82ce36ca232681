//! The agent's errors and the one place they become ttrpc status codes (the codes agent.proto
//! lists). Library modules return [`AgentError`]; only `rpc.rs` converts.

use husk_protocol::agent::ttrpc;
use husk_protocol::ids::IdError;

use crate::status::TransitionError;

/// Why an agent operation failed. Each variant maps to one ttrpc code.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// Unknown container id.
    #[error("container {0:?} not found")]
    ContainerNotFound(String),
    /// Unknown exec id in a known container.
    #[error("exec {exec_id:?} not found in container {container_id:?}")]
    ExecNotFound {
        /// The container.
        container_id: String,
        /// The missing exec.
        exec_id: String,
    },
    /// A container id already in use.
    #[error("container {0:?} already exists")]
    ContainerExists(String),
    /// An exec id already in use in this container.
    #[error("exec {exec_id:?} already exists in container {container_id:?}")]
    ExecExists {
        /// The container.
        container_id: String,
        /// The duplicate exec id.
        exec_id: String,
    },
    /// A malformed container or exec id.
    #[error("bad id: {0}")]
    BadId(#[from] IdError),
    /// The request itself is unusable (bad JSON, bad spec, bad signal, ...).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The object is in the wrong state for the request.
    #[error("{0}")]
    WrongState(#[from] TransitionError),
    /// A precondition other than a state transition is not met (e.g. stdio not attached).
    #[error("failed precondition: {0}")]
    Precondition(String),
    /// Something the request names does not exist (e.g. no NIC with that MAC).
    #[error("not found: {0}")]
    NotFound(String),
    /// Not supported by this agent.
    #[error("unimplemented: {0}")]
    Unimplemented(String),
    /// A system call or helper failed; the message names it.
    #[error("{what}: {source}")]
    Io {
        /// What the agent was doing.
        what: String,
        /// The error.
        source: std::io::Error,
    },
    /// The runner (libcontainer, in a process of its own) failed, in its own words, or answered
    /// something unusable.
    #[error("{0}")]
    Runner(String),
    /// A document for the runner or a bundle could not be encoded, or the runner's reply decoded.
    #[error("{what}: {source}")]
    Json {
        /// Which document.
        what: &'static str,
        /// The error.
        #[source]
        source: serde_json::Error,
    },
    /// A blocking task ended without its result (it panicked or was cancelled).
    #[error("{what}: {source}")]
    Task {
        /// Which task.
        what: &'static str,
        /// The error.
        #[source]
        source: tokio::task::JoinError,
    },
    /// libcontainer, libcgroups or the ttrpc server failed inside the agent's own process.
    #[error("{what}: {source}")]
    Runtime {
        /// What the agent was doing.
        what: &'static str,
        /// The library's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl AgentError {
    /// An I/O error with context.
    pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> AgentError {
        let what = what.into();
        move |source| AgentError::Io { what, source }
    }

    /// A library error with context (see [`AgentError::Runtime`]).
    pub fn runtime<E: std::error::Error + Send + Sync + 'static>(
        what: &'static str,
    ) -> impl FnOnce(E) -> AgentError {
        move |e| AgentError::Runtime {
            what,
            source: Box::new(e),
        }
    }

    /// A JSON error with context (see [`AgentError::Json`]).
    pub fn json(what: &'static str) -> impl FnOnce(serde_json::Error) -> AgentError {
        move |source| AgentError::Json { what, source }
    }

    /// A join error with context (see [`AgentError::Task`]).
    pub fn task(what: &'static str) -> impl FnOnce(tokio::task::JoinError) -> AgentError {
        move |source| AgentError::Task { what, source }
    }

    /// The ttrpc code this error is reported with.
    pub fn code(&self) -> ttrpc::Code {
        use ttrpc::Code;
        match self {
            AgentError::ContainerNotFound(_)
            | AgentError::ExecNotFound { .. }
            | AgentError::NotFound(_) => Code::NOT_FOUND,
            AgentError::ContainerExists(_) | AgentError::ExecExists { .. } => Code::ALREADY_EXISTS,
            AgentError::BadId(_) | AgentError::InvalidArgument(_) => Code::INVALID_ARGUMENT,
            AgentError::WrongState(_) | AgentError::Precondition(_) => Code::FAILED_PRECONDITION,
            AgentError::Unimplemented(_) => Code::UNIMPLEMENTED,
            AgentError::Io { .. }
            | AgentError::Runner(_)
            | AgentError::Json { .. }
            | AgentError::Task { .. }
            | AgentError::Runtime { .. } => Code::INTERNAL,
        }
    }
}

impl From<AgentError> for ttrpc::Error {
    fn from(e: AgentError) -> Self {
        ttrpc::Error::RpcStatus(ttrpc::get_status(e.code(), e.to_string()))
    }
}

/// Result of agent operations.
pub type Result<T> = std::result::Result<T, AgentError>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{Status, TransitionError};
    use ttrpc::Code;

    fn code_of(e: AgentError) -> Code {
        match ttrpc::Error::from(e) {
            ttrpc::Error::RpcStatus(s) => s.code(),
            other => panic!("not a status: {other:?}"),
        }
    }

    #[test]
    fn every_kind_maps_to_the_proto_code() {
        let io = std::io::Error::from_raw_os_error(libc::EPERM);
        let cases = [
            (AgentError::ContainerNotFound("c".into()), Code::NOT_FOUND),
            (
                AgentError::ExecNotFound {
                    container_id: "c".into(),
                    exec_id: "e".into(),
                },
                Code::NOT_FOUND,
            ),
            (
                AgentError::ContainerExists("c".into()),
                Code::ALREADY_EXISTS,
            ),
            (
                AgentError::ExecExists {
                    container_id: "c".into(),
                    exec_id: "e".into(),
                },
                Code::ALREADY_EXISTS,
            ),
            (AgentError::BadId(IdError::Empty), Code::INVALID_ARGUMENT),
            (
                AgentError::InvalidArgument("x".into()),
                Code::INVALID_ARGUMENT,
            ),
            (
                AgentError::WrongState(TransitionError {
                    from: Status::Stopped,
                    action: "start",
                }),
                Code::FAILED_PRECONDITION,
            ),
            (
                AgentError::Precondition("x".into()),
                Code::FAILED_PRECONDITION,
            ),
            (AgentError::Unimplemented("x".into()), Code::UNIMPLEMENTED),
            (AgentError::io("mount /proc")(io), Code::INTERNAL),
            (AgentError::Runner("clone".into()), Code::INTERNAL),
            (
                AgentError::json("config.json")(serde_json::from_str::<u8>("x").unwrap_err()),
                Code::INTERNAL,
            ),
            (
                AgentError::runtime("cgroup manager")(std::io::Error::from_raw_os_error(
                    libc::ENOENT,
                )),
                Code::INTERNAL,
            ),
        ];
        for (err, want) in cases {
            let text = err.to_string();
            assert_eq!(code_of(err), want, "{text}");
        }
    }

    #[test]
    fn library_errors_keep_their_cause() {
        use std::error::Error;
        let e =
            AgentError::runtime("cgroup manager")(std::io::Error::from_raw_os_error(libc::ENOENT));
        assert!(e.to_string().starts_with("cgroup manager: "), "{e}");
        let cause = e.source().expect("the cause is kept");
        let io = cause
            .downcast_ref::<std::io::Error>()
            .expect("as the io::Error it was");
        assert_eq!(io.raw_os_error(), Some(libc::ENOENT));
        let e = AgentError::json("bad runner reply")(serde_json::from_str::<u8>("x").unwrap_err());
        assert!(e.source().is_some_and(|c| c.is::<serde_json::Error>()));
    }

    #[test]
    fn messages_name_the_object() {
        let e = AgentError::io("mount /proc")(std::io::Error::from_raw_os_error(libc::EPERM));
        assert!(e.to_string().starts_with("mount /proc: "), "{e}");
        match ttrpc::Error::from(AgentError::ContainerNotFound("abc".into())) {
            ttrpc::Error::RpcStatus(s) => assert!(s.message().contains("\"abc\"")),
            _ => unreachable!(),
        }
    }
}

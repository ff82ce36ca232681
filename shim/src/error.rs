//! The shim's error type and the one place where errors become ttrpc status codes.
//!
//! containerd branches on the code (`errdefs.FromGRPC`): NotFound means "task gone",
//! AlreadyExists, InvalidArgument, FailedPrecondition and Unimplemented each have their own
//! meaning, so every error is classified here on purpose instead of collapsing into UNKNOWN.
//! Errors the agent returned keep the agent's code.

use containerd_shim_protos::ttrpc::{self, Code};

use crate::agent::AgentError;
use crate::config::ConfigError;
use crate::io::IoError;
use crate::rootfs::RootfsError;
use crate::share::ShareError;
use crate::spec::SpecError;
use crate::unmount::UnmountError;
use crate::vm::BootError;

/// Everything a task request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    /// No such container or process.
    #[error("{0}")]
    NotFound(String),
    /// A container or exec id that is already in use.
    #[error("{0}")]
    AlreadyExists(String),
    /// A malformed request.
    #[error("{0}")]
    InvalidArgument(String),
    /// The object is in the wrong state for the request.
    #[error("{0}")]
    FailedPrecondition(String),
    /// A request husk does not support.
    #[error("{0}")]
    Unimplemented(String),
    /// The husk configuration or a VM-size annotation is unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The OCI spec cannot be used.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// The VM could not be started.
    #[error(transparent)]
    Boot(#[from] BootError),
    /// A call to the guest agent failed.
    #[error(transparent)]
    Agent(#[from] AgentError),
    /// Mounting or unmounting the container's filesystems failed.
    #[error(transparent)]
    Rootfs(#[from] RootfsError),
    /// The sandbox's share refused or failed an operation.
    #[error(transparent)]
    Share(#[from] ShareError),
    /// Unmounting or removing host state failed.
    #[error(transparent)]
    Unmount(#[from] UnmountError),
    /// Setting up the process's stdio failed.
    #[error(transparent)]
    Io(#[from] IoError),
    /// Anything else on the host (the context names what was being done).
    #[error("{context}: {source}")]
    Host {
        /// What the shim was doing.
        context: String,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
}

/// Shorthand used across the crate.
pub type Result<T, E = ShimError> = std::result::Result<T, E>;

impl ShimError {
    /// Wraps a host I/O error with what was being done.
    pub fn host(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> ShimError {
        let context = context.into();
        move |source| ShimError::Host { context, source }
    }

    /// The ttrpc code containerd will see.
    pub fn code(&self) -> Code {
        match self {
            ShimError::NotFound(_) => Code::NOT_FOUND,
            ShimError::AlreadyExists(_) => Code::ALREADY_EXISTS,
            ShimError::InvalidArgument(_) | ShimError::Config(_) | ShimError::Spec(_) => {
                Code::INVALID_ARGUMENT
            }
            ShimError::FailedPrecondition(_) => Code::FAILED_PRECONDITION,
            ShimError::Unimplemented(_) => Code::UNIMPLEMENTED,
            ShimError::Agent(e) => e.code(),
            ShimError::Io(e) => e.code(),
            // A missing artifact is the host's setup, not a fault: fixable, as its message says.
            ShimError::Boot(BootError::Missing { .. }) => Code::FAILED_PRECONDITION,
            ShimError::Boot(_)
            | ShimError::Rootfs(_)
            | ShimError::Share(_)
            | ShimError::Unmount(_)
            | ShimError::Host { .. } => Code::INTERNAL,
        }
    }
}

/// A request's result at the RPC boundary: an expected refusal (not found, exists, wrong state)
/// is logged at info, anything else as a warning, and the error becomes its ttrpc status.
pub fn reply<T>(call: &'static str, id: &str, r: Result<T, ShimError>) -> ttrpc::Result<T> {
    r.map_err(|e| {
        match e.code() {
            Code::NOT_FOUND | Code::ALREADY_EXISTS | Code::FAILED_PRECONDITION => {
                tracing::info!(call, id, "{e}")
            }
            _ => tracing::warn!(call, id, "{e}"),
        }
        e.into()
    })
}

impl From<ShimError> for ttrpc::Error {
    fn from(e: ShimError) -> Self {
        ttrpc::Error::RpcStatus(ttrpc::get_status(e.code(), e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_reach_containerd_unchanged() {
        let cases = [
            (ShimError::NotFound("x".into()), Code::NOT_FOUND),
            (ShimError::AlreadyExists("x".into()), Code::ALREADY_EXISTS),
            (
                ShimError::InvalidArgument("x".into()),
                Code::INVALID_ARGUMENT,
            ),
            (
                ShimError::FailedPrecondition("x".into()),
                Code::FAILED_PRECONDITION,
            ),
            (ShimError::Unimplemented("x".into()), Code::UNIMPLEMENTED),
        ];
        for (e, code) in cases {
            let t: ttrpc::Error = e.into();
            match t {
                ttrpc::Error::RpcStatus(s) => {
                    assert_eq!(s.code(), code);
                    assert_eq!(s.message(), "x");
                }
                other => panic!("{other:?}"),
            }
        }
    }
}

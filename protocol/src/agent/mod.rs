//! The agent API, generated from `protos/husk/agent/v1/agent.proto` (read that file for the
//! semantics of every call): protobuf messages in [`api`], async ttrpc client and service in
//! [`service`]. Enabled by the `agent-api` feature.

// The generated service refers to the messages as `super::agent::*`, hence these two names;
// `api` and `service` below are the names to use.
#[allow(
    missing_docs,
    clippy::all,
    missing_debug_implementations,
    unused_qualifications,
    unused_mut,
    non_upper_case_globals
)]
#[doc(hidden)]
pub mod agent {
    include!(concat!(env!("OUT_DIR"), "/agent/agent.rs"));
}

#[allow(
    missing_docs,
    clippy::all,
    missing_debug_implementations,
    unused_qualifications,
    unused_mut,
    non_upper_case_globals
)]
#[doc(hidden)]
pub mod agent_ttrpc {
    include!(concat!(env!("OUT_DIR"), "/agent/agent_ttrpc.rs"));
}

/// Messages of the agent API.
pub use agent as api;
/// The `husk.agent.v1.Agent` service: `service::AgentClient` for the shim, the `service::Agent`
/// trait and `service::create_agent` for the agent.
pub use agent_ttrpc as service;

/// This API's version, reported by `Check` (`CheckResponse.api_version`).
pub const API_VERSION: u32 = 1;

pub use ttrpc;

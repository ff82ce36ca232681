//! containerd's `containerd.task.v2.Task` service over the sandbox: [`service`] is the ttrpc
//! face (every method, each error mapped to a ttrpc code in one place), and each group of
//! operations has its file, a function per request over the [`Sandbox`](crate::sandbox::Sandbox)
//! and its containers and processes:
//! [`create`], [`start`] (Start, Exec), [`delete`], [`query`] (Wait, State, Stats, Pids,
//! Connect) and [`control`] (Kill, Pause, Resume, Update, ResizePty, CloseIO, Shutdown).

pub mod control;
pub mod create;
pub mod delete;
pub mod query;
pub mod service;
pub mod start;

use husk_protocol::agent::api;

use crate::error::{Result, ShimError};

pub use control::{close_io, kill, pause, resize_pty, resume, shutdown, update};
pub use create::create;
pub use delete::delete;
pub use query::{connect, pids, state, stats, wait};
pub use service::TaskService;
pub use start::{exec, start};

fn check_id(what: &str, id: &str) -> Result<()> {
    husk_protocol::ids::validate(id).map_err(|e| ShimError::InvalidArgument(format!("{what}: {e}")))
}

fn process_ref(cid: &str, eid: &str) -> api::ProcessRef {
    let mut r = api::ProcessRef::new();
    r.container_id = cid.to_string();
    r.exec_id = eid.to_string();
    r
}

fn container_ref(id: &str) -> api::ContainerRef {
    let mut r = api::ContainerRef::new();
    r.container_id = id.to_string();
    r
}

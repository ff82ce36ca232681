//! husk-agent: PID 1 in a husk micro-VM and its container runtime; also runs on a normal Linux
//! host ("host mode") for fast tests.
//!
//! - [`server`]: accept loops (vsock in the guest, Unix + hybrid handshake in host mode) feeding
//!   [`rpc`] (the ttrpc service, a thin layer over [`sandbox`]) and [`stdio`] (streams);
//! - [`container`]: containers through youki's libcontainer, run in a re-executed single-threaded
//!   [`runner`]; [`reaper`]: the one `waitpid` loop;
//! - [`init`]: PID 1 mounts and power-off; [`network`]: loopback and SetupSandbox;
//!   [`logging`]: console + vsock log stream; [`error`]: errors and their ttrpc codes;
//! - [`status`]: the checked life of a container or process.

pub mod config;
pub mod conn;
pub mod container;
pub mod error;
pub mod identity;
pub mod init;
pub mod logging;
pub mod network;
pub mod reaper;
pub mod runner;
pub mod sandbox;
pub mod server;
pub mod status;
pub mod stdio;

//! husk's containerd shim as a library: the binary (`main.rs`) is a thin entry point, and
//! tests drive the task service and its parts directly.
//!
//! Layout: [`daemon`] serves the shim's socket (Task and Sandbox services), [`service`] is the
//! `delete` action, [`start`] the start action. [`task`] is containerd's Task service (one file
//! per group of requests) and [`sandbox_api`] containerd 2.x's Sandbox service (with
//! [`pod_config`], CRI's PodSandboxConfig), both over [`sandbox`] (the VM's life, the sandbox
//! API's pod and the container registry). Below them: [`container`] and [`process`], [`vm`]
//! (husk-vmm and boot), [`agent`] (the guest agent over hybrid vsock), [`io`] (stdio),
//! [`share`], [`rootfs`], [`unmount`], [`fsat`] and [`spec`] (the virtio-fs share, container
//! filesystems, race-free path operations and the OCI spec), [`events`], [`metrics`],
//! [`config`], [`cleanup`] (delete without a daemon), [`network`] (the pod network: taps and tc
//! redirect in the sandbox's network namespace), [`cgroup`] (the pod's cgroup husk-vmm lives
//! in), [`wire`] (protobuf messages the shim reads without generated types).

pub mod agent;
pub mod cgroup;
pub mod cleanup;
pub mod daemon;
pub use husk_protocol::config;
pub mod container;
pub mod error;
pub mod events;
pub mod failure;
pub mod fsat;
pub mod info;
pub mod io;
pub mod lines;
pub mod logging;
pub mod metrics;
pub mod network;
pub mod options;
pub mod paths;
pub mod pod_config;
pub mod process;
pub mod rootfs;
pub mod sandbox;
pub mod sandbox_api;
pub mod service;
pub mod share;
pub mod spec;
pub mod start;
pub mod tap;
pub mod task;
pub mod unmount;
pub mod vm;
pub mod wire;
pub mod writable;

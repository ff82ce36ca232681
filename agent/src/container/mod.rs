//! Containers, created and exec'd into with youki's `libcontainer` (in the runner, see
//! [`crate::runner`]); everything that does not fork happens here in the agent.
//!
//! - [`state`]: the status machine; [`spec`]: parsing and guest rewriting of the OCI spec;
//! - [`create`] and [`exec`]: the two operations that go through a runner; [`pause`]: a pod's
//!   sandbox container, held by a pod anchor ([`anchor`]) instead;
//! - [`process`]: a process's stdio and exit; [`cgroup`]: stats, freeze, kill, removal;
//!   [`oom`]: OOM-kill events; [`sysctl`]: the pod's network sysctls, set by the agent;
//!   [`propagation`]: the rootfs propagation names libcontainer takes.
//!
//! libcontainer is built with cgroup v2 (`v2`) and seccomp (`libseccomp`), without
//! `cgroupsv2_devices`: that feature needs libbpf built from C source and linked into the static
//! PID 1, and the device rules it enforces are defence in depth *inside* a VM whose only devices
//! are the few virtio ones husk gives it; the container still sees only the device nodes its
//! spec lists (libcontainer creates /dev from `linux.devices`). The spec's device cgroup rules
//! are therefore accepted and not enforced.

pub mod anchor;
pub mod cgroup;
pub mod create;
pub mod exec;
pub mod oom;
pub mod pause;
pub mod process;
pub mod propagation;
pub mod runtime;
pub mod spec;
pub mod sysctl;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use oci_spec::runtime::LinuxSeccomp;
use process::Process;

use crate::error::{AgentError, Result};
use crate::status::Status;

#[derive(Debug, Default)]
struct Inner {
    paused: bool,
    execs: HashMap<String, Arc<Process>>,
}

/// What runs a container's init.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backing {
    /// libcontainer, through a runner: a full OCI container.
    Libcontainer,
    /// A pod anchor: the pod's sandbox container ([`pause`]); nothing can be exec'd into it.
    PodAnchor,
}

/// A created container.
#[derive(Debug)]
pub struct Container {
    /// Its id.
    pub id: String,
    /// Its cgroup directory.
    pub cgroup: PathBuf,
    /// Where its config.json and exec process files are.
    pub bundle: PathBuf,
    /// libcontainer's state directory for it.
    pub state_dir: PathBuf,
    /// The init process.
    pub init: Arc<Process>,
    /// The spec has poststart hooks (start then runs in a runner: hooks fork and wait).
    pub poststart_hooks: bool,
    /// The spec's seccomp filter, which every exec gets too ([`crate::runner::seccomp`]).
    pub seccomp: Option<LinuxSeccomp>,
    /// What runs its init.
    pub backing: Backing,
    inner: Mutex<Inner>,
}

impl Container {
    /// A container around its created init process.
    pub fn new(
        id: &str,
        bundle: PathBuf,
        state_dir: PathBuf,
        init: Arc<Process>,
        poststart_hooks: bool,
        seccomp: Option<LinuxSeccomp>,
        backing: Backing,
    ) -> Self {
        Container {
            id: id.into(),
            cgroup: cgroup::dir(id),
            bundle,
            state_dir,
            init,
            poststart_hooks,
            seccomp,
            backing,
            inner: Mutex::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The container's status: its init's, or Paused while frozen.
    pub fn status(&self) -> Status {
        match self.init.status() {
            Status::Running if self.lock().paused => Status::Paused,
            s => s,
        }
    }

    /// Records a freeze or thaw.
    pub fn set_paused(&self, paused: bool) {
        self.lock().paused = paused;
    }

    /// The init (empty id) or an exec.
    pub fn process(&self, exec_id: &str) -> Result<Arc<Process>> {
        if exec_id.is_empty() {
            return Ok(Arc::clone(&self.init));
        }
        self.lock()
            .execs
            .get(exec_id)
            .cloned()
            .ok_or_else(|| AgentError::ExecNotFound {
                container_id: self.id.clone(),
                exec_id: exec_id.into(),
            })
    }

    /// Registers an exec; refuses a duplicate id.
    pub fn add_exec(&self, process: Arc<Process>) -> Result<()> {
        let mut inner = self.lock();
        if inner.execs.contains_key(&process.exec_id) {
            return Err(AgentError::ExecExists {
                container_id: self.id.clone(),
                exec_id: process.exec_id.clone(),
            });
        }
        inner.execs.insert(process.exec_id.clone(), process);
        Ok(())
    }

    /// Checks that an exec id is free (before the expensive part of registering it).
    pub fn check_exec_free(&self, exec_id: &str) -> Result<()> {
        if self.lock().execs.contains_key(exec_id) {
            return Err(AgentError::ExecExists {
                container_id: self.id.clone(),
                exec_id: exec_id.into(),
            });
        }
        Ok(())
    }

    /// Forgets an exec.
    pub fn remove_exec(&self, exec_id: &str) -> Option<Arc<Process>> {
        self.lock().execs.remove(exec_id)
    }

    /// Every exec.
    pub fn execs(&self) -> Vec<Arc<Process>> {
        self.lock().execs.values().cloned().collect()
    }

    /// The exec whose main process has `pid`, if any.
    pub fn exec_of_pid(&self, pid: i32) -> Option<String> {
        self.lock()
            .execs
            .values()
            .find(|p| p.pid() == Some(pid))
            .map(|p| p.exec_id.clone())
    }
}

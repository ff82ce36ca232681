//! ExecProcess (registration: pipes and the process file, nothing runs) and the start of an
//! exec (a runner does `runc exec --detach` through libcontainer).

use std::sync::Arc;

use husk_protocol::ids;

use super::create::run_runner;
use super::process::{HostIo, Process};
use super::runtime::Runtime;
use super::{spec, Backing, Container};
use crate::error::{AgentError, Result};
use crate::runner::{seccomp, Request};
use crate::status::Action;
use crate::stdio::tty::PtyMaster;
use crate::stdio::{pipes, StdioRequest};

/// Registers exec `exec_id` in `c`.
pub fn register(
    c: &Container,
    exec_id: &str,
    process_json: &[u8],
    stdio: StdioRequest,
) -> Result<()> {
    ids::validate(exec_id)?;
    if c.backing == Backing::PodAnchor {
        return Err(AgentError::Precondition(format!(
            "container {:?} is the pod's sandbox, held by the agent's pod anchor: nothing can \
             be exec'd into it",
            c.id
        )));
    }
    c.status().check(Action::Exec)?;
    c.check_exec_free(exec_id)?;
    let mut process = spec::parse_process(process_json)?;
    if c.seccomp.is_some() {
        seccomp::grant_filter_setup(&mut process);
    }
    let terminal = process.terminal().unwrap_or(false);
    if terminal != stdio.terminal {
        return Err(AgentError::InvalidArgument(format!(
            "process.terminal is {terminal} but {} in the request's stdio",
            stdio.terminal
        )));
    }
    let path = c.bundle.join(format!("exec-{exec_id}.json"));
    let json =
        serde_json::to_vec(&process).map_err(AgentError::json("encoding the exec's process"))?;
    std::fs::write(&path, json).map_err(AgentError::io(format!("writing {}", path.display())))?;
    let p = Process::new(&c.id, exec_id, stdio, c.cgroup.clone());
    if !terminal {
        let (ours, agent) = pipes::create(&stdio)?;
        p.set_process_ends(ours);
        p.set_io(HostIo::Pipes(agent));
    }
    c.add_exec(p)
}

/// Starts a registered exec; returns its pid.
pub async fn start(rt: &Runtime, c: &Container, p: &Arc<Process>) -> Result<i32> {
    c.status().check(Action::Exec)?;
    p.begin_start().await?;
    let fds = p
        .take_process_ends()
        .map(|e| Vec::from(e.0))
        .unwrap_or_default();
    let request = Request::Exec {
        container_id: c.id.clone(),
        state_root: rt.config.containers_root(),
        process_json: c.bundle.join(format!("exec-{}.json", p.exec_id)),
        console_socket: p.stdio.terminal.then(|| rt.console_socket_path()),
        seccomp: c.seccomp.clone(),
    };
    let since = rt.reaper.epoch();
    let outcome = match run_runner(rt, request, fds).await {
        Ok(o) => o,
        Err(e) => {
            p.fail_start();
            return Err(e);
        }
    };
    p.set_pid(outcome.pid);
    // The pty's copy loop must exist before the supervisor can see the exit, or the output of a
    // process that exits at once would never be read.
    let pty = outcome.master.map(PtyMaster::new).transpose();
    let oom = Arc::clone(&rt.oom);
    let cid = c.id.clone();
    let pty_error = match pty {
        Ok(Some(m)) => {
            p.set_io(HostIo::Pty(m));
            None
        }
        Ok(None) => None,
        Err(e) => {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(outcome.pid),
                nix::sys::signal::Signal::SIGKILL,
            );
            Some(e)
        }
    };
    p.supervise(rt.reaper.watch(outcome.pid, since), move |_| {
        oom.check(&cid)
    });
    if let Some(e) = pty_error {
        return Err(AgentError::io("setting up the pty master")(e));
    }
    tracing::info!(container_id = %c.id, exec_id = %p.exec_id, pid = outcome.pid, "exec started");
    Ok(outcome.pid)
}

//! CreateContainer (a runner does `runc create` through libcontainer; a pod's sandbox container
//! is held by a pod anchor instead, [`super::pause`]) and the start of a container's init
//! (libcontainer's notify socket, in the agent: it does not fork).

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;

use libcontainer::container::{Container as LcContainer, ContainerStatus};
use libcontainer::notify_socket::{NotifySocket, NOTIFY_FILE};
use oci_spec::runtime::Spec;

use super::process::{HostIo, Process};
use super::runtime::Runtime;
use super::{cgroup, pause, spec, sysctl, Backing, Container};
use crate::error::{AgentError, Result};
use crate::runner::{self, Request};
use crate::stdio::tty::PtyMaster;
use crate::stdio::{pipes, StdioRequest};

/// Creates container `id` from `spec_json`; the id is already reserved by the caller, and
/// `init_pid` finds the init of a container this one joins the namespaces of.
pub async fn create(
    rt: &Runtime,
    id: &str,
    spec_json: &[u8],
    stdio: StdioRequest,
    init_pid: impl Fn(&str) -> Option<i32>,
) -> Result<Arc<Container>> {
    let spec::Prepared {
        spec,
        pod_net_sysctls,
    } = spec::prepare(id, spec_json, init_pid)?;
    let terminal = spec
        .process()
        .as_ref()
        .and_then(|p| p.terminal())
        .unwrap_or(false);
    if terminal != stdio.terminal {
        return Err(AgentError::InvalidArgument(format!(
            "process.terminal is {terminal} in the spec but {} in the request's stdio",
            stdio.terminal
        )));
    }
    let poststart_hooks = spec
        .hooks()
        .as_ref()
        .and_then(|h| h.poststart().as_ref())
        .is_some_and(|v| !v.is_empty());
    let seccomp = spec.linux().as_ref().and_then(|l| l.seccomp().clone());
    sysctl::apply(
        Path::new(sysctl::PROC_SYS),
        &pod_net_sysctls,
        sysctl::Scope::Network,
    )?;
    let bundle = rt.config.bundles().join(id);
    let state_dir = rt.config.containers_root().join(id);
    let created = match pause::fits(&spec, &stdio) {
        Ok(namespaces) => pause::create(rt, id, &spec, stdio, namespaces, &bundle)
            .await
            .map(|init| (init, Backing::PodAnchor)),
        Err(why) => {
            if spec::is_sandbox_container(&spec) {
                tracing::info!(
                    container_id = id,
                    why,
                    "the sandbox container goes to a runner"
                );
            }
            run_create(rt, id, &spec, stdio, &bundle)
                .await
                .map(|init| (init, Backing::Libcontainer))
        }
    };
    match created {
        Ok((init, backing)) => {
            let c = Arc::new(Container::new(
                id,
                bundle,
                state_dir,
                init,
                poststart_hooks,
                seccomp,
                backing,
            ));
            rt.oom.add(id, c.cgroup.clone());
            Ok(c)
        }
        Err(e) => {
            cleanup(id, &bundle, &state_dir).await;
            Err(e)
        }
    }
}

async fn run_create(
    rt: &Runtime,
    id: &str,
    spec: &Spec,
    stdio: StdioRequest,
    bundle: &Path,
) -> Result<Arc<Process>> {
    write_bundle(bundle, spec)?;

    let (console, fds, io) = if stdio.terminal {
        (Some(rt.console_socket_path()), Vec::new(), None)
    } else {
        let (ours, agent) = pipes::create(&stdio)?;
        (None, Vec::from(ours.0), Some(HostIo::Pipes(agent)))
    };
    let request = Request::Create {
        container_id: id.into(),
        state_root: rt.config.containers_root(),
        bundle: bundle.into(),
        console_socket: console,
        no_pivot: rt.config.no_pivot,
    };
    let since = rt.reaper.epoch();
    let runner_started = std::time::Instant::now();
    let outcome = run_runner(rt, request, fds).await?;
    let runner_ms = runner_started.elapsed().as_millis() as u64;
    let process = Process::new(id, "", stdio, cgroup::dir(id));
    process.set_pid(outcome.pid);
    let io = match (io, outcome.master) {
        (Some(io), _) => io,
        (None, Some(master)) => match PtyMaster::new(master) {
            Ok(m) => HostIo::Pty(m),
            Err(e) => {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(outcome.pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
                return Err(AgentError::io("setting up the pty master")(e));
            }
        },
        (None, None) => {
            return Err(AgentError::Runner(
                "the runner returned no pty master".into(),
            ))
        }
    };
    process.set_io(io);
    let oom = Arc::clone(&rt.oom);
    let cid = id.to_string();
    process.supervise(rt.reaper.watch(outcome.pid, since), move |_| {
        oom.check(&cid)
    });
    tracing::info!(
        container_id = id,
        pid = outcome.pid,
        runner_ms,
        "container created"
    );
    Ok(process)
}

/// Writes `spec` as `<bundle>/config.json`, creating the bundle; returns the file's path.
pub fn write_bundle(bundle: &Path, spec: &Spec) -> Result<std::path::PathBuf> {
    std::fs::create_dir_all(bundle)
        .map_err(AgentError::io(format!("mkdir {}", bundle.display())))?;
    let json = serde_json::to_vec(spec).map_err(AgentError::json("encoding config.json"))?;
    let config = bundle.join("config.json");
    std::fs::write(&config, json)
        .map_err(AgentError::io(format!("writing {}", config.display())))?;
    Ok(config)
}

/// Runs a runner request off the async threads.
pub async fn run_runner(
    rt: &Runtime,
    request: Request,
    fds: Vec<OwnedFd>,
) -> Result<runner::spawn::Outcome> {
    let runners = Arc::clone(&rt.runners);
    tokio::task::spawn_blocking(move || {
        let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(|f| f.as_fd()).collect();
        runners.run(&request, &borrowed)
    })
    .await
    .map_err(AgentError::task("runner task"))?
}

/// Removes what a failed create may have left: bundle, libcontainer state, cgroup.
pub async fn cleanup(id: &str, bundle: &Path, state_dir: &Path) {
    let _ = std::fs::remove_dir_all(bundle);
    let _ = std::fs::remove_dir_all(state_dir);
    if let Err(e) = cgroup::remove(&cgroup::dir(id)).await {
        tracing::warn!(container_id = id, error = %e, "cgroup left behind");
    }
}

/// Starts the init: the runner stopped it before exec, waiting on libcontainer's notify socket.
pub async fn start_init(rt: &Runtime, c: &Container) -> Result<i32> {
    c.init.begin_start().await?;
    let pid = c.init.pid().unwrap_or(0);
    if c.backing == Backing::PodAnchor {
        // The anchor has nothing to exec: it was set up and waiting when it was created.
    } else if c.poststart_hooks {
        let request = Request::Start {
            container_id: c.id.clone(),
            state_root: rt.config.containers_root(),
        };
        run_runner(rt, request, Vec::new()).await?;
    } else {
        let dir = c.state_dir.clone();
        tokio::task::spawn_blocking(move || notify_start(&dir))
            .await
            .map_err(AgentError::task("start task"))??;
    }
    tracing::info!(container_id = %c.id, pid, "container started");
    Ok(pid)
}

fn notify_start(state_dir: &Path) -> Result<()> {
    let mut container = LcContainer::load(state_dir.to_path_buf())
        .map_err(AgentError::runtime("loading the container's state"))?;
    NotifySocket::new(state_dir.join(NOTIFY_FILE))
        .notify_container_start()
        .map_err(AgentError::runtime("notifying the container's init"))?;
    container
        .set_status(ContainerStatus::Running)
        .save()
        .map_err(AgentError::runtime("saving the container's state"))?;
    Ok(())
}

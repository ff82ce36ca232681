//! `husk-agent`: the guest's init and container runtime (see the library's docs).
//!
//! - As PID 1 (the guest): mounts, serves vsock ports 1024/1025, logs to the console and to
//!   vsock port 1026; Shutdown kills every container, syncs and resets the VM.
//! - `--host-mode --socket PATH`: the same agent on a normal Linux host (as root), serving the
//!   hybrid handshake on a Unix socket. Ends on Shutdown, SIGTERM or SIGINT.
//! - `__husk-runner` (internal): the single-threaded helper that creates and execs.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use husk_agent::config::Config;
use husk_agent::container::anchor;
use husk_agent::reaper::Reaper;
use husk_agent::sandbox::{uptime_ms, Sandbox};
use husk_agent::server::{self, Listen};
use husk_agent::{identity, init, logging, network, runner};

/// PID 1 inside a husk micro-VM: serves the agent API over vsock and runs OCI containers.
#[derive(Debug, Parser)]
#[command(name = "husk-agent", version = husk_protocol::VERSION)]
struct Args {
    /// Run on a normal Linux host (as root) instead of as a guest's init (for tests).
    #[arg(long, requires = "socket")]
    host_mode: bool,
    /// Host mode: the Unix socket to serve (hybrid handshake: `CONNECT <port>\n`).
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// State directory (libcontainer state, bundles, console sockets); keep it short.
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
}

/// The guest's state directory.
const GUEST_STATE: &str = "/run/husk-agent";

fn main() -> ExitCode {
    if std::env::args().nth(1).as_deref() == Some(runner::RUNNER_ARG) {
        return ExitCode::from(runner::child::main() as u8);
    }
    if std::env::args().nth(1).as_deref() == Some(anchor::ANCHOR_ARG) {
        return ExitCode::from(anchor::main() as u8);
    }
    if init::is_pid1() {
        guest_main()
    } else {
        host_main(Args::parse())
    }
}

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
}

/// PID 1: never returns (the VM ends with a reset).
fn guest_main() -> ExitCode {
    let init_ms = uptime_ms();
    std::panic::set_hook(Box::new(|info| {
        eprintln!("husk-agent: panic: {info}");
    }));
    let pivotable = init::make_root_pivotable();
    if let Err(e) = init::early_mounts(&mut init::SysMounter) {
        eprintln!("husk-agent: {e}");
    }
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let (rx, sinks) = logging::init(true, logging::cmdline_level(&cmdline));
    if let Err(e) = network::link_up("lo") {
        tracing::warn!("{e}");
    }
    std::env::set_var(
        "PATH",
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    );
    let result = runtime().map_err(anyhow::Error::from).and_then(|rt| {
        rt.block_on(async {
            if let Some(rx) = rx {
                let breaks = logging::Breaks::for_guest(identity::template_on(&cmdline));
                logging::connect_host_log(rx, sinks, breaks).await;
            }
            let config = Config {
                state_dir: GUEST_STATE.into(),
                exe: std::env::current_exe().unwrap_or_else(|_| "/init".into()),
                no_pivot: !pivotable,
                guest: true,
            };
            let sb = serve(config, Listen::Vsock).await?;
            let ready = sb.ready_ms.load(Ordering::Relaxed);
            // The marker the boot benchmark and tests read from the console.
            eprintln!(
                "{} init_ms={init_ms} ready_ms={ready} pivot_root={pivotable}",
                husk_protocol::AGENT_READY_MARKER
            );
            sb.shutdown.notified().await;
            finish(&sb).await;
            anyhow::Ok(())
        })
    });
    if let Err(e) = result {
        eprintln!("husk-agent: fatal: {e:#}");
    }
    init::power_off()
}

async fn serve(config: Config, listen: Listen) -> anyhow::Result<Arc<Sandbox>> {
    let reaper = Reaper::new();
    reaper.spawn().context("installing the SIGCHLD handler")?;
    let sb = Sandbox::new(config, reaper)?;
    sb.rt.oom.spawn();
    // Keep the server alive for the agent's lifetime.
    let server = server::serve(Arc::clone(&sb), listen).await?;
    std::mem::forget(server);
    sb.ready_ms.store(uptime_ms(), Ordering::Relaxed);
    tracing::info!(ready_ms = sb.ready_ms.load(Ordering::Relaxed), "serving");
    Ok(sb)
}

/// Shutdown: answer first (the RPC reply is already on its way), then kill every container.
async fn finish(sb: &Sandbox) {
    tokio::time::sleep(Duration::from_millis(50)).await;
    sb.kill_all().await;
    tracing::info!("every container killed; shutting down");
}

fn host_main(args: Args) -> ExitCode {
    let Some(socket) = args.socket.filter(|_| args.host_mode) else {
        eprintln!("husk-agent: not PID 1: run it with --host-mode --socket PATH");
        return ExitCode::from(2);
    };
    let (_, _) = logging::init(false, None);
    // SAFETY: prctl(2) PR_SET_CHILD_SUBREAPER takes an integer flag and touches no memory.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
        eprintln!(
            "husk-agent: PR_SET_CHILD_SUBREAPER: {}",
            std::io::Error::last_os_error()
        );
        return ExitCode::FAILURE;
    }
    let state_dir = args
        .state_dir
        .unwrap_or_else(|| format!("/run/husk-agent-{}", std::process::id()).into());
    let run = async {
        let config = Config {
            state_dir: state_dir.clone(),
            exe: std::env::current_exe().context("finding the agent's own binary")?,
            no_pivot: false,
            guest: false,
        };
        let sb = serve(config, Listen::Unix(socket.clone())).await?;
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        tokio::select! {
            _ = sb.shutdown.notified() => {}
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        finish(&sb).await;
        for c in sb.all() {
            let _ = sb.remove_container(&c.id, true).await;
        }
        anyhow::Ok(())
    };
    let result = runtime()
        .map_err(anyhow::Error::from)
        .and_then(|rt| rt.block_on(run));
    let _ = std::fs::remove_file(&socket);
    let _ = std::fs::remove_dir_all(&state_dir);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("husk-agent: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

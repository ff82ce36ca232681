//! The shim daemon (the binary run with `-socket`): one ttrpc server on the shim's socket with
//! containerd's Task service and, for containerd 2.x's sandbox API (`sandboxer = "shim"`), its
//! Sandbox service over the same sandbox. containerd-shim 0.11's own bootstrap registers only
//! the Task service, so the daemon is set up here: bind, register, tell the parent we serve,
//! wait for Shutdown.

use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{ExitSignal, Flags};
use containerd_shim_protos::sandbox_async::create_sandbox;
use containerd_shim_protos::shim_async::create_task;
use containerd_shim_protos::ttrpc;
use containerd_shim_protos::ttrpc::r#async::transport::Listener;

use crate::cleanup::shim_alive;
use crate::events::{self, Events};
use crate::sandbox::Sandbox;
use crate::sandbox_api::SandboxService;
use crate::task::TaskService;
use crate::vm::VmmBooter;
use crate::{config, logging};

/// Why the daemon could not serve.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// containerd always passes `-socket` to the daemon.
    #[error("the daemon needs -socket")]
    NoSocket,
    /// containerd sets `TTRPC_ADDRESS` (its own ttrpc socket, for events).
    #[error("TTRPC_ADDRESS is not set (containerd sets it for the shim)")]
    NoTtrpcAddress,
    /// Binding the shim socket.
    #[error("listening on {path}: {source}")]
    Listen {
        /// The socket path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The event publisher or the ttrpc server.
    #[error("{0}")]
    Ttrpc(#[from] ttrpc::Error),
    /// The publisher's connection to containerd.
    #[error("connecting to containerd's ttrpc socket: {0}")]
    Publisher(#[from] containerd_shim::Error),
}

/// Serves until the sandbox asks the shim to exit (Task or Sandbox Shutdown).
pub async fn serve(flags: &Flags) -> Result<(), DaemonError> {
    let socket = flags.socket.trim_start_matches("unix://");
    if socket.is_empty() {
        return Err(DaemonError::NoSocket);
    }
    let ttrpc_address = std::env::var("TTRPC_ADDRESS").map_err(|_| DaemonError::NoTtrpcAddress)?;
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    let level = if flags.debug {
        "debug".to_string()
    } else {
        config::load(None)
            .map(|l| l.config.log_level)
            .unwrap_or_else(|_| "info".into())
    };
    logging::init_daemon(&cwd, &level);
    ignore_signals();

    let Some(listener) = listen(Path::new(socket))? else {
        // Another daemon of this id already serves (containerd re-ran `start`).
        signal_server_started();
        return Ok(());
    };
    let publisher = RemotePublisher::new(&ttrpc_address).await?;
    let (events, rx) = Events::channel();
    tokio::spawn(events::forward(
        publisher.address.clone(),
        flags.namespace.clone(),
        rx,
    ));
    drop(publisher);
    let exit = Arc::new(ExitSignal::default());
    let sandbox = Arc::new(Sandbox::new(
        &flags.id,
        &flags.namespace,
        Some(PathBuf::from(socket)),
        events.clone(),
        Arc::new(VmmBooter {
            bindir: config::shim_bindir(),
        }),
        exit.clone(),
    ));
    let task = TaskService {
        sandbox: sandbox.clone(),
    };
    let sandbox_api = SandboxService { sandbox };
    let listener = Listener::try_from(listener).map_err(|source| DaemonError::Listen {
        path: PathBuf::from(socket),
        source,
    })?;
    let mut server = ttrpc::r#async::Server::new()
        .add_listener(listener)
        .register_service(create_task(Arc::new(task)))
        .register_service(create_sandbox(Arc::new(sandbox_api)));
    server.start().await?;
    signal_server_started();
    tracing::info!(
        id = flags.id.as_str(),
        namespace = flags.namespace.as_str(),
        "shim serving"
    );
    exit.wait().await;
    events.flush(Duration::from_secs(3)).await;
    tracing::info!("shim exiting");
    let _ = server.shutdown().await;
    let _ = std::fs::remove_file(socket);
    crate::vm::template::build::wait_background(crate::vm::template::build::BACKGROUND_LIMIT).await;
    Ok(())
}

/// Binds the shim socket; `None` when a live daemon already answers on it. A dead daemon's
/// socket file is replaced.
fn listen(path: &Path) -> Result<Option<UnixListener>, DaemonError> {
    let err = |source| DaemonError::Listen {
        path: path.to_path_buf(),
        source,
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(err)?;
    }
    match UnixListener::bind(path) {
        Ok(l) => Ok(Some(l)),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            if shim_alive(&format!("unix://{}", path.display())) {
                return Ok(None);
            }
            std::fs::remove_file(path).map_err(err)?;
            UnixListener::bind(path).map(Some).map_err(err)
        }
        Err(e) => Err(err(e)),
    }
}

/// The `start` action waits for the daemon's stdout to close: pointing stdout at stderr (which
/// is /dev/null for the daemon) closes the pipe without leaving fd 1 free for reuse.
fn signal_server_started() {
    // SAFETY: dup2 on the process's own standard descriptors; both are open for the process's
    // life (stderr is /dev/null, set by `start`), and no Rust object owns fd 1.
    let rc = unsafe { libc::dup2(libc::STDERR_FILENO, libc::STDOUT_FILENO) };
    if rc < 0 {
        tracing::warn!(
            "closing stdout to signal the start action: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// containerd stops a shim through Shutdown, never by signal: SIGTERM and SIGINT (a `kill` by
/// hand, a terminal's ^C) are logged and ignored, as containerd-shim does, and SIGPIPE from a
/// closed FIFO must not end the shim.
fn ignore_signals() {
    use tokio::signal::unix::{signal, SignalKind};
    let kinds = [
        ("SIGTERM", SignalKind::terminate()),
        ("SIGINT", SignalKind::interrupt()),
        ("SIGPIPE", SignalKind::pipe()),
    ];
    for (name, kind) in kinds {
        match signal(kind) {
            Ok(mut s) => {
                tokio::spawn(async move {
                    while s.recv().await.is_some() {
                        tracing::debug!("{name} received and ignored");
                    }
                });
            }
            Err(e) => tracing::warn!("handling {name}: {e}"),
        }
    }
}

//! The runner process itself: reads one request from fd 0, calls libcontainer, answers, exits.
//! Single-threaded by construction (nothing here starts a thread), which is what libcontainer's
//! raw clone needs.

use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::container::Container;
use libcontainer::error::LibcontainerError;
use libcontainer::syscall::syscall::SyscallType;

use super::seccomp::FilteredExecutor;
use super::{wire, FailureKind, Reply, Request};

/// How long the runner waits for libcontainer's init to hand over the pty master.
const CONSOLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Entry point of `husk-agent __husk-runner`. Returns the process exit code.
pub fn main() -> i32 {
    reset_signals();
    // libcontainer's own account of a failure (its container processes log before they exec;
    // stderr is the agent's, i.e. the console).
    let _ = tracing_subscriber::fmt()
        .with_env_filter(std::env::var("HUSK_RUNNER_LOG").unwrap_or_else(|_| "error".into()))
        .with_ansi(false)
        .with_writer(std::io::stderr)
        .try_init();
    // SAFETY: fd 0 is the seqpacket socket the agent passed as our stdin; we take ownership of
    // it here once, and nothing else in this process uses fd 0 as stdin.
    let sock = unsafe { OwnedFd::from_raw_fd(0) };
    let (data, fds) = match wire::recv(sock.as_fd()) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("husk-agent runner: reading the request: {e}");
            return 1;
        }
    };
    if data.is_empty() && fds.is_empty() {
        // The agent dropped this runner unused (a spare, runner::spare): nothing to do.
        return 0;
    }
    let (reply, master) = match serde_json::from_slice::<Request>(&data) {
        Ok(req) => handle(req, fds),
        Err(e) => (
            failed(FailureKind::Internal, format!("bad runner request: {e}")),
            None,
        ),
    };
    let body = serde_json::to_vec(&reply).unwrap_or_default();
    let attached: Vec<BorrowedFd<'_>> = master.iter().map(|m| m.as_fd()).collect();
    if let Err(e) = wire::send(sock.as_fd(), &body, &attached) {
        eprintln!("husk-agent runner: sending the reply: {e}");
        return 1;
    }
    0
}

fn failed(kind: FailureKind, message: String) -> Reply {
    Reply::Failed { kind, message }
}

/// Whole error chain, one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let next = s.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = s.source();
    }
    text
}

fn classify(e: &LibcontainerError) -> FailureKind {
    match e {
        LibcontainerError::InvalidInput(_)
        | LibcontainerError::InvalidID(_)
        | LibcontainerError::MissingSpec(_)
        | LibcontainerError::InvalidSpec(_)
        | LibcontainerError::Spec(_) => FailureKind::Invalid,
        _ => FailureKind::Internal,
    }
}

fn handle(req: Request, fds: Vec<OwnedFd>) -> (Reply, Option<OwnedFd>) {
    let console = match &req {
        Request::Create { console_socket, .. } | Request::Exec { console_socket, .. } => {
            console_socket.clone()
        }
        Request::Start { .. } => None,
    };
    let listener = match console.as_deref().map(listen) {
        Some(Err(e)) => {
            return (
                failed(FailureKind::Internal, format!("console socket: {e}")),
                None,
            )
        }
        Some(Ok(l)) => Some(l),
        None => None,
    };
    let result = run(req, fds, console.as_deref());
    let reply = match result {
        Ok(pid) => Reply::Ok { pid },
        Err(e) => failed(classify(&e), chain(&e)),
    };
    let master = match (&reply, listener) {
        (Reply::Ok { .. }, Some(l)) => match receive_master(&l) {
            Ok(fd) => Some(fd),
            Err(e) => {
                return (
                    failed(
                        FailureKind::Internal,
                        format!("receiving the pty master: {e}"),
                    ),
                    None,
                )
            }
        },
        _ => None,
    };
    if let Some(path) = console {
        let _ = std::fs::remove_file(path);
    }
    (reply, master)
}

fn run(req: Request, fds: Vec<OwnedFd>, console: Option<&Path>) -> Result<i32, LibcontainerError> {
    match req {
        Request::Create {
            container_id,
            state_root,
            bundle,
            no_pivot,
            ..
        } => {
            let builder = builder(container_id, state_root, fds, console)?;
            let container = builder
                .as_init(bundle)
                .with_systemd(false)
                .with_detach(true)
                .with_no_pivot(no_pivot)
                .build()?;
            Ok(container.pid().map(|p| p.as_raw()).unwrap_or(0))
        }
        Request::Exec {
            container_id,
            state_root,
            process_json,
            seccomp,
            ..
        } => {
            let mut builder = builder(container_id, state_root, fds, console)?;
            if let Some(filter) = seccomp {
                builder = builder.with_executor(FilteredExecutor::new(filter));
            }
            let pid = builder
                .as_tenant()
                .with_process(Some(process_json))
                .with_detach(true)
                .build()?;
            Ok(pid.as_raw())
        }
        Request::Start {
            container_id,
            state_root,
        } => {
            let mut container = Container::load(state_root.join(container_id))?;
            container.start()?;
            Ok(0)
        }
    }
}

/// A builder for `container_id` under `state_root` with the process's stdio: the console
/// socket when there is one, or else stdin, stdout and stderr from `fds`, in that order.
fn builder(
    container_id: String,
    state_root: PathBuf,
    fds: Vec<OwnedFd>,
    console: Option<&Path>,
) -> Result<ContainerBuilder, LibcontainerError> {
    let builder =
        ContainerBuilder::new(container_id, SyscallType::default()).with_root_path(state_root)?;
    if console.is_some() {
        return Ok(builder.with_console_socket(console));
    }
    let mut fds = fds.into_iter();
    let mut builder = builder;
    if let Some(fd) = fds.next() {
        builder = builder.with_stdin(fd);
    }
    if let Some(fd) = fds.next() {
        builder = builder.with_stdout(fd);
    }
    if let Some(fd) = fds.next() {
        builder = builder.with_stderr(fd);
    }
    Ok(builder)
}

fn listen(path: &Path) -> std::io::Result<UnixListener> {
    let _ = std::fs::remove_file(path);
    let l = UnixListener::bind(path)?;
    l.set_nonblocking(true)?;
    Ok(l)
}

/// Accepts libcontainer's console connection (made before it cloned the init) and receives the
/// pty master the init sent over it.
fn receive_master(listener: &UnixListener) -> std::io::Result<OwnedFd> {
    let deadline = Instant::now() + CONSOLE_TIMEOUT;
    let stream = loop {
        match listener.accept() {
            Ok((s, _)) => break s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(e) => return Err(e),
        }
    };
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(CONSOLE_TIMEOUT))?;
    // libcontainer's init sends the master with a short payload over this stream socket; one
    // recvmsg takes both.
    let (_, mut fds) = wire::recv(stream.as_fd())?;
    if fds.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "the container's init sent no pty master",
        ));
    }
    Ok(fds.swap_remove(0))
}

/// Gives the container processes the signal state runc gives them: every disposition default
/// (Rust ignores SIGPIPE in its binaries, and ignored signals survive exec) and nothing blocked.
fn reset_signals() {
    for sig in 1..=libc::SIGRTMAX() {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        // SAFETY: signal(2) with SIG_DFL installs no handler code; invalid numbers just fail.
        unsafe { libc::signal(sig, libc::SIG_DFL) };
    }
    let empty = nix::sys::signal::SigSet::empty();
    let _ = nix::sys::signal::sigprocmask(
        nix::sys::signal::SigmaskHow::SIG_SETMASK,
        Some(&empty),
        None,
    );
}

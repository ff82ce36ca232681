//! One process of a container (its init, or an exec): status, pid, stdio streams, and the
//! supervisor that turns the reaper's exit into a [`Finished`] only once the output streams are
//! flushed and closed ("no loss at exit").

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use husk_protocol::stdio::StreamKind;
use tokio::sync::{oneshot, watch, Notify};
use tokio::task::JoinHandle;

use super::cgroup;
use crate::conn::Conn;
use crate::error::{AgentError, Result};
use crate::reaper::Exit;
use crate::status::{Action, Status};
use crate::stdio::pipes::{AgentEnds, ProcessEnds};
use crate::stdio::streams::{pump_in, pump_out};
use crate::stdio::tty::PtyMaster;
use crate::stdio::{index, StdioRequest};

/// How long the output streams may stay open after the process exited, waiting for EOF on
/// pipes that a daemonized grandchild still holds. After that whatever the streams have is
/// closed, and the exit is reported.
pub const EXIT_DRAIN_GRACE: Duration = Duration::from_secs(3);

/// How long a start waits for a stream whose hello was accepted to attach. The stdio listener
/// writes `ok` and then attaches the connection, so a client that starts the process as soon
/// as it reads `ok` can reach the start a moment before the attach does.
pub const ATTACH_GRACE: Duration = Duration::from_secs(5);

/// A stream's place in a process: nobody yet, promised to a connection that is being answered,
/// or attached.
#[derive(Debug, Default)]
enum Slot {
    #[default]
    Empty,
    Reserved,
    Attached(Conn),
}

/// The agent's side of a process's stdio.
#[derive(Debug)]
pub enum HostIo {
    /// Pipe ends.
    Pipes(AgentEnds),
    /// The pty master.
    Pty(PtyMaster),
}

/// How a process ended, reported once its output was delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Finished {
    /// Exit status and time.
    pub exit: Exit,
    /// The container's cgroup counted an OOM kill while the process ran.
    pub oom_killed: bool,
}

#[derive(Debug, Default)]
struct State {
    status: Option<Status>,
    pid: Option<i32>,
    io: Option<HostIo>,
    process_ends: Option<ProcessEnds>,
    slots: [Slot; 3],
    pty: Option<PtyMaster>,
    size: Option<(u16, u16)>,
    pumps: Vec<JoinHandle<u64>>,
    stdin_pump: Option<JoinHandle<u64>>,
    oom_baseline: u64,
}

/// A container's init (empty `exec_id`) or one of its execs.
#[derive(Debug)]
pub struct Process {
    /// The container.
    pub container_id: String,
    /// Empty for the init process.
    pub exec_id: String,
    /// The streams the client asked for.
    pub stdio: StdioRequest,
    /// The container's cgroup (for the OOM count).
    cgroup: PathBuf,
    state: Mutex<State>,
    done: watch::Sender<Option<Finished>>,
    /// Woken when a reserved stream attaches or is given up.
    slot_changed: Notify,
}

impl Process {
    /// A process in status Created, with no pid yet.
    pub fn new(
        container_id: &str,
        exec_id: &str,
        stdio: StdioRequest,
        cgroup: PathBuf,
    ) -> Arc<Self> {
        let state = State {
            status: Some(Status::Created),
            ..Default::default()
        };
        Arc::new(Process {
            container_id: container_id.into(),
            exec_id: exec_id.into(),
            stdio,
            cgroup,
            state: Mutex::new(state),
            done: watch::channel(None).0,
            slot_changed: Notify::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Current status.
    pub fn status(&self) -> Status {
        self.lock().status.unwrap_or(Status::Stopped)
    }

    /// The pid, once the process exists.
    pub fn pid(&self) -> Option<i32> {
        self.lock().pid
    }

    /// Records the pid of the created process.
    pub fn set_pid(&self, pid: i32) {
        self.lock().pid = Some(pid);
    }

    /// The agent's ends of the stdio (pipes, or a pty master once the runner returned it).
    /// Pumps start right away when the process was already started (an exec's pty).
    pub fn set_io(&self, io: HostIo) {
        let mut st = self.lock();
        if let HostIo::Pty(m) = &io {
            if let Some((w, h)) = st.size {
                let _ = m.resize(w, h);
            }
            st.pty = Some(m.clone());
        }
        st.io = Some(io);
        if st.status == Some(Status::Running) {
            spawn_pumps(&mut st);
        }
    }

    /// Keeps the process's own stdio fds until the runner takes them (execs).
    pub fn set_process_ends(&self, ends: ProcessEnds) {
        self.lock().process_ends = Some(ends);
    }

    /// Takes the process's own stdio fds for the runner.
    pub fn take_process_ends(&self) -> Option<ProcessEnds> {
        self.lock().process_ends.take()
    }

    /// Promises `kind` to a connection that is being answered.
    pub fn reserve(&self, kind: StreamKind) -> Result<()> {
        let mut st = self.lock();
        let status = st.status.unwrap_or(Status::Stopped);
        if status != Status::Created {
            return Err(AgentError::Precondition(format!(
                "process is {status}: streams attach before it starts"
            )));
        }
        if !self.stdio.wants(kind) {
            return Err(AgentError::Precondition(format!(
                "no {kind} stream was requested for this process"
            )));
        }
        let slot = &mut st.slots[index(kind)];
        if !matches!(slot, Slot::Empty) {
            return Err(AgentError::Precondition(format!(
                "{kind} is already attached"
            )));
        }
        *slot = Slot::Reserved;
        Ok(())
    }

    /// Gives up a reservation (the client left before its answer).
    pub fn release(&self, kind: StreamKind) {
        let mut st = self.lock();
        if matches!(st.slots[index(kind)], Slot::Reserved) {
            st.slots[index(kind)] = Slot::Empty;
        }
        drop(st);
        self.slot_changed.notify_waiters();
    }

    /// Attaches the connection to a reserved stream.
    pub fn attach(&self, kind: StreamKind, conn: Conn) {
        let mut st = self.lock();
        if matches!(st.slots[index(kind)], Slot::Reserved) {
            st.slots[index(kind)] = Slot::Attached(conn);
        }
        drop(st);
        self.slot_changed.notify_waiters();
    }

    /// Created → Running once every requested stream is attached; starts the copy loops for
    /// the stdio that exists already. The caller then starts the process itself. A stream that
    /// was never asked for fails at once; one whose hello was accepted and is attaching is
    /// waited for, up to [`ATTACH_GRACE`].
    pub async fn begin_start(&self) -> Result<()> {
        let deadline = tokio::time::Instant::now() + ATTACH_GRACE;
        loop {
            let changed = self.slot_changed.notified();
            tokio::pin!(changed);
            // Registered before the check, so an attach between the check and the wait wakes it.
            changed.as_mut().enable();
            let Some(kind) = self.try_begin_start()? else {
                return Ok(());
            };
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return Err(AgentError::Precondition(format!(
                    "the {kind} stream did not attach within {} s of its hello",
                    ATTACH_GRACE.as_secs()
                )));
            }
        }
    }

    /// [`Process::begin_start`] without waiting: `Some(kind)` while `kind` is still attaching.
    fn try_begin_start(&self) -> Result<Option<StreamKind>> {
        let mut st = self.lock();
        let status = st.status.unwrap_or(Status::Stopped);
        status.check(Action::Start)?;
        let mut attaching = None;
        for kind in self.stdio.kinds() {
            match st.slots[index(kind)] {
                Slot::Attached(_) => {}
                Slot::Reserved => attaching = attaching.or(Some(kind)),
                Slot::Empty => {
                    return Err(AgentError::Precondition(format!(
                        "the {kind} stream is not attached yet"
                    )))
                }
            }
        }
        if attaching.is_some() {
            return Ok(attaching);
        }
        st.oom_baseline = cgroup::oom_kills(&self.cgroup);
        st.status = Some(Status::Running);
        spawn_pumps(&mut st);
        Ok(None)
    }

    /// The process could not be started: it is Stopped with status 255 (as runc's exec fails).
    pub fn fail_start(&self) {
        let mut st = self.lock();
        st.status = Some(Status::Stopped);
        for p in st.pumps.drain(..) {
            p.abort();
        }
        if let Some(p) = st.stdin_pump.take() {
            p.abort();
        }
        st.io = None;
        st.pty = None;
        st.slots = Default::default();
        drop(st);
        self.done.send_replace(Some(Finished {
            exit: Exit {
                status: 255,
                at: std::time::SystemTime::now(),
            },
            oom_killed: false,
        }));
    }

    /// Sends `signal` to the process.
    pub fn signal(&self, signal: i32) -> Result<()> {
        let st = self.lock();
        st.status.unwrap_or(Status::Stopped).check(Action::Signal)?;
        let pid = st
            .pid
            .ok_or_else(|| AgentError::Precondition("the process has not been started".into()))?;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::try_from(signal)
                .map_err(|_| AgentError::InvalidArgument(format!("bad signal {signal}")))?,
        )
        .map_err(|e| AgentError::io(format!("kill({pid}, {signal})"))(e.into()))
    }

    /// Sets the terminal size (kept until the pty exists).
    pub fn resize(&self, width: u16, height: u16) -> Result<()> {
        if !self.stdio.terminal {
            return Err(AgentError::Precondition(
                "the process has no terminal".into(),
            ));
        }
        let mut st = self.lock();
        st.status.unwrap_or(Status::Stopped).check(Action::Resize)?;
        st.size = Some((width, height));
        if let Some(pty) = &st.pty {
            pty.resize(width, height)
                .map_err(AgentError::io("TIOCSWINSZ on the pty master"))?;
        }
        Ok(())
    }

    /// Waits for the exit (process gone, output delivered, streams closed).
    pub async fn wait(&self) -> Finished {
        let mut rx = self.done.subscribe();
        loop {
            if let Some(f) = *rx.borrow_and_update() {
                return f;
            }
            if rx.changed().await.is_err() {
                // The sender lives as long as self; unreachable in practice.
                std::future::pending::<()>().await;
            }
        }
    }

    /// The result, if the process finished.
    pub fn finished(&self) -> Option<Finished> {
        *self.done.borrow()
    }

    /// Watches for the exit the reaper reports on `exit`, then drains the output (bounded by
    /// [`EXIT_DRAIN_GRACE`]), runs `after_exit` and publishes the result.
    pub fn supervise(
        self: &Arc<Self>,
        exit: oneshot::Receiver<Exit>,
        after_exit: impl FnOnce(&Finished) + Send + 'static,
    ) {
        let me = Arc::clone(self);
        tokio::spawn(async move {
            let Ok(exit) = exit.await else { return };
            let (pumps, baseline) = {
                let mut st = me.lock();
                st.status = Some(Status::Stopped);
                if let Some(p) = st.stdin_pump.take() {
                    p.abort();
                }
                // Never-started processes: their streams close now.
                st.slots = Default::default();
                st.io = None;
                (std::mem::take(&mut st.pumps), st.oom_baseline)
            };
            let aborts: Vec<_> = pumps.iter().map(|p| p.abort_handle()).collect();
            let all = futures::future::join_all(pumps);
            if tokio::time::timeout(EXIT_DRAIN_GRACE, all).await.is_err() {
                tracing::info!(
                    container_id = %me.container_id,
                    exec_id = %me.exec_id,
                    "output still open {EXIT_DRAIN_GRACE:?} after exit (a child holds it); closing"
                );
                for a in aborts {
                    a.abort();
                }
            }
            me.lock().pty = None;
            let finished = Finished {
                exit,
                oom_killed: cgroup::oom_kills(&me.cgroup) > baseline,
            };
            tracing::info!(
                container_id = %me.container_id,
                exec_id = %me.exec_id,
                status = exit.status,
                oom_killed = finished.oom_killed,
                "process exited"
            );
            after_exit(&finished);
            me.done.send_replace(Some(finished));
        });
    }
}

fn take_conn(st: &mut State, kind: StreamKind) -> Option<Conn> {
    match std::mem::take(&mut st.slots[index(kind)]) {
        Slot::Attached(c) => Some(c),
        _ => None,
    }
}

/// Starts the copy loops once both the agent's ends and the streams are there.
fn spawn_pumps(st: &mut State) {
    let Some(io) = st.io.take() else { return };
    let stdin = take_conn(st, StreamKind::Stdin);
    let stdout = take_conn(st, StreamKind::Stdout);
    let stderr = take_conn(st, StreamKind::Stderr);
    match io {
        HostIo::Pipes(ends) => {
            if let (Some(conn), Some(fd)) = (stdin, ends.stdin) {
                match tokio::net::unix::pipe::Sender::from_owned_fd(fd) {
                    Ok(w) => st.stdin_pump = Some(tokio::spawn(pump_in(conn, w))),
                    Err(e) => tracing::warn!(error = %e, "stdin pipe"),
                }
            }
            for (conn, fd) in [(stdout, ends.stdout), (stderr, ends.stderr)] {
                let Some(fd) = fd else { continue };
                match tokio::net::unix::pipe::Receiver::from_owned_fd(fd) {
                    Ok(r) => st.pumps.push(tokio::spawn(pump_out(r, conn))),
                    Err(e) => tracing::warn!(error = %e, "output pipe"),
                }
            }
        }
        HostIo::Pty(master) => {
            if let Some(conn) = stdin {
                st.stdin_pump = Some(tokio::spawn(pump_in(conn, master.clone())));
            }
            st.pumps.push(tokio::spawn(pump_out(master, stdout)));
        }
    }
}

#[cfg(test)]
mod tests;

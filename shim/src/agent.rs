//! The shim's side of the agent API: one ttrpc client over a hybrid-vsock connection
//! (`protocol::client`, shared with the tests), typed calls whose errors keep the agent's ttrpc
//! code, and the boot-time health poll.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use containerd_shim_protos::ttrpc::asynchronous::transport::Socket;
use containerd_shim_protos::ttrpc::{self, context, Code};
use husk_protocol::agent::api;
use husk_protocol::agent::service::AgentClient;
pub use husk_protocol::client::hybrid_connect;
use husk_protocol::ports;
use tokio::net::UnixStream;

/// Deadline for ordinary calls (everything but the waits, which block until an event).
const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// Deadline for one health check while booting.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest pause between two readiness polls while the guest boots. A refused attempt costs a
/// Unix connect and one vsock request the guest kernel resets, so polling often is cheap, and
/// every millisecond between the agent listening and the next poll is pod start latency.
const POLL_MAX: Duration = Duration::from_millis(40);

/// A failed agent call.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The agent answered with an error status; its code reaches containerd unchanged.
    #[error("agent {call}: {message}")]
    Rpc {
        /// The RPC.
        call: &'static str,
        /// The agent's code.
        code: Code,
        /// The agent's message.
        message: String,
    },
    /// The connection failed or closed (the VM stopped?).
    #[error("agent {call}: {detail}")]
    Transport {
        /// The RPC.
        call: &'static str,
        /// What ttrpc said.
        detail: String,
    },
    /// The agent speaks another API version.
    #[error("the guest agent {agent_version} speaks agent API {got}; this shim needs {want}")]
    Version {
        /// The agent's version string.
        agent_version: String,
        /// Its API version.
        got: u32,
        /// Ours.
        want: u32,
    },
}

impl AgentError {
    /// The ttrpc code to report to containerd.
    pub fn code(&self) -> Code {
        match self {
            AgentError::Rpc { code, .. } => *code,
            AgentError::Transport { .. } => Code::UNAVAILABLE,
            AgentError::Version { .. } => Code::FAILED_PRECONDITION,
        }
    }

    /// Whether the call failed on the connection (the agent, or its VM, went away).
    pub fn is_transport(&self) -> bool {
        matches!(self, AgentError::Transport { .. })
    }

    /// Whether the agent said NOT_FOUND.
    pub fn is_not_found(&self) -> bool {
        matches!(self, AgentError::Rpc { code, .. } if *code == Code::NOT_FOUND)
    }

    fn from_ttrpc(call: &'static str, e: ttrpc::Error) -> Self {
        match e {
            ttrpc::Error::RpcStatus(s) => AgentError::Rpc {
                call,
                code: s.code(),
                message: s.message().to_string(),
            },
            other => AgentError::Transport {
                call,
                detail: other.to_string(),
            },
        }
    }
}

/// A connected agent. Cheap to clone: clones share one ttrpc connection.
#[derive(Clone)]
pub struct Agent {
    client: AgentClient,
    socket: PathBuf,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("socket", &self.socket)
            .finish()
    }
}

fn ctx() -> context::Context {
    context::with_duration(CALL_TIMEOUT)
}

macro_rules! calls {
    ($($(#[$doc:meta])* $name:ident($req:ty) -> $resp:ty;)*) => {
        $(
            $(#[$doc])*
            pub async fn $name(&self, req: &$req) -> Result<$resp, AgentError> {
                self.client
                    .$name(ctx(), req)
                    .await
                    .map_err(|e| AgentError::from_ttrpc(stringify!($name), e))
            }
        )*
    };
}

impl Agent {
    /// Connects to the agent's ttrpc port through `socket` (husk-vmm's vsock socket, or the
    /// agent's own socket in host mode).
    pub async fn connect(socket: &Path) -> std::io::Result<Agent> {
        let stream = hybrid_connect(socket, ports::AGENT_PORT).await?;
        let client = ttrpc::asynchronous::Client::new(Socket::new(stream));
        Ok(Agent {
            client: AgentClient::new(client),
            socket: socket.to_path_buf(),
        })
    }

    /// Opens a stdio stream connection (port 1025) to the same VM.
    pub async fn stdio_connection(&self) -> std::io::Result<UnixStream> {
        hybrid_connect(&self.socket, ports::STDIO_PORT).await
    }

    /// One health check with a short deadline.
    pub async fn check(&self) -> Result<api::CheckResponse, AgentError> {
        let resp = self
            .client
            .check(
                context::with_duration(CHECK_TIMEOUT),
                &api::CheckRequest::new(),
            )
            .await
            .map_err(|e| AgentError::from_ttrpc("check", e))?;
        if resp.api_version != husk_protocol::agent::API_VERSION {
            return Err(AgentError::Version {
                agent_version: resp.agent_version.clone(),
                got: resp.api_version,
                want: husk_protocol::agent::API_VERSION,
            });
        }
        Ok(resp)
    }

    calls! {
        /// Restored: the pod's entropy, clock and log stream in a VM restored from a template.
        restored(api::RestoredRequest) -> api::RestoredResponse;
        /// SetupSandbox.
        setup_sandbox(api::SetupSandboxRequest) -> api::Empty;
        /// CreateContainer.
        create_container(api::CreateContainerRequest) -> api::CreateContainerResponse;
        /// ExecProcess.
        exec_process(api::ExecProcessRequest) -> api::Empty;
        /// StartProcess.
        start_process(api::ProcessRef) -> api::StartProcessResponse;
        /// SignalProcess.
        signal_process(api::SignalRequest) -> api::Empty;
        /// DeleteProcess.
        delete_process(api::ProcessRef) -> api::Empty;
        /// RemoveContainer.
        remove_container(api::RemoveContainerRequest) -> api::Empty;
        /// ResizeTty.
        resize_tty(api::ResizeTtyRequest) -> api::Empty;
        /// ListProcesses.
        list_processes(api::ContainerRef) -> api::ListProcessesResponse;
        /// Stats.
        stats(api::ContainerRef) -> api::StatsResponse;
        /// UpdateContainer.
        update_container(api::UpdateContainerRequest) -> api::Empty;
        /// PauseContainer.
        pause_container(api::ContainerRef) -> api::Empty;
        /// ResumeContainer.
        resume_container(api::ContainerRef) -> api::Empty;
    }

    /// Shutdown, with a short deadline (the agent answers, then ends the VM).
    pub async fn shutdown(&self, limit: Duration) -> Result<api::Empty, AgentError> {
        self.client
            .shutdown(context::with_duration(limit), &api::ShutdownRequest::new())
            .await
            .map_err(|e| AgentError::from_ttrpc("shutdown", e))
    }

    /// WaitProcess: blocks until the process exited and its output streams closed.
    pub async fn wait_process(
        &self,
        req: &api::ProcessRef,
    ) -> Result<api::WaitResponse, AgentError> {
        self.client
            .wait_process(context::Context::default(), req)
            .await
            .map_err(|e| AgentError::from_ttrpc("wait_process", e))
    }

    /// WaitOomEvent: blocks until some container records an OOM kill.
    pub async fn wait_oom_event(&self) -> Result<api::OomEvent, AgentError> {
        self.client
            .wait_oom_event(context::Context::default(), &api::Empty::new())
            .await
            .map_err(|e| AgentError::from_ttrpc("wait_oom_event", e))
    }
}

/// Why the agent never became ready.
#[derive(Debug)]
pub struct NotReady {
    /// The last thing that went wrong, for the error message.
    pub last_error: String,
    /// Whether husk-vmm ever created its vsock socket.
    pub socket_seen: bool,
    /// Whether a CONNECT was ever answered (something listened on the agent port).
    pub connected: bool,
}

/// Polls the agent with backoff until it answers `Check` or `deadline` passes.
pub async fn wait_ready(
    socket: &Path,
    deadline: Instant,
) -> Result<(Agent, api::CheckResponse), NotReady> {
    let mut delay = Duration::from_millis(10);
    let mut state = NotReady {
        last_error: "no attempt was made".into(),
        socket_seen: false,
        connected: false,
    };
    let started = Instant::now();
    let mut attempt = 0u32;
    let (mut logged, mut reasons) = (String::new(), 0u32);
    loop {
        attempt += 1;
        if socket.exists() {
            state.socket_seen = true;
        }
        let connect = async {
            let agent = Agent::connect(socket).await.map_err(|e| e.to_string())?;
            Ok::<_, String>(agent)
        };
        match tokio::time::timeout(CHECK_TIMEOUT, connect).await {
            Ok(Ok(agent)) => {
                state.connected = true;
                match agent.check().await {
                    Ok(resp) => return Ok((agent, resp)),
                    Err(e @ AgentError::Version { .. }) => {
                        state.last_error = e.to_string();
                        return Err(state);
                    }
                    Err(e) => state.last_error = e.to_string(),
                }
            }
            Ok(Err(e)) => state.last_error = e,
            Err(_) => state.last_error = "connecting timed out".into(),
        }
        // A new reason (the first few only: the guest words some of them), and a reminder every
        // 25 attempts (a cold boot polls ~50 times); each at most 256 characters.
        let new_reason = state.last_error != logged && reasons < 8;
        if new_reason || attempt % 25 == 0 {
            reasons += u32::from(new_reason);
            let reason: String = state.last_error.chars().take(256).collect();
            tracing::debug!(
                attempt,
                ms = started.elapsed().as_millis() as u64,
                "the agent does not answer yet: {reason}"
            );
            logged.clone_from(&state.last_error);
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(state);
        }
        tokio::time::sleep(delay.min(deadline - now)).await;
        delay = (delay * 3 / 2).min(POLL_MAX);
    }
}

//! A client for husk-agent as the shim will use it: the hybrid handshake (`CONNECT <port>\n` →
//! `OK <n>\n`), ttrpc on port 1024, stdio streams on port 1025; and [`HostAgent`], an agent in
//! host mode (`--host-mode --socket`) for tests.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use husk_protocol::agent::api;
use husk_protocol::agent::service::AgentClient;
use husk_protocol::client::{hybrid_connect, read_line};
use husk_protocol::ports::{AGENT_PORT, STDIO_PORT};
use husk_protocol::stdio::{parse_answer, StdioHello, StreamKind};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// The ttrpc context tests use (generous: the test host runs at emulation speed).
pub fn ctx() -> ttrpc::context::Context {
    ttrpc::context::with_timeout(Duration::from_secs(120).as_nanos() as i64)
}

/// Connects to `port` through the hybrid socket `socket` (the shim's client,
/// `husk_protocol::client`), bounded by [`CONNECT_TIMEOUT`].
pub async fn connect(socket: &Path, port: u32) -> std::io::Result<UnixStream> {
    tokio::time::timeout(CONNECT_TIMEOUT, hybrid_connect(socket, port))
        .await
        .unwrap_or_else(|_| {
            Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no answer to CONNECT {port} within {CONNECT_TIMEOUT:?} (guest hung?)"),
            ))
        })
}

/// How long a hybrid vsock CONNECT may take to be answered.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(60);
/// How long an output stream may stay open once a test collects it.
const COLLECT_TIMEOUT: Duration = Duration::from_secs(120);

/// A ttrpc client of the agent behind `socket`.
pub async fn client(socket: &Path) -> std::io::Result<AgentClient> {
    let s = connect(socket, AGENT_PORT).await?;
    let c = ttrpc::asynchronous::Client::new(ttrpc::asynchronous::transport::Socket::new(s));
    Ok(AgentClient::new(c))
}

/// Opens a stdio stream; `Err` carries the agent's refusal.
pub async fn open_stream(
    socket: &Path,
    container_id: &str,
    exec_id: &str,
    kind: StreamKind,
) -> Result<UnixStream, String> {
    let mut s = connect(socket, STDIO_PORT)
        .await
        .map_err(|e| e.to_string())?;
    let hello = StdioHello {
        container_id: container_id.into(),
        exec_id: exec_id.into(),
        kind,
    };
    s.write_all(hello.line().as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let line = read_line(&mut s, husk_protocol::stdio::MAX_LINE)
        .await
        .map_err(|e| e.to_string())?;
    parse_answer(&line)?;
    Ok(s)
}

/// The stdio message for a request.
pub fn stdio(stdin: bool, stdout: bool, stderr: bool, terminal: bool) -> api::Stdio {
    api::Stdio {
        stdin,
        stdout,
        stderr,
        terminal,
        ..Default::default()
    }
}

/// The ttrpc code of a failed call.
pub fn code_of(e: &ttrpc::Error) -> Option<ttrpc::Code> {
    match e {
        ttrpc::Error::RpcStatus(s) => Some(s.code()),
        _ => None,
    }
}

/// Attached output streams, read to EOF in the background.
#[derive(Debug)]
pub struct Output {
    out: Option<tokio::task::JoinHandle<Vec<u8>>>,
    err: Option<tokio::task::JoinHandle<Vec<u8>>>,
    /// The stdin stream, when asked for.
    pub stdin: Option<UnixStream>,
}

impl Output {
    /// Opens the streams `s` names for a process and starts reading stdout/stderr.
    pub async fn attach(
        socket: &Path,
        cid: &str,
        eid: &str,
        s: &api::Stdio,
    ) -> Result<Output, String> {
        let mut o = Output {
            out: None,
            err: None,
            stdin: None,
        };
        if s.stdin {
            o.stdin = Some(open_stream(socket, cid, eid, StreamKind::Stdin).await?);
        }
        let reader = |mut st: UnixStream| {
            tokio::spawn(async move {
                let mut v = Vec::new();
                let _ = st.read_to_end(&mut v).await;
                v
            })
        };
        if s.stdout {
            o.out = Some(reader(
                open_stream(socket, cid, eid, StreamKind::Stdout).await?,
            ));
        }
        if s.stderr && !s.terminal {
            o.err = Some(reader(
                open_stream(socket, cid, eid, StreamKind::Stderr).await?,
            ));
        }
        Ok(o)
    }

    /// Waits for both output streams' EOF: (stdout, stderr). Panics, naming the stream, when
    /// one stays open for [`COLLECT_TIMEOUT`] (a hung guest must fail the test, not stall it).
    pub async fn collect(self) -> (Vec<u8>, Vec<u8>) {
        let get = |h: Option<tokio::task::JoinHandle<Vec<u8>>>, name: &'static str| async move {
            let Some(mut h) = h else {
                return Vec::new();
            };
            match tokio::time::timeout(COLLECT_TIMEOUT, &mut h).await {
                Ok(v) => v.unwrap_or_default(),
                Err(_) => {
                    h.abort();
                    panic!("{name} did not reach EOF within {COLLECT_TIMEOUT:?} (guest hung?)")
                }
            }
        };
        (get(self.out, "stdout").await, get(self.err, "stderr").await)
    }
}

/// husk-agent in host mode, killed (with everything it runs) on drop.
#[derive(Debug)]
pub struct HostAgent {
    child: Child,
    /// The hybrid socket.
    pub socket: PathBuf,
    /// Its state directory.
    pub state_dir: PathBuf,
    _dir: tempfile::TempDir,
}

impl HostAgent {
    /// The agent binary: `HUSK_AGENT` (the static build `make e2e` uses).
    pub fn binary() -> PathBuf {
        let p = PathBuf::from(std::env::var_os("HUSK_AGENT").unwrap_or_else(|| {
            panic!("HUSK_AGENT is not set: run agent tests with `make e2e` (it builds the static agent)")
        }));
        assert!(
            p.is_file(),
            "HUSK_AGENT={} does not exist (run `make agent`)",
            p.display()
        );
        p
    }

    /// Starts the agent and waits for its socket.
    pub fn start() -> HostAgent {
        let dir = tempfile::Builder::new()
            .prefix("ha")
            .tempdir_in("/tmp")
            .expect("temp dir");
        let socket = dir.path().join("a.sock");
        let state_dir = dir.path().join("s");
        let mut cmd = Command::new(Self::binary());
        cmd.arg("--host-mode")
            .arg("--socket")
            .arg(&socket)
            .arg("--state-dir")
            .arg(&state_dir)
            .stdin(Stdio::null());
        crate::process::kill_with_parent(&mut cmd);
        let child = cmd.spawn().expect("starting husk-agent");
        // Serving means accepting connections (the socket file exists a moment earlier).
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::os::unix::net::UnixStream::connect(&socket).is_err() {
            assert!(
                Instant::now() < deadline,
                "husk-agent does not serve {}",
                socket.display()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        HostAgent {
            child,
            socket,
            state_dir,
            _dir: dir,
        }
    }

    /// The agent's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops the agent with SIGTERM (it kills and removes its containers) and returns its exit code.
    pub fn stop(mut self) -> Option<i32> {
        // SAFETY: kill(2) on our own unreaped child.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let status =
            crate::process::wait_until(&mut self.child, Instant::now() + Duration::from_secs(30))
                .ok()
                .flatten();
        status.map(crate::process::shell_code)
    }
}

impl Drop for HostAgent {
    /// SIGTERM first, so the agent removes its containers (a failed test leaves nothing for the
    /// next one); SIGKILL if it does not end within 20 s.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // SAFETY: kill(2) on our own unreaped child.
            unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(20);
            if !matches!(
                crate::process::wait_until(&mut self.child, deadline),
                Ok(Some(_))
            ) {
                let _ = crate::process::kill_and_reap(&mut self.child, false);
            }
        }
    }
}

/// Runs one container to completion: create, attach, start, wait, remove. Returns (exit status,
/// stdout, stderr).
pub async fn run(
    socket: &Path,
    c: &AgentClient,
    id: &str,
    spec: &serde_json::Value,
    s: api::Stdio,
) -> Result<(u32, Vec<u8>, Vec<u8>), ttrpc::Error> {
    c.create_container(
        ctx(),
        &api::CreateContainerRequest {
            container_id: id.into(),
            spec_json: serde_json::to_vec(spec).expect("spec"),
            stdio: Some(s.clone()).into(),
            ..Default::default()
        },
    )
    .await?;
    let out = Output::attach(socket, id, "", &s)
        .await
        .map_err(ttrpc::Error::Others)?;
    c.start_process(ctx(), &pref(id, "")).await?;
    let w = c.wait_process(ctx(), &pref(id, "")).await?;
    let (o, e) = out.collect().await;
    c.remove_container(
        ctx(),
        &api::RemoveContainerRequest {
            container_id: id.into(),
            ..Default::default()
        },
    )
    .await?;
    Ok((w.exit_status, o, e))
}

/// A ProcessRef.
pub fn pref(cid: &str, eid: &str) -> api::ProcessRef {
    api::ProcessRef {
        container_id: cid.into(),
        exec_id: eid.into(),
        ..Default::default()
    }
}

/// A ContainerRef.
pub fn cref(cid: &str) -> api::ContainerRef {
    api::ContainerRef {
        container_id: cid.into(),
        ..Default::default()
    }
}

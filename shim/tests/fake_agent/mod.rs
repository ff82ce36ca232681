//! An in-process stand-in for husk-agent, served the way husk-vmm serves the real one: a Unix
//! socket with the hybrid-vsock handshake, ttrpc on port 1024, stdio streams on port 1025.
//! Its "processes" are scripted by their args:
//! - `echo WORDS...`: prints the words and a newline, exits 0;
//! - `exit N`: exits N;
//! - `burst N`: writes N bytes (`x`) to stdout, exits 0;
//! - `cat`: copies stdin to stdout until end-of-file, exits 0;
//! - `sleep`: waits for a signal, exits 128 + its number;
//! - `err WORDS...`: prints the words to stderr, exits 1.

#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use containerd_shim_protos::ttrpc::asynchronous::transport::Listener;
use containerd_shim_protos::ttrpc::asynchronous::{Server, TtrpcContext};
use containerd_shim_protos::ttrpc::{self, Code};
use husk_protocol::agent::api;
use husk_protocol::agent::service::{create_agent, Agent};
use husk_protocol::stdio::{answer_line, StdioHello, StreamKind};
use husk_protocol::{hybrid, ports, VmmExit};
use husk_shim::agent::Agent as AgentClient;
use husk_shim::vm::{BootError, BootRequest, Booter, Vm, VmGone};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, watch};

fn status(code: Code, msg: impl ToString) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, msg))
}

#[derive(Default)]
struct Proc {
    args: Vec<String>,
    want: api::Stdio,
    streams: HashMap<&'static str, UnixStream>,
    started: bool,
    pid: u32,
    exit: Option<watch::Receiver<Option<u32>>>,
    signal: Option<mpsc::UnboundedSender<u32>>,
}

/// What the fake saw, for assertions.
#[derive(Debug, Default, Clone)]
pub struct Seen {
    pub hostname: Option<String>,
    pub mounts: Vec<String>,
    pub specs: HashMap<String, serde_json::Value>,
    pub removed: Vec<String>,
    pub shutdown: bool,
    pub paused: Vec<String>,
}

/// The fake agent.
pub struct FakeAgent {
    procs: Mutex<HashMap<(String, String), Proc>>,
    next_pid: Mutex<u32>,
    pub seen: Mutex<Seen>,
    gone: watch::Sender<Option<VmGone>>,
    /// The "VM" dies right after the next CreateContainer answers: stdio connections are then
    /// closed unanswered, as husk-vmm closes them for a guest that is gone.
    die_after_create: std::sync::atomic::AtomicBool,
    dead: std::sync::atomic::AtomicBool,
}

fn key(cid: &str, eid: &str) -> (String, String) {
    (cid.to_string(), eid.to_string())
}

fn args_of(process: &serde_json::Value) -> Vec<String> {
    process["args"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

impl FakeAgent {
    fn add(
        &self,
        cid: &str,
        eid: &str,
        args: Vec<String>,
        want: api::Stdio,
    ) -> Result<u32, ttrpc::Error> {
        let mut procs = self.procs.lock().unwrap();
        if procs.contains_key(&key(cid, eid)) {
            return Err(status(Code::ALREADY_EXISTS, format!("{cid}/{eid} exists")));
        }
        let mut n = self.next_pid.lock().unwrap();
        *n += 1;
        procs.insert(
            key(cid, eid),
            Proc {
                args,
                want,
                pid: *n,
                ..Default::default()
            },
        );
        Ok(*n)
    }

    /// Makes the "VM" triple fault right after the next CreateContainer answers.
    pub fn die_after_next_create(&self) {
        self.die_after_create
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Ends the "VM" as a crash would.
    pub fn crash(&self) {
        let _ = self.gone.send(Some(VmGone {
            exit: VmmExit::Signal(9),
            detail: "fake crash".into(),
        }));
    }
}

async fn run_proc(
    args: Vec<String>,
    mut streams: HashMap<&'static str, UnixStream>,
    mut signals: mpsc::UnboundedReceiver<u32>,
) -> u32 {
    let mut out = streams.remove("stdout");
    let mut err = streams.remove("stderr");
    let mut stdin = streams.remove("stdin");
    let word = args.first().map(String::as_str).unwrap_or("");
    let rest = args.get(1..).unwrap_or_default().join(" ");
    let code = match word {
        "echo" => {
            if let Some(o) = out.as_mut() {
                let _ = o.write_all(format!("{rest}\n").as_bytes()).await;
            }
            0
        }
        "err" => {
            if let Some(e) = err.as_mut() {
                let _ = e.write_all(format!("{rest}\n").as_bytes()).await;
            }
            1
        }
        "exit" => rest.parse().unwrap_or(0),
        "burst" => {
            let n: usize = rest.parse().unwrap_or(0);
            if let Some(o) = out.as_mut() {
                let _ = o.write_all(&vec![b'x'; n]).await;
            }
            0
        }
        "cat" => {
            if let (Some(i), Some(o)) = (stdin.as_mut(), out.as_mut()) {
                let _ = tokio::io::copy(i, o).await;
            }
            0
        }
        "sleep" => match signals.recv().await {
            Some(sig) => 128 + sig,
            None => 137,
        },
        _ => 127,
    };
    // The agent closes the output streams only once the process exited and all was sent.
    if let Some(mut o) = out {
        let _ = o.shutdown().await;
    }
    if let Some(mut e) = err {
        let _ = e.shutdown().await;
    }
    code
}

#[async_trait]
impl Agent for FakeAgent {
    async fn check(
        &self,
        _: &TtrpcContext,
        _: api::CheckRequest,
    ) -> ttrpc::Result<api::CheckResponse> {
        let mut r = api::CheckResponse::new();
        r.agent_version = "fake".into();
        r.api_version = husk_protocol::agent::API_VERSION;
        r.kernel_release = "6.1.0-husk-fake".into();
        Ok(r)
    }

    async fn setup_sandbox(
        &self,
        _: &TtrpcContext,
        req: api::SetupSandboxRequest,
    ) -> ttrpc::Result<api::Empty> {
        let mut seen = self.seen.lock().unwrap();
        seen.hostname = Some(req.hostname.clone());
        seen.mounts = req
            .mounts
            .iter()
            .map(|m| format!("{} {} {}", m.source, m.fstype, m.target))
            .collect();
        Ok(api::Empty::new())
    }

    async fn create_container(
        &self,
        _: &TtrpcContext,
        req: api::CreateContainerRequest,
    ) -> ttrpc::Result<api::CreateContainerResponse> {
        let spec: serde_json::Value = serde_json::from_slice(&req.spec_json)
            .map_err(|e| status(Code::INVALID_ARGUMENT, e))?;
        let args = args_of(&spec["process"]);
        self.seen
            .lock()
            .unwrap()
            .specs
            .insert(req.container_id.clone(), spec);
        let pid = self.add(
            &req.container_id,
            "",
            args,
            req.stdio.clone().unwrap_or_default(),
        )?;
        if self
            .die_after_create
            .swap(false, std::sync::atomic::Ordering::SeqCst)
        {
            self.dead.store(true, std::sync::atomic::Ordering::SeqCst);
            let _ = self.gone.send(Some(VmGone {
                exit: VmmExit::GuestShutdown,
                detail: "guest shut down (vCPU 0: triple fault)".into(),
            }));
        }
        let mut r = api::CreateContainerResponse::new();
        r.pid = pid;
        Ok(r)
    }

    async fn exec_process(
        &self,
        _: &TtrpcContext,
        req: api::ExecProcessRequest,
    ) -> ttrpc::Result<api::Empty> {
        let process: serde_json::Value = serde_json::from_slice(&req.process_json)
            .map_err(|e| status(Code::INVALID_ARGUMENT, e))?;
        self.add(
            &req.container_id,
            &req.exec_id,
            args_of(&process),
            req.stdio.clone().unwrap_or_default(),
        )?;
        Ok(api::Empty::new())
    }

    async fn start_process(
        &self,
        _: &TtrpcContext,
        req: api::ProcessRef,
    ) -> ttrpc::Result<api::StartProcessResponse> {
        let mut procs = self.procs.lock().unwrap();
        let p = procs
            .get_mut(&key(&req.container_id, &req.exec_id))
            .ok_or_else(|| status(Code::NOT_FOUND, "no such process"))?;
        if p.started {
            return Err(status(Code::FAILED_PRECONDITION, "already started"));
        }
        for (name, wanted) in [
            ("stdin", p.want.stdin),
            ("stdout", p.want.stdout),
            ("stderr", p.want.stderr),
        ] {
            if wanted && !p.streams.contains_key(name) {
                return Err(status(
                    Code::FAILED_PRECONDITION,
                    format!("{name} not attached"),
                ));
            }
        }
        p.started = true;
        let (tx, rx) = watch::channel(None);
        let (sig_tx, sig_rx) = mpsc::unbounded_channel();
        p.exit = Some(rx);
        p.signal = Some(sig_tx);
        let streams = std::mem::take(&mut p.streams);
        let args = p.args.clone();
        tokio::spawn(async move {
            let code = run_proc(args, streams, sig_rx).await;
            let _ = tx.send(Some(code));
        });
        let mut r = api::StartProcessResponse::new();
        r.pid = p.pid;
        Ok(r)
    }

    async fn signal_process(
        &self,
        _: &TtrpcContext,
        req: api::SignalRequest,
    ) -> ttrpc::Result<api::Empty> {
        let procs = self.procs.lock().unwrap();
        let p = procs
            .get(&key(&req.container_id, &req.exec_id))
            .ok_or_else(|| status(Code::NOT_FOUND, "no such process"))?;
        let exited = p.exit.as_ref().is_some_and(|e| e.borrow().is_some());
        if exited {
            return Err(status(Code::FAILED_PRECONDITION, "the process exited"));
        }
        if let Some(s) = &p.signal {
            let _ = s.send(req.signal);
        }
        Ok(api::Empty::new())
    }

    async fn wait_process(
        &self,
        _: &TtrpcContext,
        req: api::ProcessRef,
    ) -> ttrpc::Result<api::WaitResponse> {
        let rx = {
            let procs = self.procs.lock().unwrap();
            let p = procs
                .get(&key(&req.container_id, &req.exec_id))
                .ok_or_else(|| status(Code::NOT_FOUND, "no such process"))?;
            p.exit
                .clone()
                .ok_or_else(|| status(Code::FAILED_PRECONDITION, "not started"))?
        };
        let mut rx = rx;
        let code = async move { rx.wait_for(Option::is_some).await.ok().and_then(|c| *c) }
            .await
            .unwrap_or(255);
        let mut r = api::WaitResponse::new();
        r.exit_status = code;
        r.exited_at_ns = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
        Ok(r)
    }

    async fn delete_process(
        &self,
        _: &TtrpcContext,
        req: api::ProcessRef,
    ) -> ttrpc::Result<api::Empty> {
        self.procs
            .lock()
            .unwrap()
            .remove(&key(&req.container_id, &req.exec_id));
        Ok(api::Empty::new())
    }

    async fn remove_container(
        &self,
        _: &TtrpcContext,
        req: api::RemoveContainerRequest,
    ) -> ttrpc::Result<api::Empty> {
        self.procs
            .lock()
            .unwrap()
            .retain(|(c, _), _| *c != req.container_id);
        self.seen
            .lock()
            .unwrap()
            .removed
            .push(req.container_id.clone());
        Ok(api::Empty::new())
    }

    async fn resize_tty(
        &self,
        _: &TtrpcContext,
        _: api::ResizeTtyRequest,
    ) -> ttrpc::Result<api::Empty> {
        Ok(api::Empty::new())
    }

    async fn list_processes(
        &self,
        _: &TtrpcContext,
        req: api::ContainerRef,
    ) -> ttrpc::Result<api::ListProcessesResponse> {
        let procs = self.procs.lock().unwrap();
        let mut r = api::ListProcessesResponse::new();
        for ((c, e), p) in procs.iter() {
            if *c == req.container_id && p.started {
                let mut i = api::ProcessInfo::new();
                i.pid = p.pid;
                i.exec_id = e.clone();
                r.processes.push(i);
            }
        }
        Ok(r)
    }

    async fn stats(
        &self,
        _: &TtrpcContext,
        _: api::ContainerRef,
    ) -> ttrpc::Result<api::StatsResponse> {
        let mut s = api::StatsResponse::new();
        s.pids_current = 1;
        s.memory_current = 4096;
        s.cpu_stat.insert("usage_usec".into(), 10);
        Ok(s)
    }

    async fn update_container(
        &self,
        _: &TtrpcContext,
        _: api::UpdateContainerRequest,
    ) -> ttrpc::Result<api::Empty> {
        Ok(api::Empty::new())
    }

    async fn pause_container(
        &self,
        _: &TtrpcContext,
        req: api::ContainerRef,
    ) -> ttrpc::Result<api::Empty> {
        self.seen
            .lock()
            .unwrap()
            .paused
            .push(req.container_id.clone());
        Ok(api::Empty::new())
    }

    async fn resume_container(
        &self,
        _: &TtrpcContext,
        _: api::ContainerRef,
    ) -> ttrpc::Result<api::Empty> {
        Ok(api::Empty::new())
    }

    async fn wait_oom_event(
        &self,
        _: &TtrpcContext,
        _: api::Empty,
    ) -> ttrpc::Result<api::OomEvent> {
        Err(status(Code::UNIMPLEMENTED, "no OOM events in the fake"))
    }

    async fn shutdown(
        &self,
        _: &TtrpcContext,
        _: api::ShutdownRequest,
    ) -> ttrpc::Result<api::Empty> {
        self.seen.lock().unwrap().shutdown = true;
        let _ = self.gone.send(Some(VmGone {
            exit: VmmExit::GuestShutdown,
            detail: "shut down".into(),
        }));
        Ok(api::Empty::new())
    }
}

async fn read_line(s: &mut UnixStream, max: usize) -> Option<String> {
    let mut line = Vec::new();
    loop {
        let mut b = [0u8; 1];
        if s.read(&mut b).await.ok()? == 0 {
            return None;
        }
        line.push(b[0]);
        if b[0] == b'\n' || line.len() >= max {
            return String::from_utf8(line).ok();
        }
    }
}

/// Serves `agent` on `socket` like husk-vmm's hybrid vsock would.
pub async fn serve(agent: Arc<FakeAgent>, socket: &Path) {
    let listener = UnixListener::bind(socket).unwrap();
    let (tx, rx) = mpsc::unbounded_channel::<UnixStream>();
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|s| (Ok::<_, std::io::Error>(s), rx))
    });
    let mut server = Server::new()
        .add_listener(Listener::new(stream))
        .register_service(create_agent(agent.clone()));
    tokio::spawn(async move {
        server.start().await.unwrap();
        std::future::pending::<()>().await;
        drop(server);
    });
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let tx = tx.clone();
            let agent = agent.clone();
            tokio::spawn(async move {
                let Some(line) = read_line(&mut s, hybrid::MAX_LINE).await else {
                    return;
                };
                let Ok(port) = hybrid::parse_connect(line.as_bytes()) else {
                    return;
                };
                if agent.dead.load(std::sync::atomic::Ordering::SeqCst) {
                    return;
                }
                if s.write_all(hybrid::ok_line(7).as_bytes()).await.is_err() {
                    return;
                }
                match port {
                    ports::AGENT_PORT => {
                        let _ = tx.send(s);
                    }
                    ports::STDIO_PORT => {
                        let Some(hello) = read_line(&mut s, 256).await else {
                            return;
                        };
                        let answer = match StdioHello::parse(&hello) {
                            Ok(h) => {
                                let mut procs = agent.procs.lock().unwrap();
                                match procs.get_mut(&key(&h.container_id, &h.exec_id)) {
                                    Some(p) if !p.started => Ok(match h.kind {
                                        StreamKind::Stdin => "stdin",
                                        StreamKind::Stdout => "stdout",
                                        StreamKind::Stderr => "stderr",
                                    }),
                                    _ => Err("no such process"),
                                }
                            }
                            Err(_) => Err("bad hello"),
                        };
                        match answer {
                            Ok(name) => {
                                if s.write_all(answer_line(Ok(())).as_bytes()).await.is_ok() {
                                    let h = StdioHello::parse(&hello).unwrap();
                                    let mut procs = agent.procs.lock().unwrap();
                                    if let Some(p) =
                                        procs.get_mut(&key(&h.container_id, &h.exec_id))
                                    {
                                        p.streams.insert(name, s);
                                    }
                                }
                            }
                            Err(why) => {
                                let _ = s.write_all(answer_line(Err(why)).as_bytes()).await;
                            }
                        }
                    }
                    _ => {}
                }
            });
        }
    });
}

/// Boots "VMs" that are a [`FakeAgent`] on the sandbox's vsock path.
#[derive(Debug, Default)]
pub struct FakeBooter {
    pub agents: Mutex<Vec<Arc<FakeAgent>>>,
    /// Boot failure to return instead.
    pub fail: Mutex<Option<String>>,
}

impl std::fmt::Debug for FakeAgent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FakeAgent")
    }
}

impl FakeBooter {
    /// The agent of the last boot.
    pub fn agent(&self) -> Arc<FakeAgent> {
        self.agents.lock().unwrap().last().unwrap().clone()
    }
}

#[async_trait]
impl Booter for FakeBooter {
    async fn boot(&self, req: &BootRequest) -> Result<Vm, BootError> {
        if let Some(why) = self.fail.lock().unwrap().clone() {
            return Err(BootError::Paths(why));
        }
        std::fs::create_dir_all(req.paths.sockets()).unwrap();
        husk_shim::share::create(&req.paths).unwrap();
        let (gone_tx, gone) = watch::channel(None);
        let agent = Arc::new(FakeAgent {
            procs: Mutex::new(HashMap::new()),
            next_pid: Mutex::new(0),
            seen: Mutex::new(Seen::default()),
            gone: gone_tx,
            die_after_create: Default::default(),
            dead: Default::default(),
        });
        serve(agent.clone(), &req.paths.vsock()).await;
        let client = AgentClient::connect(&req.paths.vsock()).await.unwrap();
        let info = client.check().await.unwrap();
        self.agents.lock().unwrap().push(agent);
        Ok(Vm::detached(4242, client, info, gone))
    }
}

/// A path as a `PathBuf` (helper for tests).
pub fn p(s: &str) -> PathBuf {
    PathBuf::from(s)
}

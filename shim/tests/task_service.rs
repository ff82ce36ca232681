//! The task service against an in-process fake agent (no VM, no containerd): lifecycle, event
//! order, stdio (files, FIFOs, stdin EOF), output drained before the exit event, exec, kill,
//! pause, a VM crash, a failed boot. Mounting the rootfs into the share is real, so these tests
//! need root (as the shim does).

mod fake_agent;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use containerd_shim::ExitSignal;
use containerd_shim_protos::api::{
    CloseIORequest, CreateTaskRequest, DeleteRequest, ExecProcessRequest, KillRequest,
    PauseRequest, PidsRequest, ResumeRequest, ShutdownRequest, StartRequest, StateRequest,
    StatsRequest, Status, WaitRequest,
};
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::MessageField;
use containerd_shim_protos::ttrpc::Code;
use fake_agent::FakeBooter;
use husk_shim::error::ShimError;
use husk_shim::events::{Events, Queued, TaskEvent};
use husk_shim::sandbox::{Sandbox, SandboxState};
use husk_shim::task;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc::UnboundedReceiver;

struct Env {
    dir: tempfile::TempDir,
    sb: Arc<Sandbox>,
    booter: Arc<FakeBooter>,
    rx: UnboundedReceiver<Queued>,
    exit: Arc<ExitSignal>,
}

fn require_root() {
    assert_eq!(
        nix::unistd::geteuid().as_raw(),
        0,
        "these tests mount the rootfs like the shim does: run them as root"
    );
}

fn env(id: &str) -> Env {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let (events, rx) = Events::channel();
    let booter = Arc::new(FakeBooter::default());
    let exit = Arc::new(ExitSignal::default());
    let sb = Arc::new(Sandbox::new(
        id,
        "default",
        None,
        events,
        booter.clone(),
        exit.clone(),
    ));
    std::fs::create_dir_all(dir.path().join("rootfs-src/bin")).unwrap();
    std::fs::write(
        dir.path().join("husk.toml"),
        format!("state_dir = \"{}\"\n", dir.path().join("state").display()),
    )
    .unwrap();
    Env {
        dir,
        sb,
        booter,
        rx,
        exit,
    }
}

impl Env {
    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn bundle(&self, cid: &str, args: &[&str]) -> PathBuf {
        let b = self.path(&format!("bundles/{cid}"));
        std::fs::create_dir_all(&b).unwrap();
        let spec = serde_json::json!({
            "ociVersion": "1.0.2",
            "hostname": "fakehost",
            "process": {"args": args, "cwd": "/"},
            "root": {"path": self.path("rootfs-src")},
            "linux": {"namespaces": [
                {"type": "pid"}, {"type": "ipc"}, {"type": "network"}, {"type": "mount"}
            ]},
        });
        std::fs::write(b.join("config.json"), spec.to_string()).unwrap();
        b
    }

    fn create_req(&self, cid: &str, args: &[&str], stdin: &str, stdout: &str) -> CreateTaskRequest {
        let mut r = CreateTaskRequest::new();
        r.id = cid.into();
        r.bundle = self.bundle(cid, args).display().to_string();
        r.stdin = stdin.into();
        r.stdout = stdout.into();
        let path = self.path("husk.toml").display().to_string();
        let mut value = vec![0x12, path.len() as u8];
        value.extend_from_slice(path.as_bytes());
        r.options = MessageField::some(Any {
            type_url: "runtimeoptions.v1.Options".into(),
            value,
            ..Default::default()
        });
        r
    }

    fn state_root(&self) -> PathBuf {
        self.path(&format!("state/{}", self.sb.id))
    }

    async fn event(&mut self) -> TaskEvent {
        loop {
            let q = tokio::time::timeout(Duration::from_secs(10), self.rx.recv())
                .await
                .expect("no event within 10 s")
                .expect("event queue closed");
            if let Queued::Event(e, _) = q {
                return e;
            }
        }
    }

    async fn topics(&mut self, n: usize) -> Vec<&'static str> {
        let mut t = Vec::new();
        for _ in 0..n {
            t.push(self.event().await.topic());
        }
        t
    }
}

fn start(cid: &str, eid: &str) -> StartRequest {
    let mut r = StartRequest::new();
    r.id = cid.into();
    r.exec_id = eid.into();
    r
}

fn wait(cid: &str, eid: &str) -> WaitRequest {
    let mut r = WaitRequest::new();
    r.id = cid.into();
    r.exec_id = eid.into();
    r
}

fn delete(cid: &str, eid: &str) -> DeleteRequest {
    let mut r = DeleteRequest::new();
    r.id = cid.into();
    r.exec_id = eid.into();
    r
}

fn state(cid: &str, eid: &str) -> StateRequest {
    let mut r = StateRequest::new();
    r.id = cid.into();
    r.exec_id = eid.into();
    r
}

fn kill(cid: &str, sig: u32) -> KillRequest {
    let mut r = KillRequest::new();
    r.id = cid.into();
    r.signal = sig;
    r
}

fn mounted(dir: &Path) -> bool {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .any(|l| {
            l.split(' ')
                .nth(4)
                .is_some_and(|m| Path::new(m).starts_with(dir))
        })
}

#[tokio::test]
async fn a_container_runs_and_its_events_come_in_order() {
    let mut e = env("sb1");
    let out = e.path("logs/out.log");
    let req = e.create_req(
        "sb1",
        &["echo", "hello", "vm"],
        "",
        &format!("file://{}", out.display()),
    );
    let created = task::create(&e.sb, req).await.unwrap();
    assert_eq!(created.pid, 4242);
    assert!(
        mounted(&e.state_root()),
        "the rootfs must be mounted in the share"
    );
    let agent = e.booter.agent();
    {
        let seen = agent.seen.lock().unwrap();
        assert_eq!(seen.mounts, ["husk virtiofs /run/husk/shared"]);
        assert_eq!(seen.hostname.as_deref(), Some("fakehost"));
        assert_eq!(
            seen.specs["sb1"]["root"]["path"],
            "/run/husk/shared/sb1/rootfs"
        );
    }
    assert_eq!(
        task::start(&e.sb, start("sb1", "")).await.unwrap().pid,
        4242
    );
    assert_eq!(
        task::wait(&e.sb, wait("sb1", ""))
            .await
            .unwrap()
            .exit_status,
        0
    );
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "hello vm\n");
    assert_eq!(
        e.topics(3).await,
        ["/tasks/create", "/tasks/start", "/tasks/exit"]
    );
    let st = task::state(&e.sb, state("sb1", "")).await.unwrap();
    assert_eq!(st.status.enum_value().unwrap(), Status::STOPPED);
    let d = task::delete(&e.sb, delete("sb1", "")).await.unwrap();
    assert_eq!((d.pid, d.exit_status), (4242, 0));
    assert_eq!(e.topics(1).await, ["/tasks/delete"]);
    assert!(
        agent.seen.lock().unwrap().shutdown,
        "the last delete stops the VM"
    );
    assert_eq!(e.sb.vm_state(), SandboxState::Empty);
    assert!(!mounted(&e.state_root()));
    assert!(!e.state_root().exists(), "the sandbox state must be gone");
    task::shutdown(&e.sb, ShutdownRequest::new()).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), e.exit.wait())
        .await
        .expect("shutdown must end the shim");
}

#[tokio::test]
async fn output_is_drained_before_the_exit_event() {
    let mut e = env("sb2");
    let out = e.path("out.log");
    let n = 3_000_000usize;
    let req = e.create_req(
        "sb2",
        &["burst", &n.to_string()],
        "",
        &format!("file://{}", out.display()),
    );
    task::create(&e.sb, req).await.unwrap();
    task::start(&e.sb, start("sb2", "")).await.unwrap();
    assert_eq!(e.topics(2).await, ["/tasks/create", "/tasks/start"]);
    let exit = e.event().await;
    assert_eq!(exit.topic(), "/tasks/exit");
    assert_eq!(
        std::fs::metadata(&out).unwrap().len() as usize,
        n,
        "every byte must be written before the exit is published"
    );
    task::delete(&e.sb, delete("sb2", "")).await.unwrap();
}

#[tokio::test]
async fn stdin_reaches_the_process_and_closeio_ends_it() {
    let mut e = env("sb3");
    let (fin, fout) = (e.path("in"), e.path("out"));
    for f in [&fin, &fout] {
        nix::unistd::mkfifo(f, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    }
    // As ctr does: the output reader is open before Create.
    let mut reader = tokio::net::unix::pipe::OpenOptions::new()
        .open_receiver(&fout)
        .unwrap();
    let req = e.create_req(
        "sb3",
        &["cat"],
        &fin.display().to_string(),
        &fout.display().to_string(),
    );
    task::create(&e.sb, req).await.unwrap();
    let mut writer = husk_shim::io::fifo::open_writer(fin.clone()).await.unwrap();
    task::start(&e.sb, start("sb3", "")).await.unwrap();
    writer.write_all(b"through the vm\n").await.unwrap();
    drop(writer);
    let mut line = [0u8; 15];
    tokio::time::timeout(Duration::from_secs(10), reader.read_exact(&mut line))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&line, b"through the vm\n");
    // As with runc, the FIFO's end-of-file does not end stdin; CloseIO does.
    let still = tokio::time::timeout(
        Duration::from_millis(300),
        task::wait(&e.sb, wait("sb3", "")),
    )
    .await;
    assert!(still.is_err(), "stdin must stay open until CloseIO");
    let mut close = CloseIORequest::new();
    close.id = "sb3".into();
    close.stdin = true;
    task::close_io(&e.sb, close).await.unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), reader.read_to_end(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert!(got.is_empty(), "{got:?}");
    assert_eq!(
        task::wait(&e.sb, wait("sb3", ""))
            .await
            .unwrap()
            .exit_status,
        0
    );
    assert_eq!(
        e.topics(3).await,
        ["/tasks/create", "/tasks/start", "/tasks/exit"]
    );
    task::delete(&e.sb, delete("sb3", "")).await.unwrap();
}

#[tokio::test]
async fn exec_kill_pause_pids_and_stats() {
    let mut e = env("sb4");
    task::create(&e.sb, e.create_req("sb4", &["sleep"], "", ""))
        .await
        .unwrap();
    task::start(&e.sb, start("sb4", "")).await.unwrap();
    assert_eq!(e.topics(2).await, ["/tasks/create", "/tasks/start"]);

    let out = e.path("exec.log");
    let mut x = ExecProcessRequest::new();
    x.id = "sb4".into();
    x.exec_id = "e1".into();
    x.stdout = format!("file://{}", out.display());
    x.spec = MessageField::some(Any {
        type_url: "types.containerd.io/opencontainers/runtime-spec/1/Process".into(),
        value: br#"{"args":["echo","from","exec"],"cwd":"/"}"#.to_vec(),
        ..Default::default()
    });
    task::exec(&e.sb, x.clone()).await.unwrap();
    assert_eq!(
        task::exec(&e.sb, x).await.unwrap_err().code(),
        Code::ALREADY_EXISTS
    );
    task::start(&e.sb, start("sb4", "e1")).await.unwrap();
    assert_eq!(
        task::wait(&e.sb, wait("sb4", "e1"))
            .await
            .unwrap()
            .exit_status,
        0
    );
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "from exec\n");
    assert_eq!(e.event().await.topic(), "/tasks/exec-added");
    assert_eq!(e.event().await.topic(), "/tasks/exec-started");
    match e.event().await {
        TaskEvent::Exit(x) => assert_eq!((x.container_id.as_str(), x.id.as_str()), ("sb4", "e1")),
        other => panic!("{other:?}"),
    }
    let d = task::delete(&e.sb, delete("sb4", "e1")).await.unwrap();
    assert_eq!(d.exit_status, 0);
    assert_eq!(
        task::state(&e.sb, state("sb4", "e1"))
            .await
            .unwrap_err()
            .code(),
        Code::NOT_FOUND
    );

    let mut p = PauseRequest::new();
    p.id = "sb4".into();
    task::pause(&e.sb, p.clone()).await.unwrap();
    assert_eq!(
        task::state(&e.sb, state("sb4", ""))
            .await
            .unwrap()
            .status
            .enum_value()
            .unwrap(),
        Status::PAUSED
    );
    assert_eq!(
        task::pause(&e.sb, p).await.unwrap_err().code(),
        Code::FAILED_PRECONDITION
    );
    let mut r = ResumeRequest::new();
    r.id = "sb4".into();
    task::resume(&e.sb, r).await.unwrap();
    assert_eq!(e.topics(2).await, ["/tasks/paused", "/tasks/resumed"]);

    let mut pids = PidsRequest::new();
    pids.id = "sb4".into();
    assert!(!task::pids(&e.sb, pids).await.unwrap().processes.is_empty());
    let mut s = StatsRequest::new();
    s.id = "sb4".into();
    assert_eq!(
        task::stats(&e.sb, s).await.unwrap().stats.type_url,
        "io.containerd.cgroups.v2.Metrics"
    );

    assert_eq!(
        task::delete(&e.sb, delete("sb4", ""))
            .await
            .unwrap_err()
            .code(),
        Code::FAILED_PRECONDITION,
        "a running container cannot be deleted"
    );
    task::kill(&e.sb, kill("sb4", 15)).await.unwrap();
    assert_eq!(
        task::wait(&e.sb, wait("sb4", ""))
            .await
            .unwrap()
            .exit_status,
        143
    );
    assert_eq!(
        task::kill(&e.sb, kill("sb4", 9)).await.unwrap_err().code(),
        Code::NOT_FOUND
    );
    task::delete(&e.sb, delete("sb4", "")).await.unwrap();
}

#[tokio::test]
async fn a_vm_crash_exits_every_started_task_with_137() {
    let mut e = env("sb5");
    task::create(&e.sb, e.create_req("sb5", &["sleep"], "", ""))
        .await
        .unwrap();
    task::create(&e.sb, e.create_req("c2", &["sleep"], "", ""))
        .await
        .unwrap();
    task::start(&e.sb, start("sb5", "")).await.unwrap();
    assert_eq!(
        e.topics(3).await,
        ["/tasks/create", "/tasks/create", "/tasks/start"]
    );
    e.booter.agent().crash();
    match e.event().await {
        TaskEvent::Exit(x) => {
            assert_eq!((x.id.as_str(), x.exit_status, x.pid), ("sb5", 137, 4242))
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        task::wait(&e.sb, wait("sb5", ""))
            .await
            .unwrap()
            .exit_status,
        137
    );
    assert_eq!(
        task::state(&e.sb, state("c2", ""))
            .await
            .unwrap()
            .status
            .enum_value()
            .unwrap(),
        Status::STOPPED
    );
    let err = task::start(&e.sb, start("c2", "")).await.unwrap_err();
    assert_eq!(err.code(), Code::FAILED_PRECONDITION);
    assert_eq!(e.sb.vm_state(), SandboxState::Gone);
    assert!(task::create(&e.sb, e.create_req("c3", &["sleep"], "", ""))
        .await
        .is_err());
    task::delete(&e.sb, delete("c2", "")).await.unwrap();
    task::delete(&e.sb, delete("sb5", "")).await.unwrap();
    assert_eq!(e.sb.vm_state(), SandboxState::Empty);
    assert!(!mounted(&e.state_root()));
    assert!(!e.state_root().exists());
}

#[tokio::test]
async fn a_vm_that_dies_before_the_stdio_attach_is_named_as_the_cause() {
    let mut e = env("sb8");
    task::create(&e.sb, e.create_req("sb8", &["sleep"], "", ""))
        .await
        .unwrap();
    assert_eq!(e.topics(1).await, ["/tasks/create"]);
    e.booter.agent().die_after_next_create();
    let out = e.path("c2.log");
    let req = e.create_req("c2", &["sleep"], "", &format!("file://{}", out.display()));
    let err = task::create(&e.sb, req).await.unwrap_err();
    let msg = err.to_string();
    assert_eq!(err.code(), Code::FAILED_PRECONDITION, "{msg}");
    assert!(msg.contains("attaching stdout of c2"), "{msg}");
    assert!(
        msg.contains("the sandbox VM ended: guest shut down (vCPU 0: triple fault)"),
        "{msg}"
    );
    let c2_mounts: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.contains(&*e.state_root().to_string_lossy()) && l.contains("/c2/"))
        .map(String::from)
        .collect();
    assert!(c2_mounts.is_empty(), "c2's mounts left: {c2_mounts:?}");
    task::delete(&e.sb, delete("sb8", "")).await.unwrap();
    assert!(!mounted(&e.state_root()));
}

#[tokio::test]
async fn a_failed_boot_leaves_nothing_behind() {
    let e = env("sb6");
    *e.booter.fail.lock().unwrap() = Some("the guest kernel /nope does not exist".into());
    let err = task::create(&e.sb, e.create_req("sb6", &["echo"], "", ""))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("/nope"), "{err}");
    assert!(!e.state_root().exists());
    assert!(e.sb.containers().is_empty());
    assert_eq!(e.sb.vm_state(), SandboxState::Empty);
    assert!(matches!(
        task::state(&e.sb, state("sb6", "")).await,
        Err(ShimError::NotFound(_))
    ));
}

#[tokio::test]
async fn bad_annotations_fail_create_with_their_name() {
    let e = env("sb7");
    let mut req = e.create_req("sb7", &["echo"], "", "");
    let b = PathBuf::from(&req.bundle);
    let mut spec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(b.join("config.json")).unwrap()).unwrap();
    spec["annotations"] = serde_json::json!({"io.husk.memory": "lots"});
    std::fs::write(b.join("config.json"), spec.to_string()).unwrap();
    req.bundle = b.display().to_string();
    let err = task::create(&e.sb, req).await.unwrap_err();
    assert_eq!(err.code(), Code::INVALID_ARGUMENT);
    assert!(err.to_string().contains("io.husk.memory"), "{err}");
    assert!(!e.state_root().exists());
}

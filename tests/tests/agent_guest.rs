//! husk-agent as PID 1 of a husk-vmm guest: it boots to its ready marker, answers Check over
//! hybrid vsock (husk-vmm's Unix socket), runs a container from the busybox rootfs packed in the
//! test image (`/opt/husk/rootfs`) with its output on a vsock stream, and powers the VM off on
//! Shutdown (husk-vmm exits 0). Needs husk-vmm with virtio-vsock; without it this test fails,
//! saying so.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use husk_protocol::agent::api;
use husk_tests::agent::{client, ctx, pref, stdio, Output};
use husk_tests::e2e;
use husk_tests::microvm::RunningVm;
use husk_tests::rootfs::{process, spec};

const BOOT_TIMEOUT: Duration = Duration::from_secs(180);
/// The marker husk-agent prints on the console once it serves.
const READY: &str = "HUSK-AGENT ready";

fn agent_image() -> PathBuf {
    let p = PathBuf::from(
        std::env::var_os("HUSK_AGENT_TEST_IMAGE").unwrap_or_else(|| {
            panic!("HUSK_AGENT_TEST_IMAGE is not set: run with `make e2e` (made by `make image`)")
        }),
    );
    assert!(p.is_file(), "{} does not exist (make image)", p.display());
    p
}

fn vmm_with_vsock(env: &e2e::E2eEnv, dir: &Path) -> (Command, PathBuf) {
    let vsock = dir.join("vsock");
    let config = serde_json::json!({
        "kernel": env.kernel,
        "initramfs": agent_image(),
        "extra_cmdline": "quiet",
        "vcpus": 1,
        "memory_mib": 256,
        "serial_log": "/proc/self/fd/1",
        "vsock": {"guest_cid": 3, "socket": vsock, "allowed_guest_ports": [1026]},
        "vcpu_affinity": e2e::vcpu_affinity(1),
    });
    let path = dir.join("vm.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
    let mut cmd = Command::new(&env.vmm);
    cmd.arg("--config").arg(path);
    (cmd, vsock)
}

/// Accepts the agent's log connections on `<socket>_1026` and forwards their lines.
fn log_listener(vsock: &Path) -> std::sync::mpsc::Receiver<String> {
    use std::io::BufRead;
    let path = PathBuf::from(format!(
        "{}_{}",
        vsock.display(),
        husk_protocol::ports::LOG_PORT
    ));
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in std::io::BufReader::new(conn).lines().map_while(Result::ok) {
                    if tx.send(line + "\n").is_err() {
                        break;
                    }
                }
            });
        }
    });
    rx
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs hardware KVM: run with `make e2e` (uses the nested test host where needed)"]
async fn agent_is_pid1_serves_vsock_runs_a_container_and_powers_off() {
    let env = e2e::require();
    let dir = tempfile::Builder::new()
        .prefix("hg")
        .tempdir_in("/tmp")
        .unwrap();
    let (cmd, vsock) = vmm_with_vsock(&env, dir.path());
    // The agent's log stream: guest-initiated, to `<vsock socket>_1026`.
    let logs = log_listener(&vsock);
    let mut vm = RunningVm::spawn(cmd).unwrap();
    let ready = vm.wait_for(READY, BOOT_TIMEOUT);
    assert!(
        ready.is_some(),
        "husk-agent did not report ready as the guest's init; console:\n{}",
        vm.console
    );
    let ready = ready.unwrap_or_default();
    assert!(
        ready.contains("pivot_root=true"),
        "containers must be able to pivot_root away from the initramfs: {ready}"
    );
    assert!(
        vsock.exists(),
        "husk-vmm has no vsock socket at {} (virtio-vsock not in husk-vmm yet?); console:\n{}",
        vsock.display(),
        vm.console
    );
    let c = client(&vsock)
        .await
        .unwrap_or_else(|e| panic!("no ttrpc over hybrid vsock: {e}; console:\n{}", vm.console));
    let check = c.check(ctx(), &api::CheckRequest::default()).await.unwrap();
    assert_eq!(check.api_version, 1);
    assert!(check.kernel_release.starts_with("6.1."), "{check:?}");
    assert!(
        check.ready_ms > 0 && check.uptime_ms >= check.ready_ms,
        "{check:?}"
    );

    let s = stdio(false, true, true, false);
    let spec = spec(
        Path::new("/opt/husk/rootfs"),
        &["sh", "-c", "echo hello from the guest; echo pid=$$"],
        false,
    );
    c.create_container(
        ctx(),
        &api::CreateContainerRequest {
            container_id: "g1".into(),
            spec_json: serde_json::to_vec(&spec).unwrap(),
            stdio: Some(s.clone()).into(),
            ..Default::default()
        },
    )
    .await
    .unwrap_or_else(|e| panic!("create in the guest: {e:?}; console:\n{}", vm.console));
    let out = Output::attach(&vsock, "g1", "", &s).await.unwrap();
    c.start_process(ctx(), &pref("g1", "")).await.unwrap();
    let w = c.wait_process(ctx(), &pref("g1", "")).await.unwrap();
    let (o, e) = out.collect().await;
    assert_eq!(w.exit_status, 0, "stderr: {}", String::from_utf8_lossy(&e));
    assert_eq!(String::from_utf8_lossy(&o), "hello from the guest\npid=1\n");

    // Execs into a running container land in its rootfs, with and without a terminal.
    let sleeper =
        husk_tests::rootfs::spec(Path::new("/opt/husk/rootfs"), &["sleep", "1000"], false);
    c.create_container(
        ctx(),
        &api::CreateContainerRequest {
            container_id: "g2".into(),
            spec_json: serde_json::to_vec(&sleeper).unwrap(),
            stdio: Some(stdio(false, false, false, false)).into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    c.start_process(ctx(), &pref("g2", "")).await.unwrap();
    for (eid, terminal, want) in [
        ("x1", false, "husk-test-rootfs\n"),
        ("x2", true, "husk-test-rootfs\r\n"),
    ] {
        let s = stdio(false, true, !terminal, terminal);
        c.exec_process(
            ctx(),
            &api::ExecProcessRequest {
                container_id: "g2".into(),
                exec_id: eid.into(),
                process_json: serde_json::to_vec(&process(&["cat", "/etc/husk-rootfs"], terminal))
                    .unwrap(),
                stdio: Some(s.clone()).into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        let out = Output::attach(&vsock, "g2", eid, &s).await.unwrap();
        c.start_process(ctx(), &pref("g2", eid))
            .await
            .unwrap_or_else(|e| panic!("exec {eid}: {e:?}; console:\n{}", vm.console));
        let w = c.wait_process(ctx(), &pref("g2", eid)).await.unwrap();
        let (o, _) = out.collect().await;
        assert_eq!(
            (w.exit_status, String::from_utf8_lossy(&o).as_ref()),
            (0, want),
            "{eid}"
        );
    }

    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut seen = String::new();
    while !seen.contains("container_id=g1") {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match logs.recv_timeout(left) {
            Ok(line) => seen.push_str(&line),
            Err(_) => panic!("no log line about g1 on the vsock log stream; got:\n{seen}"),
        }
    }

    c.shutdown(ctx(), &api::ShutdownRequest::default())
        .await
        .unwrap();
    let code = vm.wait(Duration::from_secs(60));
    assert_eq!(
        code,
        Some(0),
        "Shutdown must end husk-vmm with 0; console:\n{}",
        vm.console
    );
}

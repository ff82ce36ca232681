//! husk's failure paths through containerd: each asserts the error text a user sees and that
//! no process, mount, socket or state directory is left.
//!
//! - a missing guest kernel and a bad VM-size annotation fail Create with their names (no VM
//!   is needed to see those);
//! - an agent that never answers fails Create after the boot timeout, naming the cause and
//!   quoting the guest console;
//! - husk-vmm killed under a running task: the task exits 137, as runc reports SIGKILL;
//! - a guest that stops answering (its vCPUs paused from the host): the shim's liveness watch
//!   kills its VM and the task exits 137;
//! - the shim killed: containerd's `delete` call cleans everything up;
//! - containerd restarted: the shim is found again through the bundle's `address` file.
//!
//! End-to-end tests (`#[ignore]`d): `make e2e` runs them in the test host.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use husk_tests::containerd::{
    processes_with, run_bounded, Containerd, CtrOutput, HuskArtifacts, HuskSettings, HUSK,
};
use husk_tests::oci_image::BUSYBOX_REF;

const T: Duration = Duration::from_secs(300);

/// A husk binary from the environment (`var`), else from the workspace's target directory.
fn binary(var: &str, name: &str) -> PathBuf {
    let from_env = std::env::var_os(var).map(PathBuf::from).or_else(|| {
        std::env::var_os("HUSK_VMM")
            .map(PathBuf::from)
            .and_then(|v| v.parent().map(|d| d.join(name)))
    });
    let target = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target");
    [
        from_env,
        Some(target.join("release").join(name)),
        Some(target.join("debug").join(name)),
    ]
    .into_iter()
    .flatten()
    .find(|p| p.is_file())
    .unwrap_or_else(|| panic!("{name} is not built: run `make build` (or set {var})"))
}

/// Settings whose VM artifacts may not exist (failures before the boot).
fn settings_without_vm() -> HuskSettings {
    let missing = PathBuf::from("/nonexistent/husk");
    HuskSettings::new(HuskArtifacts {
        shim: binary("HUSK_SHIM", "containerd-shim-husk-v2"),
        vmm: binary("HUSK_VMM", "husk-vmm"),
        kernel: missing.join("vmlinux"),
        initramfs: missing.join("husk-initrd.img"),
    })
}

fn full_settings() -> HuskSettings {
    husk_tests::e2e::require();
    HuskSettings::new(HuskArtifacts::from_env().unwrap_or_else(|e| panic!("{e}")))
}

fn started(settings: &HuskSettings) -> Containerd {
    let c = Containerd::start(Some(settings)).unwrap();
    c.import_busybox().unwrap();
    c
}

fn assert_clean(c: &Containerd, id: &str) {
    c.assert_clean(&[id]);
}

fn task_line(c: &Containerd, id: &str) -> Option<Vec<String>> {
    c.ctr(&["task", "ls"], None, T)
        .stdout
        .lines()
        .map(|l| l.split_whitespace().map(String::from).collect::<Vec<_>>())
        .find(|f| f.first().map(String::as_str) == Some(id))
}

fn wait_status(c: &Containerd, id: &str, status: &str, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if task_line(c, id).is_some_and(|f| f.last().map(String::as_str) == Some(status)) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    false
}

/// `ctr run --rm` of a sleeping busybox `id` on its own thread, once RUNNING; the thread
/// returns what ctr printed when the task ends.
fn run_sleeping(c: &Containerd, id: &str) -> std::thread::JoinHandle<CtrOutput> {
    let cmd = c.ctr_command(&[
        "run",
        "--rm",
        "--runtime",
        HUSK,
        BUSYBOX_REF,
        id,
        "sleep",
        "3600",
    ]);
    let runner = std::thread::spawn(move || run_bounded(cmd, None, T));
    assert!(
        wait_status(c, id, "RUNNING", T),
        "never ran:\n{}",
        c.log_tail(60)
    );
    runner
}

fn remove(c: &Containerd, id: &str) {
    c.ctr(&["task", "kill", "-s", "SIGKILL", id], None, T);
    wait_status(c, id, "STOPPED", Duration::from_secs(60));
    c.ctr(&["task", "rm", "-f", id], None, T);
    c.ctr(&["container", "rm", id], None, T);
}

/// `ctr run --rm` of busybox as `id` with `extra` flags, which must fail; then the container
/// record is removed. Returns what ctr printed.
fn failing_run(c: &Containerd, id: &str, extra: &[&str]) -> CtrOutput {
    let mut args = vec!["run", "--rm", "--runtime", HUSK];
    args.extend_from_slice(extra);
    args.extend_from_slice(&[BUSYBOX_REF, id, "true"]);
    let out = c.ctr(&args, None, T);
    assert_ne!(out.code, 0, "{out}");
    c.ctr(&["container", "rm", id], None, T);
    out
}

#[test]
#[ignore = "end-to-end: needs containerd and the husk shim; run with `make e2e`"]
fn a_missing_kernel_fails_create_naming_it_and_leaves_nothing() {
    let c = started(&settings_without_vm());
    let out = failing_run(&c, "nokernel", &[]);
    assert!(
        out.stderr.contains("/nonexistent/husk/vmlinux") && out.stderr.contains("guest kernel"),
        "the error must name the missing kernel: {out}"
    );
    assert_clean(&c, "nokernel");
}

#[test]
#[ignore = "end-to-end: needs containerd and the husk shim; run with `make e2e`"]
fn a_bad_size_annotation_fails_create_naming_it() {
    let c = started(&settings_without_vm());
    let out = failing_run(&c, "badsize", &["--annotation", "io.husk.vcpus=lots"]);
    assert!(
        out.stderr.contains("io.husk.vcpus") && out.stderr.contains("whole number of vCPUs"),
        "the error must name the annotation: {out}"
    );
    assert_clean(&c, "badsize");
}

#[test]
#[ignore = "end-to-end: needs hardware KVM (test host), containerd, husk-vmm; run with `make e2e`"]
fn an_agent_that_never_answers_times_out_naming_the_cause() {
    husk_tests::e2e::require();
    let mut settings = settings_without_vm();
    let env = husk_tests::e2e::require();
    settings.artifacts.vmm = env.vmm;
    settings.artifacts.kernel = env.kernel;
    // The boot-test init: it boots and holds, but no agent ever listens on vsock.
    settings.artifacts.initramfs = env.test_image;
    settings.extra_cmdline = "quiet husk.test=hold".into();
    settings.boot_timeout_secs = 20;
    let c = started(&settings);
    let started_at = Instant::now();
    let out = failing_run(&c, "noagent", &[]);
    assert!(
        out.stderr
            .contains("the guest agent was not ready after 20 s"),
        "the error must say the agent was not ready in time: {out}"
    );
    assert!(
        out.stderr.contains("vsock port 1024") || out.stderr.contains("vsock socket"),
        "the error must name the cause: {out}"
    );
    assert!(
        out.stderr.contains("HUSK-TEST-INIT"),
        "the error must quote the guest console: {out}"
    );
    assert!(started_at.elapsed() < Duration::from_secs(200));
    assert_clean(&c, "noagent");
}

#[test]
#[ignore = "end-to-end: needs hardware KVM (test host), containerd, husk-vmm, the agent image; run with `make e2e`"]
fn a_missing_executable_fails_naming_it() {
    let c = started(&full_settings());
    let started_at = Instant::now();
    let mut args = vec!["run", "--rm", "--runtime", HUSK];
    args.extend_from_slice(&[BUSYBOX_REF, "noexec", "/no/such/program"]);
    let out = c.ctr(&args, None, T);
    eprintln!(
        "shim_failures: a missing executable failed after {:?}: {out}",
        started_at.elapsed()
    );
    assert_ne!(out.code, 0, "{out}");
    assert!(
        out.stderr.contains("/no/such/program"),
        "the error must name the executable: {out}"
    );
    c.ctr(&["container", "rm", "noexec"], None, T);
    assert_clean(&c, "noexec");
}

#[test]
#[ignore = "end-to-end: needs hardware KVM (test host), containerd, husk-vmm, the agent image; run with `make e2e`"]
fn a_hung_guest_is_killed_and_its_task_exits_137() {
    let mut settings = full_settings();
    settings.liveness_timeout_secs = 10;
    let c = started(&settings);
    let id = "hung";
    let runner = run_sleeping(&c, id);
    // The guest stops: every vCPU paused from the host, as a guest that hangs in its kernel.
    let ctl = c.husk_state.join(id).join("run/ctl");
    let paused = husk_tests::microvm::control(&ctl, "pause\n").unwrap();
    assert!(paused.starts_with("ok"), "pausing the vCPUs: {paused}");
    let since = Instant::now();
    let out = runner.join().unwrap();
    assert_eq!(
        out.code,
        137,
        "a hung guest's task must end as SIGKILLed: {out}\n{}",
        c.log_tail(60)
    );
    eprintln!(
        "shim_failures: the hung guest's task ended {:?} after the pause",
        since.elapsed()
    );
    assert!(
        c.log_tail(400).contains("the guest stopped answering"),
        "the shim's log must name the cause:\n{}",
        c.log_tail(60)
    );
    assert_clean(&c, id);
}

#[test]
#[ignore = "end-to-end: needs hardware KVM (test host), containerd, husk-vmm, the agent image; run with `make e2e`"]
fn a_vmm_crash_exits_the_task_with_137_and_leaves_nothing() {
    let c = started(&full_settings());
    let id = "vmmcrash";
    let runner = run_sleeping(&c, id);
    let pid: u32 = task_line(&c, id).unwrap()[1].parse().unwrap();
    let vmm = processes_with("vm.json");
    assert!(
        vmm.iter()
            .any(|(p, cmd)| *p == pid && cmd.contains("husk-vmm")),
        "the task pid {pid} must be husk-vmm's: {vmm:?}"
    );
    // SAFETY: kill(2) on the husk-vmm pid the task reported.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    let out = runner.join().unwrap();
    assert_eq!(
        out.code,
        137,
        "a VM crash must look like SIGKILL: {out}\n{}",
        c.log_tail(60)
    );
    assert_clean(&c, id);
}

#[test]
#[ignore = "end-to-end: needs hardware KVM (test host), containerd, husk-vmm, the agent image; run with `make e2e`"]
fn a_killed_shim_is_cleaned_up_by_containerds_delete() {
    let c = started(&full_settings());
    let id = "shimkill";
    let out = c.ctr(
        &[
            "run",
            "-d",
            "--runtime",
            HUSK,
            BUSYBOX_REF,
            id,
            "sleep",
            "3600",
        ],
        None,
        T,
    );
    assert_eq!(out.code, 0, "{out}\n{}", c.log_tail(60));
    assert!(wait_status(&c, id, "RUNNING", T));
    let sock = c.socket().display().to_string();
    let shim = processes_with(&format!("-id {id} "))
        .into_iter()
        .find(|(_, cmd)| cmd.contains("containerd-shim-husk-v2") && cmd.contains(&sock))
        .expect("the shim process");
    // SAFETY: kill(2) on the shim process found above.
    unsafe { libc::kill(shim.0 as libc::pid_t, libc::SIGKILL) };
    // containerd sees the connection drop, runs `containerd-shim-husk-v2 delete`, and marks
    // the task stopped.
    let deadline = Instant::now() + Duration::from_secs(60);
    while task_line(&c, id).is_some_and(|f| f.last().map(String::as_str) == Some("RUNNING")) {
        assert!(
            Instant::now() < deadline,
            "the task still runs after its shim died"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    c.ctr(&["task", "rm", "-f", id], None, T);
    c.ctr(&["container", "rm", id], None, T);
    assert_clean(&c, id);
}

#[test]
#[ignore = "end-to-end: needs hardware KVM (test host), containerd, husk-vmm, the agent image; run with `make e2e`"]
fn a_restarted_containerd_finds_the_shim_again() {
    let mut c = started(&full_settings());
    let id = "restart";
    let out = c.ctr(
        &[
            "run",
            "-d",
            "--runtime",
            HUSK,
            BUSYBOX_REF,
            id,
            "sleep",
            "3600",
        ],
        None,
        T,
    );
    assert_eq!(out.code, 0, "{out}\n{}", c.log_tail(60));
    assert!(wait_status(&c, id, "RUNNING", T));
    c.restart().unwrap();
    assert!(
        wait_status(&c, id, "RUNNING", Duration::from_secs(60)),
        "after the restart the task must still be known and running:\n{}",
        c.log_tail(60)
    );
    let exec = c.ctr(
        &[
            "task",
            "exec",
            "--exec-id",
            "after",
            id,
            "echo",
            "still here",
        ],
        None,
        T,
    );
    assert_eq!(
        (exec.code, exec.stdout.as_str()),
        (0, "still here\n"),
        "{exec}"
    );
    remove(&c, id);
    assert_clean(&c, id);
}

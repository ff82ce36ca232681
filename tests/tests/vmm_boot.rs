//! husk-vmm boots the husk guest kernel and ends the way the shim needs to tell apart:
//! guest shutdown (0), signal (128+N, nothing left behind), control-socket requests.

use std::path::{Path, PathBuf};
use std::time::Duration;

use husk_tests::e2e;
use husk_tests::microvm::{
    self, husk_vmm, missing, watch_boot, GuestSpec, RunningVm, TEST_INIT_MARKER,
};

const BOOT_TIMEOUT: Duration = Duration::from_secs(180);

fn spec(env: &e2e::E2eEnv, vcpus: u32, cmdline: &str) -> GuestSpec {
    GuestSpec {
        kernel: env.kernel.clone(),
        initramfs: env.test_image.clone(),
        cmdline: cmdline.into(),
        vcpus,
        memory_mib: 256,
    }
}

/// Boots a guest that stays up (`husk.test=hold`) with a control socket in `dir`.
fn boot_held(env: &e2e::E2eEnv, vcpus: u32, dir: &Path) -> (RunningVm, PathBuf) {
    let socket = dir.join("ctl.sock");
    let cmd = husk_vmm(
        &env.vmm,
        &spec(env, vcpus, "husk.test=hold"),
        dir,
        Some(&socket),
    )
    .unwrap();
    let mut vm = RunningVm::spawn(cmd).unwrap();
    let marker = vm.wait_for(TEST_INIT_MARKER, BOOT_TIMEOUT);
    assert!(
        marker.is_some(),
        "{}",
        missing("marker", &vm.console, false)
    );
    assert!(socket.exists(), "no control socket at {}", socket.display());
    (vm, socket)
}

/// The VMM exits with 128 + SIGTERM and leaves no control socket behind.
fn assert_stopped_by_sigterm(vm: &mut RunningVm, socket: &Path) {
    let code = vm.wait(Duration::from_secs(30));
    assert_eq!(code, Some(128 + libc::SIGTERM), "{}", vm.console);
    assert!(!socket.exists(), "control socket left behind");
}

fn control(socket: &Path, request: &str) -> String {
    microvm::control(socket, request)
        .unwrap_or_else(|e| panic!("{request:?} to {}: {e}", socket.display()))
}

#[test]
#[ignore = "needs hardware KVM: run with `make e2e` (uses the nested test host where needed)"]
fn boots_two_vcpus_to_init_and_exits_zero_on_guest_reboot() {
    let env = e2e::require();
    let dir = tempfile::tempdir().unwrap();
    let cmd = husk_vmm(&env.vmm, &spec(&env, 2, ""), dir.path(), None).unwrap();
    let r = watch_boot(cmd, TEST_INIT_MARKER, BOOT_TIMEOUT).unwrap();
    let line = r
        .marker_line
        .unwrap_or_else(|| panic!("{}", missing("init marker", &r.console, false)));
    assert!(
        line.contains("kernel=6.1.") && line.contains("cpus=2"),
        "{line}"
    );
    assert!(
        r.console.contains("found SMP MP-table"),
        "the MP table was not used:\n{}",
        r.console
    );
    assert_eq!(
        r.exit_code,
        Some(0),
        "guest reboot must end husk-vmm with 0:\n{}",
        r.console
    );
    assert!(r.console.contains("guest shut down"), "{}", r.console);
}

#[test]
#[ignore = "needs hardware KVM: run with `make e2e` (uses the nested test host where needed)"]
fn sigterm_stops_a_running_vm_and_removes_its_socket() {
    let env = e2e::require();
    let dir = tempfile::tempdir().unwrap();
    let (mut vm, socket) = boot_held(&env, 1, dir.path());
    vm.signal(libc::SIGTERM);
    assert_stopped_by_sigterm(&mut vm, &socket);
    assert!(
        vm.console.contains("stopping on signal 15"),
        "{}",
        vm.console
    );
}

#[test]
#[ignore = "needs hardware KVM: run with `make e2e` (uses the nested test host where needed)"]
fn control_socket_pings_pauses_resumes_and_shuts_down() {
    let env = e2e::require();
    let dir = tempfile::tempdir().unwrap();
    let (mut vm, socket) = boot_held(&env, 2, dir.path());
    assert_eq!(control(&socket, "ping\n"), "ok running");
    assert_eq!(control(&socket, "pause\n"), "ok paused");
    assert_eq!(
        control(&socket, "pause\n"),
        "error the VM is paused and cannot become paused"
    );
    assert_eq!(control(&socket, "ping\n"), "ok paused");
    assert_eq!(control(&socket, "resume\n"), "ok running");
    assert!(control(&socket, "reboot\n").starts_with("error unknown control request \"reboot\""));
    // No virtio devices in this VM: the diagnosis says so rather than printing nothing.
    assert_eq!(control(&socket, "queues\n"), "ok no virtio devices");
    assert_eq!(control(&socket, "shutdown\n"), "ok stopping");
    assert_stopped_by_sigterm(&mut vm, &socket);
}

#[test]
#[ignore = "needs hardware KVM: run with `make e2e` (uses the nested test host where needed)"]
fn a_missing_kernel_is_named_and_is_a_vmm_error() {
    let env = e2e::require();
    let dir = tempfile::tempdir().unwrap();
    let mut s = spec(&env, 1, "");
    s.kernel = dir.path().join("no-such-vmlinux");
    let cmd = husk_vmm(&env.vmm, &s, dir.path(), None).unwrap();
    let r = watch_boot(cmd, TEST_INIT_MARKER, Duration::from_secs(30)).unwrap();
    assert_eq!(r.exit_code, Some(1), "{}", r.console);
    assert!(r.console.contains("no-such-vmlinux"), "{}", r.console);
}

/// husk-vmm's resident memory in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kib| kib << 10)
}

/// Free page reporting: a guest that touches 200 MiB and frees it gives the memory back, and
/// husk-vmm's RSS falls by at least 160 MiB within 10 s (issue 17's number).
#[test]
#[ignore = "needs hardware KVM: run with `make e2e` (uses the nested test host where needed)"]
fn memory_the_guest_frees_goes_back_to_the_host() {
    const TOUCH_MIB: u64 = 200;
    let env = e2e::require();
    let dir = tempfile::tempdir().unwrap();
    let mut s = spec(
        &env,
        1,
        &format!("husk.test=balloon:{TOUCH_MIB} husk.test=hold"),
    );
    s.memory_mib = 384;
    let opts = microvm::VmmOptions {
        balloon: true,
        ..Default::default()
    };
    let cmd = microvm::husk_vmm_with(&env.vmm, &s, dir.path(), &opts).unwrap();
    let mut vm = RunningVm::spawn(cmd).unwrap();
    vm.wait_for("balloon touched", BOOT_TIMEOUT)
        .unwrap_or_else(|| panic!("{}", vm.missing("the guest's touched line")));
    let touched = rss(vm.pid());
    vm.wait_for("balloon freed", Duration::from_secs(60))
        .unwrap_or_else(|| panic!("{}", vm.missing("the guest's freed line")));
    let freed_at = std::time::Instant::now();
    let mut now = rss(vm.pid());
    while touched.saturating_sub(now) < 160 << 20 && freed_at.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(200));
        now = rss(vm.pid());
    }
    let (t, n) = (touched >> 20, now >> 20);
    eprintln!(
        "balloon: husk-vmm RSS {t} MiB with {TOUCH_MIB} MiB touched, {n} MiB {:.1} s after the \
         guest freed it",
        freed_at.elapsed().as_secs_f64()
    );
    assert!(
        touched >= TOUCH_MIB << 20,
        "RSS {t} MiB while the guest held {TOUCH_MIB} MiB"
    );
    assert!(
        touched.saturating_sub(now) >= 160 << 20,
        "RSS fell from {t} to {n} MiB within 10 s of the guest freeing {TOUCH_MIB} MiB \
         (160 MiB expected)\n{}",
        vm.console
    );
    assert!(
        !vm.console.contains("virtio-balloon"),
        "the balloon complained: {}",
        vm.console
    );
    vm.signal(libc::SIGTERM);
    assert_eq!(vm.wait(Duration::from_secs(30)), Some(128 + libc::SIGTERM));
}

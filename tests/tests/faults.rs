//! Faults under running CRI pods, each ending in the right exits and states with nothing left
//! behind (issue 16's fault table; more cases in shim_failures: husk-vmm and the shim killed, a
//! guest that stops answering, an agent that never answers).
//!
//! - the guest kernel panics (a privileged container writes `c` to /proc/sysrq-trigger): every
//!   container of the pod exits 137 and the sandbox goes NOTREADY, then stops and is removed;
//! - containerd is SIGKILLed and restarted while a pod runs: the pod and its container are
//!   listed again, exec and the log keep working, and stop/remove is clean;
//! - the whole guest runs out of memory (a container without a limit takes it all) in a pod
//!   whose cgroup has a memory limit: husk-vmm runs in the pod's cgroup with the VM fitted to
//!   the limit, the kernel in the guest kills that container (exit 137, reason OOMKilled, as
//!   the user sees it in CRI), the host charged the guest's memory to the pod and never
//!   OOM-killed there, the agent and the pod's other container keep working, and nothing is
//!   left (the pod's cgroup neither);
//! - the VM ends while StopPodSandbox's kill waits on its agent (husk-vmm frozen with SIGSTOP,
//!   then SIGKILLed): the kill reports the process finished, as runc does for an exited one,
//!   so StopPodSandbox succeeds, and nothing is left;
//! - husk-vmm dies half-way through a pod's boot (after the shim made the share and the pod's
//!   network was set up): RunPodSandbox fails naming husk-vmm's end, and nothing is left;
//! - husk's state directory's file system is full while a pod starts: RunPodSandbox fails
//!   naming the file and the cause, nothing is left, and once there is room a pod starts.
//!
//! End-to-end tests (`#[ignore]`d): they run in the nested test host.

use std::time::Duration;

use husk_tests::containerd::Containerd;
use husk_tests::cri::{
    self, container_config, eventually, exited, pod_config, running, wait_container, Cri,
};
use k8s_cri::v1::{PodSandboxConfig, PodSandboxState};

const T: Duration = Duration::from_secs(300);

fn start() -> (Containerd, Cri, Vec<String>) {
    let (c, client) = cri::start(Some(&cri::husk_settings()));
    (c, client, cri::netns_names())
}

fn pod(c: &Containerd, cri: &Cri, name: &str, privileged: bool) -> (String, PodSandboxConfig) {
    let logs = c.base().join(format!("pods/{name}"));
    std::fs::create_dir_all(&logs).unwrap();
    let mut cfg = pod_config(name, &logs);
    if privileged {
        cfg = cri::privileged_pod(cfg);
    }
    let id = cri
        .run_pod(&cfg, "husk")
        .unwrap_or_else(|e| panic!("RunPodSandbox {name}: {e}\n{}", c.log_tail(60)));
    (id, cfg)
}

#[test]
#[ignore = "end-to-end: needs hardware KVM and husk's artifacts (make e2e)"]
fn a_guest_kernel_panic_exits_every_container_137_and_leaves_nothing() {
    let (c, cri, netns) = start();
    let (pod, pod_cfg) = pod(&c, &cri, "panic", true);
    let crasher = cri::privileged_container(container_config("crasher", &["sleep", "3600"]));
    let crasher = cri.create_and_start(&pod, &pod_cfg, &crasher).unwrap();
    let other = cri
        .create_and_start(
            &pod,
            &pod_cfg,
            &container_config("other", &["sleep", "3600"]),
        )
        .unwrap();
    for id in [&crasher, &other] {
        wait_container(&cri, id, T, running).unwrap();
    }
    // The exec dies with the guest: its own result does not matter.
    let _ = cri.exec_sync(&crasher, &["sh", "-c", "echo c > /proc/sysrq-trigger"], 30);
    for id in [&crasher, &other] {
        let st = wait_container(&cri, id, T, exited)
            .unwrap_or_else(|e| panic!("{e}\n{}", c.log_tail(60)));
        assert_eq!(st.exit_code, 137, "{id} after the guest's panic: {st:?}");
    }
    let notready = PodSandboxState::SandboxNotready as i32;
    assert!(
        eventually(T, || cri
            .pod_status(&pod)
            .is_ok_and(|s| s.state == notready)),
        "the sandbox never went NOTREADY: {:?}",
        cri.pod_status(&pod)
    );
    assert!(
        c.log_tail(600).contains("ended unexpectedly"),
        "the shim's log must say the VM ended:\n{}",
        c.log_tail(60)
    );
    cri.stop_and_remove_pod(&pod).unwrap();
    cri::wait_nothing_left(&c, &netns).unwrap();
}

#[test]
#[ignore = "end-to-end: needs hardware KVM and husk's artifacts (make e2e)"]
fn containerd_killed_and_restarted_keeps_the_pods_running() {
    let (mut c, cri, netns) = start();
    let (pod, pod_cfg) = pod(&c, &cri, "survivor", false);
    // The app logs a line at start and one more whenever /tmp/go appears.
    let script =
        "echo before; while :; do [ -e /tmp/go ] && rm /tmp/go && echo after; sleep 1; done";
    let app = cri
        .create_and_start(
            &pod,
            &pod_cfg,
            &container_config("app", &["sh", "-c", script]),
        )
        .unwrap();
    wait_container(&cri, &app, T, running).unwrap();
    let log = c.base().join("pods/survivor/app.log");
    let logged = |line: &str| {
        let want = format!(" stdout F {line}\n");
        eventually(Duration::from_secs(60), || {
            std::fs::read_to_string(&log).is_ok_and(|t| t.contains(&want))
        })
    };
    assert!(logged("before"), "{:?}", std::fs::read_to_string(&log));
    c.restart_after(libc::SIGKILL)
        .expect("restarting containerd");
    let cri = Cri::connect(&c.socket()).expect("connecting to CRI again");
    let st = wait_container(&cri, &app, T, running)
        .unwrap_or_else(|e| panic!("after the restart: {e}\n{}", c.log_tail(60)));
    assert_eq!(st.id, app);
    let ready = PodSandboxState::SandboxReady as i32;
    assert_eq!(cri.pod_status(&pod).unwrap().state, ready);
    let r = cri
        .exec_sync(&app, &["touch", "/tmp/go"], 60)
        .unwrap_or_else(|e| panic!("exec after the restart: {e}\n{}", c.log_tail(60)));
    assert_eq!(r.exit_code, 0, "{r:?}");
    assert!(
        logged("after"),
        "the container's output stopped reaching its log after the restart: {:?}",
        std::fs::read_to_string(&log)
    );
    cri.stop_and_remove_pod(&pod).unwrap_or_else(|e| {
        panic!(
            "removing the pod after the restart: {e}\n{}",
            c.log_tail(60)
        )
    });
    cri::wait_nothing_left(&c, &netns).unwrap();
}

/// A tmpfs of `size` mounted on `dir` while it lives.
struct SmallFs(std::ffi::CString);

impl SmallFs {
    fn mount(dir: &std::path::Path, size: &str) -> SmallFs {
        let c = |s: &[u8]| std::ffi::CString::new(s).unwrap();
        let (target, opts) = (c(dir.as_os_str().as_encoded_bytes()), c(size.as_bytes()));
        let (src, ty) = (c(b"husk-full"), c(b"tmpfs"));
        // SAFETY: NUL-terminated strings that outlive the call.
        let rc = unsafe {
            libc::mount(
                src.as_ptr(),
                target.as_ptr(),
                ty.as_ptr(),
                0,
                opts.as_ptr().cast(),
            )
        };
        assert_eq!(rc, 0, "mount tmpfs: {}", std::io::Error::last_os_error());
        SmallFs(target)
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        // SAFETY: a NUL-terminated path.
        unsafe { libc::umount2(self.0.as_ptr(), libc::MNT_DETACH) };
    }
}

#[test]
#[ignore = "end-to-end: needs hardware KVM and husk's artifacts (make e2e)"]
fn a_full_state_directory_fails_the_pod_by_name_and_leaves_nothing() {
    use std::io::Write;
    let (c, cri, netns) = start();
    std::fs::create_dir_all(&c.husk_state).unwrap();
    let full = SmallFs::mount(&c.husk_state, "size=64k");
    let filler = c.husk_state.join("filler");
    let mut f = std::fs::File::create(&filler).unwrap();
    while f.write_all(&[0u8; 4096]).is_ok() {}
    drop(f);
    let logs = c.base().join("pods/full");
    std::fs::create_dir_all(&logs).unwrap();
    let cfg = pod_config("full", &logs);
    let e = cri
        .run_pod(&cfg, "husk")
        .expect_err("a pod whose state cannot be written");
    let msg = e.to_string();
    assert!(
        msg.contains("No space left on device")
            && msg.contains(&c.husk_state.display().to_string()),
        "the error names the file and the cause: {msg}"
    );
    // Nothing of the failed pod: no entry beside the filler, no mount but the full tmpfs itself.
    assert!(
        eventually(T, || std::fs::read_dir(&c.husk_state)
            .unwrap()
            .flatten()
            .all(|e| e.path() == filler)),
        "left in the state directory: {:?}",
        std::fs::read_dir(&c.husk_state)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect::<Vec<_>>()
    );
    let state = c.husk_state.display().to_string();
    let inside: Vec<String> = husk_tests::containerd::mounts_below(&c.husk_state)
        .into_iter()
        .filter(|m| *m != state)
        .collect();
    assert!(inside.is_empty(), "mounts left: {inside:?}");
    std::fs::remove_file(&filler).unwrap();
    drop(full);
    cri::wait_nothing_left(&c, &netns).unwrap();
    // With room again, the node runs pods.
    let (pod, pod_cfg) = pod(&c, &cri, "room", false);
    let app = cri
        .create_and_start(&pod, &pod_cfg, &container_config("app", &["sleep", "3600"]))
        .unwrap();
    wait_container(&cri, &app, T, running).unwrap();
    cri.stop_and_remove_pod(&pod).unwrap();
    cri::wait_nothing_left(&c, &netns).unwrap();
}

#[test]
#[ignore = "end-to-end: needs hardware KVM and husk's artifacts (make e2e)"]
fn a_vm_that_ends_during_the_stop_still_stops_the_pod() {
    let (c, cri, netns) = start();
    let (pod, _) = pod(&c, &cri, "ends-in-stop", false);
    let vmm = vmm_of(&c, &pod);
    // Frozen, husk-vmm answers nothing, so the sandbox container's kill waits on the agent;
    // three seconds into that wait, the VM ends under it.
    // SAFETY: kill(2) with a pid and a signal number.
    assert_eq!(unsafe { libc::kill(vmm as i32, libc::SIGSTOP) }, 0);
    let killer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(3));
        // SAFETY: as above.
        unsafe { libc::kill(vmm as i32, libc::SIGKILL) }
    });
    let stopped = cri.stop_pod(&pod);
    assert_eq!(
        killer.join().unwrap(),
        0,
        "husk-vmm {vmm} was there to kill"
    );
    stopped.unwrap_or_else(|e| {
        panic!(
            "StopPodSandbox must succeed when the VM ends under it: {e}\n{}",
            c.log_tail(60)
        )
    });
    assert!(
        c.log_tail(600).contains("process already finished"),
        "the kill reported the process finished:\n{}",
        c.log_tail(60)
    );
    cri.remove_pod(&pod).unwrap();
    cri::wait_nothing_left(&c, &netns).unwrap();
}

#[test]
#[ignore = "end-to-end: needs hardware KVM and husk's artifacts (make e2e)"]
fn a_vmm_that_dies_half_way_through_boot_fails_the_pod_and_leaves_nothing() {
    let (c, cri) = cri::start(Some(&cri::husk_settings()));
    let netns = cri::netns_names();
    // The real husk-vmm, SIGKILLed as soon as its first vCPU runs: the tap is attached and
    // the share mounted by then (the shim makes both before it starts husk-vmm), and the guest
    // is still booting (the agent answers a second or more later, even natively far more
    // than the few milliseconds this takes). From the host: husk-vmm is PID 1 of a PID
    // namespace of its own, where nothing can kill it.
    let vm_json = format!("{}/", c.husk_state.display());
    let killer = std::thread::spawn(move || {
        let deadline = std::time::Instant::now() + Duration::from_secs(240);
        while std::time::Instant::now() < deadline {
            let vmm = husk_tests::containerd::processes_with(&vm_json)
                .into_iter()
                .find(|(_, cmdline)| cmdline.contains("vm.json"));
            if let Some((pid, _)) = vmm {
                let vcpu = husk_tests::process::thread_privileges(pid)
                    .iter()
                    .any(|t| t.name == "vcpu0");
                if vcpu {
                    // SAFETY: kill(2) with a pid and a signal number.
                    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                    return true;
                }
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    });
    let logs = c.base().join("pods/dies");
    std::fs::create_dir_all(&logs).unwrap();
    let e = cri
        .run_pod(&pod_config("dies", &logs), "husk")
        .expect_err("a pod whose VMM dies during boot");
    assert!(killer.join().unwrap(), "husk-vmm never started");
    let msg = e.to_string();
    assert!(
        msg.contains("husk-vmm") && msg.contains("signal 9"),
        "the error names husk-vmm's end: {msg}"
    );
    cri::wait_nothing_left(&c, &netns).unwrap();
}

#[test]
#[ignore = "end-to-end: needs hardware KVM and husk's artifacts (make e2e)"]
fn a_guest_out_of_memory_kills_the_hog_and_the_pod_lives_on() {
    use husk_tests::cgroup::{self as cg, PodParent};
    let (c, cri, netns) = start();
    // The pod's cgroup as kubelet makes it, with a limit (the containers' limits plus the
    // RuntimeClass's podFixed) below the configured 256 MiB VM: husk fits the VM into it,
    // with room for husk-vmm's own memory.
    const LIMIT_MIB: u64 = 224;
    let parent = PodParent::make("/kubepods/burstable/poduid-oom", Some(LIMIT_MIB << 20)).unwrap();
    let logs = c.base().join("pods/oom");
    std::fs::create_dir_all(&logs).unwrap();
    let mut pod_cfg = pod_config("oom", &logs);
    if let Some(l) = pod_cfg.linux.as_mut() {
        l.cgroup_parent = parent.path.clone();
    }
    let pod = cri
        .run_pod(&pod_cfg, "husk")
        .unwrap_or_else(|e| panic!("RunPodSandbox: {e}\n{}", c.log_tail(60)));
    let vmm = vmm_of(&c, &pod);
    let leaf = format!("{}/{pod}", parent.path);
    assert_eq!(
        cg::of(vmm).as_deref(),
        Some(leaf.as_str()),
        "husk-vmm's cgroup"
    );
    let other = cri
        .create_and_start(
            &pod,
            &pod_cfg,
            &container_config("other", &["sleep", "3600"]),
        )
        .unwrap();
    wait_container(&cri, &other, T, running).unwrap();
    let r = cri
        .exec_sync(&other, &["cat", "/proc/meminfo"], 60)
        .unwrap();
    let total_kib: u64 = String::from_utf8_lossy(&r.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no MemTotal: {r:?}"));
    assert!(
        total_kib <= (LIMIT_MIB - 32) << 10,
        "the guest has {total_kib} KiB in a {LIMIT_MIB} MiB pod"
    );
    // No memory limit: `tail` keeps the newline-free stream in memory until the guest has none
    // left and its kernel's OOM killer picks the biggest task.
    let hog = cri
        .create_and_start(
            &pod,
            &pod_cfg,
            &container_config("hog", &["sh", "-c", "head -c 2000m /dev/zero | tail"]),
        )
        .unwrap();
    let st = wait_container(&cri, &hog, T, exited)
        .unwrap_or_else(|e| panic!("the hog never ended: {e}\n{}", c.log_tail(60)));
    assert_eq!(st.exit_code, 137, "{st:?}");
    assert_eq!(st.reason, "OOMKilled", "{st:?}");
    let r = cri.exec_sync(&other, &["echo", "alive"], 60).unwrap();
    assert_eq!(String::from_utf8_lossy(&r.stdout).trim(), "alive", "{r:?}");
    let ready = PodSandboxState::SandboxReady as i32;
    assert_eq!(cri.pod_status(&pod).unwrap().state, ready);
    // The host charged the guest's memory to the pod, and its OOM killer never acted there.
    let peak = cg::number(&leaf, "memory.peak", None).unwrap_or(0);
    let oom_kills = cg::number(&parent.path, "memory.events", Some("oom_kill"));
    eprintln!(
        "faults: husk-vmm {vmm} in {leaf}: guest {} MiB, memory.peak {} MiB, host oom_kill {oom_kills:?}",
        total_kib >> 10,
        peak >> 20
    );
    assert!(
        peak >= (total_kib << 10) / 2,
        "memory.peak {peak} bytes: the guest's RAM is not charged to the pod"
    );
    assert_eq!(oom_kills, Some(0), "the host's OOM killer acted in the pod");
    assert_eq!(vmm_of(&c, &pod), vmm, "husk-vmm is not the one that booted");
    cri.stop_and_remove_pod(&pod).unwrap();
    cri::wait_nothing_left(&c, &netns).unwrap();
    assert!(!cg::dir(&leaf).exists(), "{leaf} is left");
}

/// The pod's husk-vmm.
fn vmm_of(c: &Containerd, pod: &str) -> u32 {
    let vm_json = format!("{}/{pod}/vm.json", c.husk_state.display());
    let vmms = husk_tests::containerd::processes_with(&vm_json);
    assert_eq!(vmms.len(), 1, "one husk-vmm for {pod}: {vmms:?}");
    vmms[0].0
}

//! Faults under running CRI pods, each ending in the right exits and states with nothing left
//! behind (issue 16's fault table; more cases in shim_failures: husk-vmm and the shim killed, a
//! guest that stops answering, an agent that never answers).
//!
//! - the guest kernel panics (a privileged container writes `c` to /proc/sysrq-trigger): every
//!   container of the pod exits 137 and the sandbox goes NOTREADY, then stops and is removed;
//! - containerd is SIGKILLed and restarted while a pod runs: the pod and its container are
//!   listed again, exec and the log keep working, and stop/remove is clean.
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

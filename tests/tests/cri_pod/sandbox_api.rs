//! A pod through containerd 2.x's sandbox API (`sandboxer = "shim"`, handler `husk-sandbox`):
//! the VM is the pod sandbox, so containerd has no pause container for it and the shim serves
//! CreateSandbox/StartSandbox/SandboxStatus/StopSandbox/ShutdownSandbox. Two containers share
//! the pod's IPC, UTS and PID namespaces (the agent's pod anchor is their PID 1), see the pod's
//! hosts, resolv.conf and hostname, exec and log as under the podsandbox sandboxer, and stop and
//! remove leave nothing.

use husk_tests::containerd::cri_config::SANDBOX_API_HANDLER;
use husk_tests::containerd::{processes_with, shim_socket};
use husk_tests::cri::{
    self, container_config, husk_settings, pod_config, running, start, wait_container,
};

use crate::scenario::sh;
use crate::T;

pub fn pod_without_pause() {
    let (c, cri) = start(Some(&husk_settings()));
    if !c.release().is_v2() {
        eprintln!(
            "\n!!! SKIPPED cri_sandbox_api_pod: containerd {} has no sandbox API (2.x only); \
             make e2e runs this on containerd 2.3.4\n",
            c.release().version
        );
        return;
    }
    let netns_before = cri::netns_names();
    let logs = c.base().join("pods/sbapi");
    std::fs::create_dir_all(&logs).unwrap();
    let cfg = pod_config("sbapi", &logs);
    let id = cri
        .run_pod(&cfg, SANDBOX_API_HANDLER)
        .unwrap_or_else(|e| panic!("RunPodSandbox (sandbox API): {e}\n{}", c.log_tail(80)));
    eprintln!("cri_sandbox_api_pod: pod {id}");
    let status = cri.pod_status(&id).unwrap();
    assert_eq!(
        status.state,
        k8s_cri::v1::PodSandboxState::SandboxReady as i32,
        "{status:?}"
    );
    // No pause container: containerd's only record of the pod is its sandbox.
    let listed = c.ctr(&["containers", "ls", "-q"], None, T);
    assert!(
        !listed.stdout.lines().any(|l| l.trim() == id),
        "containerd made a container for the sandbox: {}",
        listed.stdout
    );
    let vmms: Vec<String> = processes_with(&format!("{}/{id}/", c.husk_state.display()))
        .into_iter()
        .map(|(_, p)| p)
        .filter(|p| p.contains("vm.json"))
        .collect();
    assert_eq!(vmms.len(), 1, "one husk-vmm for the pod: {vmms:?}");

    let start_one = |name: &str, cmd: &[&str]| {
        cri.create_and_start(&id, &cfg, &container_config(name, cmd))
            .unwrap_or_else(|e| panic!("container {name}: {e}\n{}", c.log_tail(80)))
    };
    let a = start_one("a", &["sh", "-c", "echo started-a; exec sleep 3600"]);
    let b = start_one("b", &["sleep", "3600"]);
    for x in [&a, &b] {
        wait_container(&cri, x, T, running).unwrap();
    }
    // The pod's namespaces, shared through the agent's anchor (PID 1 of the pod).
    let ns = "for n in ipc uts pid; do readlink /proc/self/ns/$n; done";
    assert_eq!(
        sh(&cri, &a, ns),
        sh(&cri, &b, ns),
        "a and b share IPC, UTS, PID"
    );
    let init = sh(&cri, &a, "tr '\\0' ' ' < /proc/1/cmdline");
    assert!(
        init.contains("__husk-pod-anchor"),
        "PID 1 of the pod: {init:?}"
    );
    assert!(
        sh(&cri, &b, "ps -o args").contains("sleep 3600"),
        "b sees the pod's processes"
    );
    // The pod's files, as CRI gives them under the podsandbox sandboxer.
    assert_eq!(
        sh(&cri, &a, "cat /etc/hosts"),
        std::fs::read_to_string("/etc/hosts").unwrap()
    );
    let resolv = sh(&cri, &a, "cat /etc/resolv.conf");
    assert!(
        resolv.contains(&format!("nameserver {}", cri::DNS_SERVER))
            && resolv.contains(&format!("search {}", cri::DNS_SEARCH)),
        "{resolv:?}"
    );
    assert_eq!(sh(&cri, &b, "hostname"), "sbapi\n");
    let r = cri.exec_sync(&a, &["sh", "-c", "exit 3"], 60).unwrap();
    assert_eq!(r.exit_code, 3);
    assert!(
        cri::eventually(T, || std::fs::read_to_string(logs.join("a.log"))
            .unwrap_or_default()
            .contains(" stdout F started-a")),
        "a's CRI log"
    );

    cri.stop_and_remove_pod(&id)
        .unwrap_or_else(|e| panic!("stop/remove pod: {e}\n{}", c.log_tail(80)));
    c.assert_clean(&[id.as_str(), a.as_str(), b.as_str()]);
    assert!(
        !shim_socket(&c.socket(), cri::NAMESPACE, &id).exists(),
        "the pod's shim socket is left"
    );
    cri::wait_nothing_left(&c, &netns_before).unwrap();
}

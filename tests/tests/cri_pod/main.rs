//! Kubernetes pods on husk: containerd's CRI plugin driven as kubelet drives it
//! (src/cri/), with `runtime_handler = "husk"`, and the same scenario under `runc` for parity.
//!
//! The scenario ([`scenario`]; under husk the pod is restored from a VM template made ahead of
//! time, and its NIC takes the pod's MAC): RunPodSandbox (with a network sysctl), two long-running busybox
//! containers (under husk: one VM, one boot id, not the test host's), the pod's sysctl in both,
//! ExecSync, CRI log files, hostPath volumes ([`volumes`]: read-write, updated on the host,
//! read-only, rslave and rshared with a mount the host makes afterwards), CRI's /etc/hosts,
//! /etc/resolv.conf and hostname, UpdateContainerResources, ContainerStats, an OOM-killed
//! container, a server in the pod reached over the CNI bridge and through CRI PortForward
//! ([`portforward`]), iptables NAT and a bridge programmed in the pod ([`netfilter`]), a missing
//! executable, then StopPodSandbox + RemovePodSandbox and nothing
//! left. Also: ten husk pods at once ([`parallel`]), and bad input ([`bad_input`]: annotations,
//! memory, the node's network, IPC or PID namespace, a missing kernel), and a pod through
//! containerd 2.x's sandbox API ([`sandbox_api`]: no pause container).
//! End-to-end tests (`#[ignore]`d): they run in the nested test host.

mod bad_input;
mod netfilter;
mod parallel;
mod portforward;
mod sandbox_api;
mod scenario;
mod volumes;

use std::time::Duration;

const T: Duration = Duration::from_secs(300);
const HUSK: &str = "husk";
const RUNC: &str = "runc";

#[test]
#[ignore = "end-to-end: needs containerd with CRI, runc and CNI plugins (make e2e)"]
fn cri_pod_runc() {
    scenario::run(RUNC);
}

#[test]
#[ignore = "end-to-end: needs hardware KVM and husk's artifacts (make e2e)"]
fn cri_pod_husk() {
    scenario::run(HUSK);
}

#[test]
#[ignore = "end-to-end: needs hardware KVM and husk's artifacts (make e2e)"]
fn cri_ten_husk_pods_in_parallel() {
    parallel::ten_pods();
}

#[test]
#[ignore = "end-to-end: needs hardware KVM and husk's artifacts (make e2e)"]
fn cri_sandbox_api_pod() {
    sandbox_api::pod_without_pause();
}

#[test]
#[ignore = "end-to-end: needs hardware KVM and husk's artifacts (make e2e)"]
fn cri_bad_input_is_refused_without_leaks() {
    bad_input::refused_without_leaks();
}

//! Bad input refused by name, leaving nothing behind: annotations, memory beyond the host, the
//! node's network, IPC or PID namespace, a missing kernel; the same containerd then runs a good
//! pod.

use husk_tests::containerd::Containerd;
use husk_tests::cri::{self, husk_settings, pod_config, start, Cri};
use k8s_cri::v1::{
    LinuxContainerResources, LinuxSandboxSecurityContext, NamespaceMode, NamespaceOption,
    PodSandboxConfig,
};

use crate::HUSK;

/// RunPodSandbox with `pod` must fail with a message containing every `needles`, leaving
/// nothing behind.
fn refused(c: &Containerd, cri: &Cri, pod: &PodSandboxConfig, needles: &[&str]) {
    let netns_before = cri::netns_names();
    match cri.run_pod(pod, HUSK) {
        Ok(id) => {
            let _ = cri.stop_and_remove_pod(&id);
            panic!("RunPodSandbox accepted a pod it should refuse ({needles:?})");
        }
        Err(e) => {
            let msg = e.to_string();
            eprintln!("cri_bad_input: refused as expected: {msg}");
            for n in needles {
                assert!(msg.contains(n), "the error does not name {n:?}: {msg}");
            }
        }
    }
    cri::wait_nothing_left(c, &netns_before).unwrap();
}

pub fn refused_without_leaks() {
    let settings = husk_settings();
    let (c, cri) = start(Some(&settings));
    let logs = c.base().join("pods/bad");
    std::fs::create_dir_all(&logs).unwrap();

    let mut pod = pod_config("bad-vcpus", &logs);
    pod.annotations
        .insert("io.husk.vcpus".into(), "lots".into());
    refused(&c, &cri, &pod, &["io.husk.vcpus", "lots"]);

    let mut pod = pod_config("bad-memory", &logs);
    pod.annotations
        .insert("io.husk.memory".into(), "100000000".into());
    refused(&c, &cri, &pod, &["memory"]);

    // The pod's declared resources (kubelet's sum of its containers' limits) beyond the host.
    let mut pod = pod_config("bad-limit", &logs);
    if let Some(l) = pod.linux.as_mut() {
        l.resources = Some(LinuxContainerResources {
            memory_limit_in_bytes: 1 << 50,
            ..Default::default()
        });
    }
    refused(&c, &cri, &pod, &["io.kubernetes.cri.sandbox-memory"]);

    // A pod that asks for one of the node's namespaces, which a VM cannot give.
    for (name, mode, needle) in [
        (
            "host-net",
            [NamespaceMode::Node, NamespaceMode::Pod, NamespaceMode::Pod],
            "hostNetwork",
        ),
        (
            "host-ipc",
            [NamespaceMode::Pod, NamespaceMode::Node, NamespaceMode::Pod],
            "hostIPC",
        ),
        (
            "host-pid",
            [NamespaceMode::Pod, NamespaceMode::Pod, NamespaceMode::Node],
            "hostPID",
        ),
    ] {
        let mut pod = pod_config(name, &logs);
        pod.linux.as_mut().unwrap().security_context = Some(LinuxSandboxSecurityContext {
            namespace_options: Some(NamespaceOption {
                network: mode[0] as i32,
                ipc: mode[1] as i32,
                pid: mode[2] as i32,
                ..Default::default()
            }),
            ..Default::default()
        });
        refused(&c, &cri, &pod, &[needle, "runc"]);
    }

    let mut missing = settings.clone();
    missing.artifacts.kernel = c.base().join("no-such-vmlinux");
    c.write_husk_config(&missing).unwrap();
    refused(
        &c,
        &cri,
        &pod_config("bad-kernel", &logs),
        &["no-such-vmlinux"],
    );
    c.write_husk_config(&settings).unwrap();

    // The same containerd still runs a good pod afterwards.
    let good = pod_config("good", &logs);
    let netns_before = cri::netns_names();
    let id = cri
        .run_pod(&good, HUSK)
        .unwrap_or_else(|e| panic!("a good pod after bad ones: {e}\n{}", c.log_tail(40)));
    cri.stop_and_remove_pod(&id).unwrap();
    cri::wait_nothing_left(&c, &netns_before).unwrap();
}

//! husk-vmm in its jail (issue 15), seen from the host while a CRI pod runs:
//!
//! - every thread has a seccomp filter (`Seccomp: 2`), `NoNewPrivs: 1` and the documented
//!   capabilities (none effective but the virtio-fs worker's file-server set);
//! - every thread is in its own mount, network, IPC and UTS namespaces, and the process is PID
//!   1 of its own PID namespace;
//! - `/proc/<pid>/root` is the jail: a tmpfs holding only the socket directory's path and
//!   `proc`, not the host's root;
//! - no core dumps, no locked memory;
//! - it lives in the pod's cgroup (`<cgroup_parent>/<sandbox id>`), which goes with the pod;
//! - and the pod works through all of it: containers created before and after the look (their
//!   root file systems are mounted into the share after husk-vmm entered its jail), exec,
//!   writes, the log stream, stop and remove, with nothing left.
//!
//! End-to-end tests (`#[ignore]`d): they run in the nested test host.

use std::time::Duration;

use husk_tests::containerd::processes_with;
use husk_tests::cri::{self, container_config, pod_config, running, wait_container};

const T: Duration = Duration::from_secs(300);

#[test]
#[ignore = "end-to-end: needs hardware KVM and husk's artifacts (make e2e)"]
fn husk_vmm_runs_filtered_in_its_own_namespaces_and_root_and_the_pod_works() {
    let (c, cri) = cri::start(Some(&cri::husk_settings()));
    let netns = cri::netns_names();
    let logs = c.base().join("pods/jailed");
    std::fs::create_dir_all(&logs).unwrap();
    let cfg = pod_config("jailed", &logs);
    let pod = cri
        .run_pod(&cfg, "husk")
        .unwrap_or_else(|e| panic!("RunPodSandbox: {e}\n{}", c.log_tail(60)));
    let first = cri
        .create_and_start(&pod, &cfg, &container_config("first", &["sleep", "3600"]))
        .unwrap();
    wait_container(&cri, &first, T, running).unwrap();

    let vm_json = format!("{}/{pod}/vm.json", c.husk_state.display());
    let vmms = processes_with(&vm_json);
    assert_eq!(vmms.len(), 1, "one husk-vmm for the pod: {vmms:?}");
    let pid = vmms[0].0;
    let threads = husk_tests::process::check_vmm_privileges(pid).unwrap_or_else(|e| panic!("{e}"));
    let names: Vec<&str> = threads.iter().map(|t| t.name.as_str()).collect();
    for kind in ["vcpu0", "control", "husk-fs-husk", "husk-balloon"] {
        assert!(names.contains(&kind), "no {kind} thread in {names:?}");
    }
    assert!(
        names.iter().any(|n| n.starts_with("husk-vsock")),
        "no vsock thread in {names:?}"
    );
    let jail = husk_tests::process::check_vmm_jail(pid).unwrap_or_else(|e| panic!("{e}"));
    // It lives in the pod's cgroup (the sandbox's cgroupsPath below the pod's cgroup_parent).
    let parent = &cfg.linux.as_ref().unwrap().cgroup_parent;
    assert_eq!(
        husk_tests::cgroup::of(pid),
        Some(format!("{parent}/{pod}")),
        "husk-vmm's cgroup"
    );
    // ... which is charged for the guest's memory: an idle booted guest has touched tens of
    // MiB (kernel, agent, the container), more than husk-vmm's own few.
    let leaf = format!("{parent}/{pod}");
    let current = husk_tests::cgroup::number(&leaf, "memory.current", None).unwrap_or(0);
    eprintln!("vmm_jail: {leaf}: memory.current {} MiB", current >> 20);
    assert!(
        current >= 24 << 20,
        "memory.current of {leaf} is {current} bytes: the guest's memory is not charged to the pod"
    );
    // The shim started it as PID 1 of a PID namespace of its own.
    let nspid = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| {
            l.strip_prefix("NSpid:")
                .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
        })
        .unwrap_or_default();
    assert_eq!(
        nspid,
        format!("{pid} 1"),
        "husk-vmm's pids (host, its namespace)"
    );
    assert_ne!(
        std::fs::read_link(format!("/proc/{pid}/ns/pid")).ok(),
        std::fs::read_link("/proc/self/ns/pid").ok(),
        "husk-vmm shares the host's PID namespace"
    );
    eprintln!(
        "vmm_jail: husk-vmm {pid}: {} threads filtered; root {:?}; limits {:?}",
        threads.len(),
        jail.root_entries,
        jail.limits
    );
    // The jail's view of the socket directory is the host's: the same inode.
    let sockets = c.husk_state.join(&pod).join("run");
    let inside = std::path::PathBuf::from(format!("/proc/{pid}/root{}", sockets.display()));
    let ino = |p: &std::path::Path| {
        std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(p).unwrap_or_else(|e| {
            panic!("{}: {e}", p.display());
        }))
    };
    assert_eq!(
        ino(&inside),
        ino(&sockets),
        "the jail binds the socket directory"
    );
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}/root/etc")).exists(),
        "the host's /etc is visible in the jail"
    );

    // A container created now has its root file system mounted into the share after the VMM
    // entered its jail: the file server still reaches it.
    let second = cri
        .create_and_start(
            &pod,
            &cfg,
            &container_config("second", &["sh", "-c", "echo started; sleep 3600"]),
        )
        .unwrap_or_else(|e| panic!("a container after the jail: {e}\n{}", c.log_tail(60)));
    wait_container(&cri, &second, T, running).unwrap();
    for id in [&first, &second] {
        let r = cri
            .exec_sync(
                id,
                &["sh", "-c", "echo x > /tmp/w && cat /tmp/w /etc/hostname"],
                60,
            )
            .unwrap_or_else(|e| panic!("exec in {id}: {e}\n{}", c.log_tail(60)));
        assert_eq!(r.exit_code, 0, "{r:?}");
        assert!(
            String::from_utf8_lossy(&r.stdout).starts_with("x\n"),
            "{r:?}"
        );
    }
    assert!(
        cri::eventually(Duration::from_secs(60), || {
            std::fs::read_to_string(logs.join("second.log")).is_ok_and(|t| t.contains("started"))
        }),
        "the container's log stream did not arrive"
    );
    // Still jailed, still filtered: nothing the pod did changed it.
    husk_tests::process::check_vmm_privileges(pid).unwrap_or_else(|e| panic!("{e}"));
    cri.stop_and_remove_pod(&pod).unwrap();
    cri::wait_nothing_left(&c, &netns).unwrap();
}

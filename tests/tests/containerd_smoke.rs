//! The smoke set `make e2e` runs on every containerd release a node may have (the release
//! `HUSK_CONTAINERD_BIN` names, else the host's): one `ctr run` with its output and exit code,
//! and one CRI pod with two containers (exec in each, the CRI log, stop and remove), each
//! followed by the no-leak check. On containerd 2.x also: containerd read husk's runtime info
//! (`containerd-shim-husk-v2 -info`) without an error, and the pod sysctls 2.x sets on every
//! pod (unprivileged ports and ICMP) hold in the guest. The full ctr and CRI suites run on the
//! newest release; this set says husk still works on the others.
//!
//! End-to-end tests (`#[ignore]`d): they run in the nested test host.

use std::time::Duration;

use husk_tests::containerd::{Containerd, HUSK};
use husk_tests::cri::{self, container_config, eventually, pod_config, running, wait_container};
use husk_tests::oci_image::BUSYBOX_REF;

const T: Duration = Duration::from_secs(300);

/// Which containerd this run is on, for every failure message.
fn release(c: &Containerd) -> String {
    format!("containerd {}", c.release().version)
}

#[test]
#[ignore = "end-to-end: needs hardware KVM and husk's artifacts (make e2e)"]
fn ctr_run_in_a_husk_vm() {
    let c = Containerd::start(Some(&cri::husk_settings())).expect("starting containerd");
    c.import_busybox().expect("importing busybox");
    let r = release(&c);
    let out = c.ctr(
        &[
            "run",
            "--rm",
            "--runtime",
            HUSK,
            BUSYBOX_REF,
            "smoke",
            "sh",
            "-c",
            "echo hello-from-husk; cat /proc/sys/kernel/random/boot_id; exit 3",
        ],
        None,
        T,
    );
    let host_boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    let lost = c.guest_loss();
    assert_eq!(
        out.code,
        3,
        "[{r}] ctr run{lost}: {out}\n{}",
        c.log_tail(60)
    );
    assert!(
        out.stdout.starts_with("hello-from-husk\n"),
        "[{r}] ctr run{lost}: {out}"
    );
    assert!(
        !out.stdout.contains(host_boot.trim()),
        "[{r}] the container ran in the host's kernel: {out}"
    );
    c.assert_clean(&["smoke"]);
    if c.release().is_v2() {
        let log = c.log_tail(usize::MAX);
        assert!(
            !log.contains("failed to load runtime info"),
            "[{r}] containerd could not read husk's runtime info:\n{}",
            c.log_tail(40)
        );
    }
}

#[test]
#[ignore = "end-to-end: needs hardware KVM and husk's artifacts (make e2e)"]
fn a_cri_pod_with_two_containers() {
    let (c, cri) = cri::start(Some(&cri::husk_settings()));
    let r = release(&c);
    let netns_before = cri::netns_names();
    let logs = c.base().join("pods/smoke");
    std::fs::create_dir_all(&logs).unwrap();
    let pod_cfg = pod_config("smoke", &logs);
    let pod = cri
        .run_pod(&pod_cfg, "husk")
        .unwrap_or_else(|e| panic!("[{r}] RunPodSandbox: {e}\n{}", c.log_tail(60)));
    let a_cfg = container_config("a", &["sh", "-c", "echo started-a; exec sleep 3600"]);
    let b_cfg = container_config("b", &["sleep", "3600"]);
    let mut ids = Vec::new();
    for cfg in [&a_cfg, &b_cfg] {
        let id = cri
            .create_and_start(&pod, &pod_cfg, cfg)
            .unwrap_or_else(|e| panic!("[{r}] container: {e}\n{}", c.log_tail(60)));
        wait_container(&cri, &id, T, running).unwrap();
        ids.push(id);
    }
    let mut boots = Vec::new();
    for id in &ids {
        let x = cri
            .exec_sync(id, &["cat", "/proc/sys/kernel/random/boot_id"], 60)
            .unwrap_or_else(|e| panic!("[{r}] exec in {id}: {e}"));
        assert_eq!(x.exit_code, 0, "[{r}] exec in {id}: {x:?}");
        boots.push(String::from_utf8_lossy(&x.stdout).into_owned());
    }
    let host_boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    assert_eq!(boots[0], boots[1], "[{r}] both containers run in one VM");
    assert_ne!(boots[0], host_boot, "[{r}] the pod runs in its own kernel");
    if c.release().is_v2() {
        // containerd 2.x sets these on every pod (enable_unprivileged_ports/_icmp).
        let x = cri
            .exec_sync(
                &ids[0],
                &[
                    "cat",
                    "/proc/sys/net/ipv4/ip_unprivileged_port_start",
                    "/proc/sys/net/ipv4/ping_group_range",
                ],
                60,
            )
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&x.stdout),
            "0\n0\t2147483647\n",
            "[{r}] containerd's pod sysctls: {x:?}"
        );
    }
    let log = logs.join("a.log");
    assert!(
        eventually(Duration::from_secs(60), || std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains(" stdout F started-a")),
        "[{r}] the CRI log {}: {:?}",
        log.display(),
        std::fs::read_to_string(&log)
    );
    cri.stop_and_remove_pod(&pod)
        .unwrap_or_else(|e| panic!("[{r}] stop/remove pod: {e}\n{}", c.log_tail(60)));
    let mut all: Vec<&str> = ids.iter().map(String::as_str).collect();
    all.push(&pod);
    c.assert_clean(&all);
    cri::wait_nothing_left(&c, &netns_before).unwrap_or_else(|e| panic!("[{r}] {e}"));
}

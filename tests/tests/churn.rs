//! Churn, as a node sees it over months: pods in parallel, each created, exec'd into, stopped
//! and removed, cycle after cycle; afterwards nothing husk made is left (the shared leak check)
//! and containerd's open descriptors are back where they started.
//!
//! `HUSK_CHURN_PODS` × `HUSK_CHURN_CYCLES` (default 10 × 10). Each cycle prints its time; the
//! end prints the host's available memory before and after (`make bench BENCH=churn` runs
//! this test for those figures; nested times are not results).
//!
//! End-to-end test (`#[ignore]`d): it runs in the nested test host.

use std::time::{Duration, Instant};

use husk_tests::cri::{self, eventually, husk_settings, pod_config};

fn env_count(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

fn mem_available_kib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// One pod's life: started as kubelet starts it, an exec, then stop and remove.
fn one_pod(cri: &cri::Cri, logs: &std::path::Path, name: &str, i: usize) -> Result<(), String> {
    std::fs::create_dir_all(logs).map_err(|e| e.to_string())?;
    let mut cfg = pod_config(name, logs);
    let (pod, ctr) = cri::start_pod_like_kubelet(cri, &mut cfg, i, "husk")?;
    let exec = cri
        .exec_sync(&ctr, &["echo", name], 120)
        .map_err(|e| format!("{name}: exec: {e}"));
    let removed = cri
        .stop_and_remove_pod(&pod)
        .map_err(|e| format!("{name}: stop/remove: {e}"));
    let out = exec?;
    removed?;
    if String::from_utf8_lossy(&out.stdout).trim() != name {
        return Err(format!("{name}: exec printed {:?}", out.stdout));
    }
    Ok(())
}

#[test]
#[ignore = "end-to-end: needs hardware KVM and husk's artifacts (make e2e)"]
fn pods_churned_in_parallel_leave_nothing_behind() {
    let (pods, cycles) = (
        env_count("HUSK_CHURN_PODS", 10),
        env_count("HUSK_CHURN_CYCLES", 10),
    );
    let mut settings = husk_settings();
    settings.memory_mib = 128;
    let (c, cri) = cri::start(Some(&settings));
    let netns_before = cri::netns_names();
    let containerd = c.pid().expect("containerd runs");
    // One pod first, so that containerd's lazily opened descriptors (CNI, the CRI plugin's
    // state, the image store) are open before counting.
    one_pod(&cri, &c.base().join("pods/warm"), "warm", 0).unwrap();
    cri::wait_nothing_left(&c, &netns_before).unwrap();
    let fds_before = open_fds(containerd);
    let mem_before = mem_available_kib();
    let mut failures = Vec::new();
    for cycle in 0..cycles {
        let started = Instant::now();
        let results: Vec<Result<(), String>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..pods)
                .map(|i| {
                    let cri = cri.clone();
                    let name = format!("c{cycle}-p{i}");
                    let logs = c.base().join(format!("pods/{name}"));
                    s.spawn(move || one_pod(&cri, &logs, &name, i))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|_| Err("thread panicked".into())))
                .collect()
        });
        let failed: Vec<String> = results.into_iter().filter_map(Result::err).collect();
        eprintln!(
            "churn: cycle {cycle}: {pods} pods in {} ms, {} failed",
            started.elapsed().as_millis(),
            failed.len()
        );
        failures.extend(failed);
    }
    let clean = cri::wait_nothing_left(&c, &netns_before);
    // containerd closes what a pod used shortly after it is removed.
    let settled = eventually(Duration::from_secs(60), || {
        open_fds(containerd) <= fds_before
    });
    let fds_after = open_fds(containerd);
    let mem_after = mem_available_kib();
    eprintln!(
        "churn: {} pods; containerd fds {fds_before} -> {fds_after}; host MemAvailable {} -> {} MiB",
        pods * cycles,
        mem_before / 1024,
        mem_after / 1024
    );
    if !failures.is_empty() {
        let saved = c.save_log("churn");
        panic!("pods failed: {failures:#?}\ncontainerd's log: {saved:?}");
    }
    clean.unwrap();
    assert!(
        settled,
        "containerd holds {fds_after} descriptors, {fds_before} before the churn"
    );
}

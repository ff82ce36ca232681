//! Churn, as a node sees it over months: pods in parallel, each created, exec'd into, stopped
//! and removed, cycle after cycle, on a private containerd with CRI. What it reports: each
//! cycle's time, the pods that failed, whether anything the runtime made is left (the shared
//! leak check), containerd's open descriptors and the host's available memory before and after.
//! `tests/tests/churn.rs` asserts on the report; `make bench BENCH=churn` records it for husk
//! and for runc side by side. husk runs as a node runs it by default, with VM templates on: the
//! template of the pods' shape is made before the first pod, and each pod restores it.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::cri::{self, eventually, husk_settings, pod_config, Cri};
use crate::guest_loss::{environment_loss, fetch_faults_seen};

/// How many pods at once, for how many cycles.
#[derive(Debug, Clone, Copy)]
pub struct Churn {
    pub pods: usize,
    pub cycles: usize,
}

fn env_count(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

impl Churn {
    /// `HUSK_CHURN_PODS` × `HUSK_CHURN_CYCLES`: by default 10 × 10, and 5 × 8 in the nested
    /// test host, whose own kernel panics under VMs cycling in parallel (QEMU 7.2's TCG delivers
    /// an interrupt right after #VMEXIT, docs/testing.md): on 2026-12-04, 3 of 3 runs of 10 × 10
    /// died after 2 to 4 cycles, and a run of 5 × 20 after 12 (7 minutes). The nested numbers
    /// are announced on stderr; `make bench BENCH=churn` takes the full ones from the
    /// environment.
    pub fn from_env() -> Self {
        let nested = std::env::var_os("HUSK_IN_TESTHOST").is_some();
        let (pods, cycles) = if nested { (5, 8) } else { (10, 10) };
        let c = Self {
            pods: env_count("HUSK_CHURN_PODS", pods),
            cycles: env_count("HUSK_CHURN_CYCLES", cycles),
        };
        if nested {
            eprintln!(
                "churn: *** in the nested test host: {} pods in parallel x {} cycles (natively \
                 10 x 10; HUSK_CHURN_PODS, HUSK_CHURN_CYCLES) ***",
                c.pods, c.cycles
            );
        }
        c
    }
}

/// What one churn run saw.
#[derive(Debug)]
pub struct Report {
    /// Each cycle's wall time, ms.
    pub cycle_ms: Vec<f64>,
    /// Each failed pod's error.
    pub failures: Vec<String>,
    /// The leak check after the last cycle.
    pub leaks: Result<(), String>,
    /// containerd's open descriptors after the warm-up pod and after the churn (once they
    /// settled, or after a minute).
    pub fds: (usize, usize),
    /// The host's MemAvailable before and after, KiB.
    pub mem_available_kib: (u64, u64),
    /// Where containerd's log was saved, when a pod failed.
    pub saved_log: Option<String>,
    /// Under husk, the pods that restored the VM template (the rest booted: a template that
    /// cannot be used means a cold boot, never a failed pod); the warm-up pod is not counted.
    pub restored: usize,
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

/// The husk-vmm pids of the shims' "restored from a template pid=N" lines (containerd may
/// carry a shim's line more than once).
fn restored_pids(log: &str) -> std::collections::BTreeSet<u32> {
    log.lines()
        .filter_map(|l| {
            let rest = &l[l.find("restored from a template")?..];
            let pid = &rest[rest.find("pid=")? + 4..];
            pid.chars()
                .take_while(char::is_ascii_digit)
                .collect::<String>()
                .parse()
                .ok()
        })
        .collect()
}

/// One pod's life: started as kubelet starts it, an exec, then stop and remove.
fn one_pod(cri: &Cri, logs: &Path, name: &str, i: usize, handler: &str) -> Result<(), String> {
    std::fs::create_dir_all(logs).map_err(|e| e.to_string())?;
    let mut cfg = pod_config(name, logs);
    let (pod, ctr) = cri::start_pod_like_kubelet(cri, &mut cfg, i, handler)?;
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

/// [`one_pod`], once more under a new name when the nested test host lost the pod's guest
/// while it ran ([`crate::guest_loss`]; a lost start is retried inside `one_pod` already).
fn one_pod_like_kubelet(
    cri: &Cri,
    logs: &Path,
    name: &str,
    i: usize,
    handler: &str,
) -> Result<(), String> {
    let faults_before = fetch_faults_seen();
    let Err(first) = one_pod(cri, logs, name, i, handler) else {
        return Ok(());
    };
    let Some(loss) = environment_loss(&first, faults_before) else {
        return Err(first);
    };
    eprintln!("*** RETRY {name} ({loss}): {first}");
    one_pod(cri, logs, &format!("{name}-again"), i, handler)
        .map_err(|e| format!("{name}: failed twice: first {first}; then {e}"))
}

/// Runs `churn` under `handler` (`husk` or `runc`) on a containerd of its own.
pub fn run(churn: Churn, handler: &str) -> Report {
    // husk as a node runs it by default: pods restore a VM template, made here ahead of time.
    let (c, cri) = if handler == "husk" {
        let mut settings = husk_settings();
        settings.memory_mib = 128;
        cri::start_restoring(&settings, "churn[husk]")
    } else {
        cri::start(None)
    };
    let netns_before = cri::netns_names();
    let containerd = c.pid().expect("containerd runs");
    // One pod first, so that containerd's lazily opened descriptors (CNI, the CRI plugin's
    // state, the image store) are open before counting.
    one_pod(&cri, &c.base().join("pods/warm"), "warm", 0, handler)
        .unwrap_or_else(|e| panic!("churn[{handler}]: the warm-up pod: {e}"));
    cri::wait_nothing_left(&c, &netns_before).unwrap();
    let fds_before = open_fds(containerd);
    let mem_before = mem_available_kib();
    let log_from = c.log_len();
    let mut failures = Vec::new();
    let mut cycle_ms = Vec::new();
    for cycle in 0..churn.cycles {
        let started = Instant::now();
        let results: Vec<Result<(), String>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..churn.pods)
                .map(|i| {
                    let cri = cri.clone();
                    let name = format!("c{cycle}-p{i}");
                    let logs = c.base().join(format!("pods/{name}"));
                    s.spawn(move || one_pod_like_kubelet(&cri, &logs, &name, i, handler))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|_| Err("thread panicked".into())))
                .collect()
        });
        let failed: Vec<String> = results.into_iter().filter_map(Result::err).collect();
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        eprintln!(
            "churn[{handler}]: cycle {cycle}: {} pods in {ms:.0} ms, {} failed",
            churn.pods,
            failed.len()
        );
        // Said now, not only at the end: a test host that dies later must not take them along.
        for f in &failed {
            eprintln!("churn[{handler}]: cycle {cycle}: FAILED: {f}");
        }
        cycle_ms.push(ms);
        failures.extend(failed);
    }
    let leaks = cri::wait_nothing_left(&c, &netns_before).map_err(|e| format!("{e:#}"));
    // containerd closes what a pod used shortly after it is removed.
    eventually(Duration::from_secs(60), || {
        open_fds(containerd) <= fds_before
    });
    let log = c.log_since(log_from);
    let restored = restored_pids(&log).len();
    for warning in log
        .lines()
        .filter(|l| l.contains("template") && (l.contains("WARN") || l.contains("level=warn")))
    {
        eprintln!("churn[{handler}]: the shims warned: {warning}");
    }
    let report = Report {
        restored,
        cycle_ms,
        saved_log: (!failures.is_empty()).then(|| format!("{:?}", c.save_log("churn"))),
        failures,
        leaks,
        fds: (fds_before, open_fds(containerd)),
        mem_available_kib: (mem_before, mem_available_kib()),
    };
    eprintln!(
        "churn[{handler}]: {} pods ({} restored a template); containerd fds {} -> {}; host MemAvailable {} -> {} MiB",
        churn.pods * churn.cycles,
        report.restored,
        report.fds.0,
        report.fds.1,
        report.mem_available_kib.0 / 1024,
        report.mem_available_kib.1 / 1024
    );
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restored_pods_are_counted_once_each() {
        let log = "a INFO restored from a template pid=12 boot_id=x\n\
                   b level=info msg=\"restored from a template\" pid=12\n\
                   c INFO restored from a template pid=40\n\
                   d WARN restoring the template failed pid=41\n";
        assert_eq!(
            restored_pids(log).into_iter().collect::<Vec<_>>(),
            vec![12, 40]
        );
    }
}

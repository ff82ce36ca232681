//! `balloon_return_pct` of `make bench BENCH=cri` (issue 17, item 4): the share of the memory
//! a pod's guest touched and freed that is back on the host within 10 s. A container in a
//! 512 MiB pod (`io.husk.memory`) runs `dd` with a 200 MiB buffer (reading /dev/zero touches
//! every page of it) and exits, which frees it in the guest; the guest's free page reporting
//! hands the free runs to husk-vmm, which drops them. husk-vmm's RSS: before, at its peak while
//! `dd` runs (sampled every 100 ms), and 10 s after `dd` ended.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;

use crate::containerd::{processes_with, Containerd};
use crate::cri::{container_config, pod_config, running, wait_container, Cri};

/// What `dd` touches, MiB.
pub const TOUCH_MIB: u64 = 200;
/// How long the host has to get it back.
pub const WITHIN: Duration = Duration::from_secs(10);

fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("no VmRSS")
}

/// The returned share in percent, with (before, peak, after) RSS in KiB.
pub fn measure(c: &Containerd, cri: &Cri, logs: &Path) -> anyhow::Result<(f64, [u64; 3])> {
    let dir = logs.join("balloon");
    std::fs::create_dir_all(&dir)?;
    let mut cfg = pod_config("balloon", &dir);
    cfg.annotations
        .insert("io.husk.memory".into(), "512".into());
    let pod = cri.run_pod(&cfg, "husk")?;
    let result = (|| {
        let ctr = cri.create_and_start(&pod, &cfg, &container_config("c", &["sleep", "3600"]))?;
        wait_container(cri, &ctr, Duration::from_secs(300), running)?;
        let vm_json = format!("{}/{pod}/vm.json", c.husk_state.display());
        let vmm = processes_with(&vm_json)
            .first()
            .map(|(p, _)| *p)
            .with_context(|| format!("no husk-vmm running {vm_json}"))?;
        std::thread::sleep(Duration::from_secs(3));
        let before = rss_kib(vmm)?;
        let done = AtomicBool::new(false);
        let (out, peak) = std::thread::scope(|s| {
            let sampler = s.spawn(|| {
                let mut peak = before;
                while !done.load(Ordering::Relaxed) {
                    peak = peak.max(rss_kib(vmm).unwrap_or(0));
                    std::thread::sleep(Duration::from_millis(100));
                }
                peak
            });
            let dd = format!("dd if=/dev/zero of=/dev/null bs={TOUCH_MIB}M count=1");
            let out = cri.exec_sync(&ctr, &["sh", "-c", &dd], 300);
            done.store(true, Ordering::Relaxed);
            (out, sampler.join().unwrap_or(0))
        });
        let code = out?.exit_code;
        anyhow::ensure!(code == 0, "dd in the pod exited {code}");
        std::thread::sleep(WITHIN);
        let after = rss_kib(vmm)?;
        let grown = peak.saturating_sub(before).max(1);
        let back = peak.saturating_sub(after);
        Ok((back as f64 * 100.0 / grown as f64, [before, peak, after]))
    })();
    cri.stop_and_remove_pod(&pod)?;
    result
}

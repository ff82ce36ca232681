//! The template half of `make bench BENCH=ctr`: the same `ctr run --rm /bin/true` on a VM
//! restored from a template, and the host memory of idle restored pods, which share the
//! template's pages (PSS splits a shared page between the processes that map it).

use std::time::{Duration, Instant};

use anyhow::bail;

use super::{pss_kib, remove_idle, run_idle, run_true, shim_pid, vmm_pid};
use crate::containerd::{Containerd, HuskSettings, HUSK};

/// How long the first template may take to be made in the background.
const BUILD: Duration = Duration::from_secs(300);

/// `settings` with templates on.
pub fn on(settings: &HuskSettings) -> HuskSettings {
    let mut s = settings.clone();
    s.templates = true;
    s
}

/// Makes the template of the bench's pods: one pod boots with templates on, and the shim makes
/// the template in the background.
pub fn make(c: &Containerd, settings: &HuskSettings) -> anyhow::Result<()> {
    c.write_husk_config(&on(settings))?;
    let from = c.log_len();
    run_true(c, HUSK, "bench-template-make")?;
    // The shim's log may end before its background build does: look at the directory.
    let dir = crate::containerd::template_dir(&c.husk_state);
    let deadline = Instant::now() + BUILD;
    loop {
        let made = std::fs::read_dir(&dir)
            .map(|d| {
                d.flatten().any(|e| {
                    !e.file_name().to_string_lossy().starts_with('.')
                        && e.path().join("template.json").exists()
                })
            })
            .unwrap_or(false);
        if made {
            return Ok(());
        }
        let log = c.log_since(from);
        if let Some(line) = log.lines().find(|l| l.contains("making the template")) {
            bail!("the template was not made: {line}");
        }
        if Instant::now() > deadline {
            bail!(
                "no template in {} within {BUILD:?}:\n{}",
                dir.display(),
                c.log_tail(40)
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The `ms=` of the shim's "the guest agent is ready" line in `log`: husk-vmm started to agent
/// answering.
pub fn vm_ready_ms(log: &str) -> Option<f64> {
    log.lines()
        .filter(|l| l.contains("the guest agent is ready"))
        .filter_map(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix("ms="))
                .and_then(|v| v.trim_matches('"').parse().ok())
        })
        .next_back()
}

/// One `ctr run --rm /bin/true` under husk with `settings`: (wall ms, VM ready ms). With
/// templates on it must have restored one.
pub fn run_husk(
    c: &Containerd,
    settings: &HuskSettings,
    id: &str,
) -> anyhow::Result<(f64, Option<f64>)> {
    c.write_husk_config(settings)?;
    let from = c.log_len();
    let ms = run_true(c, HUSK, id)?;
    let log = c.log_since(from);
    if settings.templates && !log.contains("restored from a template") {
        bail!("{id} did not restore the template:\n{log}");
    }
    Ok((ms, vm_ready_ms(&log)))
}

/// Average host memory of one of `count` idle pods restored from the template: PSS of its
/// shim plus its husk-vmm (guest RAM included, the template's pages split between the pods
/// that map them), in KiB.
pub fn idle_pss_kib(c: &Containerd, settings: &HuskSettings, count: usize) -> anyhow::Result<f64> {
    c.write_husk_config(&on(settings))?;
    let ids: Vec<String> = (0..count)
        .map(|i| format!("bench-template-idle-{i}"))
        .collect();
    let mut started = Vec::new();
    let result = (|| {
        for id in &ids {
            run_idle(c, HUSK, id)?;
            started.push(id.clone());
        }
        std::thread::sleep(Duration::from_secs(5));
        let mut total = 0u64;
        for id in &ids {
            total +=
                pss_kib(shim_pid(c, "containerd-shim-husk-v2", id)?)? + pss_kib(vmm_pid(c, id)?)?;
        }
        Ok(total as f64 / count as f64)
    })();
    remove_idle(c, &started);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_ready_is_read_from_the_last_ready_line() {
        let log = "time=1 level=info msg=\"husk-vmm started\" pid=3\n\
                   time=2 level=info msg=\"the guest agent is ready\" pid=3 ms=812\n\
                   time=3 level=info msg=\"the guest agent is ready\" pid=4 ms=95\n";
        assert_eq!(vm_ready_ms(log), Some(95.0));
        assert_eq!(vm_ready_ms("nothing"), None);
    }
}

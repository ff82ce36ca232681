//! The template half of `make bench BENCH=cri`: pods restored from a VM template made ahead of
//! time (`template build --nics 1`, a CRI pod's one NIC), interleaved with the cold husk pods
//! and runc's, and the host memory of idle restored pods, which share the template's pages
//! (PSS splits a shared page between the processes that map it).
//!
//! Templates are a husk config setting, and a shim reads the config when it starts: each run
//! writes the config its side needs before its pod starts ([`Sides`]).

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};

use super::{ready, shim_pid, Phases};
use crate::bench_ctr::pss_kib;
use crate::containerd::{processes_with, Containerd, HuskSettings};
use crate::cri::Cri;

/// The husk config of each husk side: cold boots and template restores.
pub struct Sides {
    cold: HuskSettings,
    template: HuskSettings,
}

impl Sides {
    /// Makes the template the pods restore (the config's size, one NIC) and leaves the cold
    /// config in place.
    pub fn prepare(c: &Containerd, settings: &HuskSettings) -> anyhow::Result<Sides> {
        let mut template = settings.clone();
        template.templates = true;
        let mut cold = settings.clone();
        cold.templates = false;
        c.write_husk_config(&template)?;
        let said = c.build_template(&settings.artifacts.shim, 1)?;
        eprintln!("husk-bench: {said}");
        c.write_husk_config(&cold)?;
        Ok(Sides { cold, template })
    }

    /// Runs `f` with the config of the side `restored` names, and the cold one after.
    fn with<T>(
        &self,
        c: &Containerd,
        restored: bool,
        f: impl FnOnce() -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        if restored {
            c.write_husk_config(&self.template)?;
        }
        let out = f();
        c.write_husk_config(&self.cold)?;
        out
    }
}

/// One restored pod's start (it must have restored the template); the pod is removed after.
pub fn pod_ready(
    c: &Containerd,
    cri: &Cri,
    logs: &Path,
    sides: &Sides,
    name: &str,
) -> anyhow::Result<Phases> {
    sides.with(c, true, || {
        let from = c.log_len();
        let (phases, pod, _) = ready(cri, logs, "husk", name)?;
        cri.stop_and_remove_pod(&pod)?;
        if !c.log_since(from).contains("restored from a template") {
            bail!("{name} did not restore the template:\n{}", c.log_tail(40));
        }
        Ok(phases)
    })
}

/// Average host memory of one of `count` idle restored pods (pause + a `sleep` container):
/// PSS of its shim plus its husk-vmm, guest RAM included, in KiB.
pub fn idle_pss_kib(
    c: &Containerd,
    cri: &Cri,
    logs: &Path,
    sides: &Sides,
    count: usize,
) -> anyhow::Result<f64> {
    let mut pods = Vec::new();
    let result = sides.with(c, true, || {
        for i in 0..count {
            let from = c.log_len();
            let (_, pod, _) = ready(cri, logs, "husk", &format!("mem-template-{i}"))?;
            pods.push(pod);
            if !c.log_since(from).contains("restored from a template") {
                bail!("idle pod {i} did not restore the template");
            }
        }
        std::thread::sleep(Duration::from_secs(5));
        let mut total = 0u64;
        for pod in &pods {
            let vm_json = format!("{}/{pod}/vm.json", c.husk_state.display());
            let vmm = processes_with(&vm_json)
                .first()
                .map(|(p, _)| *p)
                .with_context(|| {
                    format!(
                        "no husk-vmm running {vm_json}; the log of pod {pod}:\n{}",
                        lines_of(c, pod)
                    )
                })?;
            total += pss_kib(shim_pid(c, "containerd-shim-husk-v2", pod)?)? + pss_kib(vmm)?;
        }
        Ok(total as f64 / count as f64)
    });
    for pod in &pods {
        if let Err(e) = cri.stop_and_remove_pod(pod) {
            eprintln!("husk-bench: removing idle pod {pod}: {e:#}");
        }
    }
    result
}

/// containerd's log lines (the shims' among them) that name `pod`, the last 40.
fn lines_of(c: &Containerd, pod: &str) -> String {
    let log = c.log_tail(usize::MAX);
    let mut lines: Vec<&str> = log.lines().filter(|l| l.contains(pod)).collect();
    if lines.is_empty() {
        lines = log.lines().collect();
    }
    lines[lines.len().saturating_sub(40)..].join("\n")
}

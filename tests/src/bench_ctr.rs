//! `make bench BENCH=ctr`: containerd-level cost of husk against runc, in one private containerd
//! and one run.
//!
//! - `run_true_ms`: wall time of `ctr run --rm <busybox> /bin/true`, husk and runc interleaved
//!   (so drift in the machine's load hits both), medians of at least 10 runs after a warm-up
//!   each; the ratio's target is at most 2x runc.
//! - `shim_vmm_pss_mib`: host memory of one running container, `ctr run -d ... sleep`: the husk
//!   shim's PSS plus husk-vmm's PSS outside guest RAM, against the runc shim's PSS (target:
//!   shim + VMM at most 20 MiB).
//! - `guest_rss_mib`: guest RAM actually resident (reported separately; it is the VM's memory,
//!   which a runc container has no counterpart for).
//! - With a template ([`template`]): `run_true_template_ms`, the same run on a VM
//!   restored from a template, interleaved with the cold husk run and runc's;
//!   `vm_ready_template_ms`, husk-vmm started to the agent answering, restored against cold
//!   (the shim's own measurement, from its log); `pod_host_template_mib`, the average PSS of
//!   shim and husk-vmm (guest RAM included) of ten idle restored pods, against runc's shim, and
//!   `pod_host_mib` the same of one cold pod.

pub mod template;

use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::bench::{self, Record};
use crate::containerd::{processes_with, Containerd, HuskArtifacts, HuskSettings, HUSK, RUNC};
use crate::oci_image::BUSYBOX_REF;

/// Fewest measured runs per side.
pub const MIN_RUNS: usize = 10;
const RUN_TIMEOUT: Duration = Duration::from_secs(300);

fn record(metric: &str, unit: &str, husk: Option<f64>, runc: Option<f64>, runs: usize) -> Record {
    Record::versus_runc("ctr", metric, unit, husk, runc, runs)
}

pub fn run_true(c: &Containerd, runtime: &str, id: &str) -> anyhow::Result<f64> {
    let started = Instant::now();
    let out = c.ctr(
        &[
            "run",
            "--rm",
            "--runtime",
            runtime,
            BUSYBOX_REF,
            id,
            "/bin/true",
        ],
        None,
        RUN_TIMEOUT,
    );
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    if out.code != 0 {
        bail!(
            "ctr run --runtime {runtime} {id} /bin/true: {out}\ncontainerd log:\n{}",
            c.log_tail(30)
        );
    }
    Ok(ms)
}

/// PSS of a process in KiB (`/proc/<pid>/smaps_rollup`).
pub fn pss_kib(pid: u32) -> anyhow::Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .with_context(|| format!("reading /proc/{pid}/smaps_rollup"))?;
    text.lines()
        .find_map(|l| l.strip_prefix("Pss:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no Pss line in smaps_rollup")
}

pub fn shim_pid(c: &Containerd, binary: &str, id: &str) -> anyhow::Result<u32> {
    let sock = c.socket().display().to_string();
    processes_with(&format!("-id {id} "))
        .into_iter()
        .find(|(_, cmd)| cmd.contains(binary) && cmd.contains(&sock) && !cmd.contains(" start"))
        .map(|(pid, _)| pid)
        .with_context(|| format!("no {binary} process for {id}"))
}

/// Starts `ctr run -d <busybox> <id> sleep 3600` under `runtime`.
pub fn run_idle(c: &Containerd, runtime: &str, id: &str) -> anyhow::Result<()> {
    let out = c.ctr(
        &[
            "run",
            "-d",
            "--runtime",
            runtime,
            BUSYBOX_REF,
            id,
            "sleep",
            "3600",
        ],
        None,
        RUN_TIMEOUT,
    );
    if out.code != 0 {
        bail!("ctr run -d --runtime {runtime} {id}: {out}");
    }
    Ok(())
}

/// The husk-vmm of husk container `id` (the one running its sandbox's `vm.json`).
pub fn vmm_pid(c: &Containerd, id: &str) -> anyhow::Result<u32> {
    let vm_json = format!("{}/{id}/vm.json", c.husk_state.display());
    processes_with(&vm_json)
        .first()
        .map(|(p, _)| *p)
        .with_context(|| format!("no husk-vmm running {vm_json}"))
}

/// Kills and removes the containers `ids` started by [`run_idle`].
pub fn remove_idle(c: &Containerd, ids: &[String]) {
    for id in ids {
        c.ctr(&["task", "kill", "-s", "SIGKILL", id], None, RUN_TIMEOUT);
    }
    std::thread::sleep(Duration::from_secs(1));
    for id in ids {
        c.ctr(&["task", "rm", "-f", id], None, RUN_TIMEOUT);
        c.ctr(&["container", "rm", id], None, RUN_TIMEOUT);
    }
}

/// Memory of one running container: (shim PSS KiB, VMM PSS outside guest RAM KiB, guest RSS KiB).
fn memory(
    c: &Containerd,
    runtime: &str,
    id: &str,
    guest_mib: u32,
) -> anyhow::Result<(u64, u64, u64)> {
    run_idle(c, runtime, id)?;
    std::thread::sleep(Duration::from_secs(3));
    let result = (|| {
        if runtime == HUSK {
            let shim = pss_kib(shim_pid(c, "containerd-shim-husk-v2", id)?)?;
            let (overhead, guest) =
                bench::vmm_memory_kib(vmm_pid(c, id)?, u64::from(guest_mib) * 1024)?;
            Ok((shim, overhead, guest))
        } else {
            Ok((pss_kib(shim_pid(c, "containerd-shim-runc-v2", id)?)?, 0, 0))
        }
    })();
    remove_idle(c, &[id.to_string()]);
    result
}

/// Runs the benchmark with `runs` measured runs per side (at least [`MIN_RUNS`]).
pub fn run(runs: usize) -> anyhow::Result<Vec<Record>> {
    let runs = runs.max(MIN_RUNS);
    let artifacts = HuskArtifacts::from_env().map_err(anyhow::Error::msg)?;
    let settings = HuskSettings::new(artifacts);
    let c = Containerd::start(Some(&settings))?;
    c.import_busybox()?;
    run_true(&c, RUNC, "bench-runc-warm")?;
    run_true(&c, HUSK, "bench-husk-warm")?;
    template::make(&c, &settings)?;
    let with_template = template::on(&settings);
    let (mut h, mut r, mut t) = (Vec::new(), Vec::new(), Vec::new());
    let (mut h_ready, mut t_ready) = (Vec::new(), Vec::new());
    for i in 0..runs {
        r.push(run_true(&c, RUNC, &format!("bench-runc-{i}"))?);
        let (ms, ready) = template::run_husk(&c, &settings, &format!("bench-husk-{i}"))?;
        h.push(ms);
        h_ready.extend(ready);
        let (ms, ready) = template::run_husk(&c, &with_template, &format!("bench-husk-tpl-{i}"))?;
        t.push(ms);
        t_ready.extend(ready);
        eprintln!(
            "husk-bench: ctr run {}: husk {:.0} ms, husk from a template {:.0} ms, runc {:.0} ms",
            i + 1,
            h[i],
            t[i],
            r[i]
        );
    }
    c.write_husk_config(&settings)?;
    let (shim, vmm, guest) = memory(&c, HUSK, "bench-mem-husk", settings.memory_mib)?;
    let (runc_shim, _, _) = memory(&c, RUNC, "bench-mem-runc", 0)?;
    eprintln!(
        "husk-bench: memory: husk shim {shim} KiB + husk-vmm {vmm} KiB (guest RAM resident {guest} KiB); runc shim {runc_shim} KiB"
    );
    let template_pss = template::idle_pss_kib(&c, &settings, 10)?;
    eprintln!(
        "husk-bench: memory: an idle pod restored from a template: {template_pss:.0} KiB \
         (shim + husk-vmm PSS, average of 10); a cold one: {} KiB",
        shim + vmm + guest
    );
    let mib = |k: u64| k as f64 / 1024.0;
    let ready_vs_cold = Record {
        bench: "ctr".into(),
        metric: "vm_ready_template_ms".into(),
        unit: "ms".into(),
        husk: bench::median(&t_ready),
        anchor: "husk cold boot".into(),
        anchor_value: bench::median(&h_ready),
        ratio: None,
        runs: t_ready.len(),
        host: bench::host_label().into(),
    }
    .with_ratio();
    Ok(vec![
        record(
            "run_true_template_ms",
            "ms",
            bench::median(&t),
            bench::median(&r),
            runs,
        ),
        ready_vs_cold,
        record(
            "pod_host_template_mib",
            "MiB",
            Some(template_pss / 1024.0),
            Some(mib(runc_shim)),
            10,
        ),
        record(
            "pod_host_mib",
            "MiB",
            Some(mib(shim + vmm + guest)),
            Some(mib(runc_shim)),
            1,
        ),
        record(
            "run_true_ms",
            "ms",
            bench::median(&h),
            bench::median(&r),
            runs,
        ),
        record(
            "shim_vmm_pss_mib",
            "MiB",
            Some(mib(shim + vmm)),
            Some(mib(runc_shim)),
            1,
        ),
        record("guest_rss_mib", "MiB", Some(mib(guest)), None, 1),
    ])
}

//! `make bench BENCH=cri`: the cost of a Kubernetes pod on husk against runc, through
//! containerd's CRI plugin as kubelet drives it (src/cri/), in one private containerd and one
//! run.
//!
//! - `pod_ready_ms`: RunPodSandbox → CreateContainer → StartContainer → the container RUNNING
//!   in ContainerStatus; husk and runc interleaved (the order turning each round), medians of
//!   at least 10 runs after a warm-up each. Removing the pod is not timed.
//! - `pod_ready_sandbox_api_ms` (containerd 2.x only): the same under the `husk-sandbox` handler,
//!   containerd's sandbox API (`sandboxer = "shim"`, no pause container), interleaved with the
//!   other two in the same run.
//! - `pod_host_mib`: host memory of one idle pod (pause + a `sleep` container): husk's shim PSS,
//!   plus husk-vmm's PSS outside guest RAM, plus guest RAM the guest touched; against runc's
//!   shim PSS plus the PSS of the pod's two processes.
//! - With a VM template made ahead of time ([`template`], issue 17): `pod_ready_template_ms`,
//!   the same pod start on a VM restored from it, interleaved with the other sides, against
//!   runc; `vm_ready_template_ms`, husk-vmm started to the agent answering, restored against
//!   the cold boots of the same run (the shim's own measurement, from its log);
//!   `pod_host_template_mib`, the average PSS of shim and husk-vmm (guest RAM included) of
//!   ten idle restored pods, against runc's per-pod figure.
//! - `balloon_return_pct` ([`balloon`]): the share of 200 MiB a pod's guest touched and freed
//!   that is back on the host within 10 s (free page reporting).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::bench::{self, Record};
use crate::bench_ctr::pss_kib;
use crate::containerd::cri_config::SANDBOX_API_HANDLER;
use crate::containerd::{processes_with, Containerd, HuskArtifacts, HuskSettings};
use crate::cri::{self, container_config, pod_config, running, wait_container, Cri};

mod balloon;
mod template;
mod trace;

/// Fewest measured runs per side.
pub const MIN_RUNS: usize = 10;
/// Idle pods restored from one template whose memory is averaged.
const IDLE_TEMPLATE_PODS: usize = 10;

/// The sides of the interleaved pod start runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Runc,
    Husk,
    Template,
    SandboxApi,
}

impl Side {
    /// In the order of the round's report.
    const ALL: [Side; 4] = [Side::Runc, Side::Husk, Side::Template, Side::SandboxApi];

    /// The CRI runtime handler (a template side's pods run under `husk`), or the label.
    fn label(self) -> &'static str {
        match self {
            Side::Runc => "runc",
            Side::Husk => "husk",
            Side::Template => "husk-template",
            Side::SandboxApi => SANDBOX_API_HANDLER,
        }
    }
}
const READY_TIMEOUT: Duration = Duration::from_secs(300);

fn record(metric: &str, unit: &str, husk: Option<f64>, runc: Option<f64>, runs: usize) -> Record {
    Record::versus_runc("cri", metric, unit, husk, runc, runs)
}

/// Where a pod's start time went, in ms: RunPodSandbox (husk boots the VM there) and the rest
/// (CreateContainer, StartContainer, until ContainerStatus says RUNNING).
#[derive(Debug, Clone, Copy)]
struct Phases {
    run_pod: f64,
    container: f64,
}

impl Phases {
    fn total(&self) -> f64 {
        self.run_pod + self.container
    }
}

fn ms_since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}

/// Starts pod `name` with one `sleep` container under `handler` and waits until it runs;
/// returns (phases, pod id, container id).
fn ready(
    cri: &Cri,
    logs: &Path,
    handler: &str,
    name: &str,
) -> anyhow::Result<(Phases, String, String)> {
    let dir = logs.join(name);
    std::fs::create_dir_all(&dir)?;
    let cfg = pod_config(name, &dir);
    let started = Instant::now();
    let pod = cri.run_pod(&cfg, handler)?;
    let run_pod = ms_since(started);
    let container_started = Instant::now();
    let started_ctr = (|| {
        let ctr = cri.create_and_start(&pod, &cfg, &container_config("c", &["sleep", "3600"]))?;
        wait_container(cri, &ctr, READY_TIMEOUT, running)?;
        Ok::<_, anyhow::Error>(ctr)
    })();
    match started_ctr {
        Ok(ctr) => {
            let container = ms_since(container_started);
            Ok((Phases { run_pod, container }, pod, ctr))
        }
        Err(e) => {
            let _ = cri.stop_and_remove_pod(&pod);
            Err(e)
        }
    }
}

/// The numbers after `field` on the lines of containerd's log (which carries the shims' logs)
/// that contain `needle`: e.g. the shim's "the guest agent is ready ... ms=1834".
fn logged_numbers(log: &str, needle: &str, field: &str) -> Vec<f64> {
    log.lines()
        .filter(|l| l.contains(needle))
        .filter_map(|l| {
            let rest = &l[l.find(needle)?..];
            let rest = &rest[rest.find(field)? + field.len()..];
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        })
        .collect()
}

/// Writes the shims' logs of the timed pods into the directory `HUSK_BENCH_LOGS` names, if it
/// is set (`make bench` sets it to target/bench/logs), for reading a run's phases pod by pod.
fn keep_logs(logs: &[(&str, &str)]) {
    let Some(dir) = std::env::var_os("HUSK_BENCH_LOGS") else {
        return;
    };
    let dir = Path::new(&dir);
    let kept = std::fs::create_dir_all(dir).and_then(|()| {
        logs.iter()
            .try_for_each(|(name, log)| std::fs::write(dir.join(name), log))
    });
    match kept {
        Ok(()) => eprintln!("husk-bench: the shims' logs are in {}", dir.display()),
        Err(e) => eprintln!("husk-bench: keeping the logs in {}: {e}", dir.display()),
    }
}

/// Failed runs are reported and not counted; past this many the benchmark gives up. On the
/// nested test host a few percent of guest boots die in early kernel setup under any VMM
/// (scripts/boot-stress.sh, issue 3), and kubelet would retry such a pod.
const MAX_FAILED_RUNS: usize = 3;

/// Failed runs so far, each printed when it happens.
#[derive(Default)]
struct Failures(Vec<String>);

impl Failures {
    fn note(&mut self, what: &str, e: &anyhow::Error) -> anyhow::Result<()> {
        eprintln!("husk-bench: *** {what} FAILED (not counted): {e:#}");
        self.0.push(format!("{what}: {e:#}"));
        if self.0.len() > MAX_FAILED_RUNS {
            anyhow::bail!("{} runs failed: {:#?}", self.0.len(), self.0);
        }
        Ok(())
    }
}

fn pod_ready(cri: &Cri, logs: &Path, handler: &str, name: &str) -> anyhow::Result<Phases> {
    let (phases, pod, _) = ready(cri, logs, handler, name)?;
    cri.stop_and_remove_pod(&pod)?;
    Ok(phases)
}

/// The task pid ctr reports for `id` in `k8s.io`.
fn task_pid(c: &Containerd, id: &str) -> anyhow::Result<u32> {
    let out = c.ctr(&["task", "ls"], None, READY_TIMEOUT);
    out.stdout
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.first() == Some(&id)).then(|| f.get(1).and_then(|p| p.parse().ok()))?
        })
        .with_context(|| format!("no task {id} in `ctr task ls`: {out}"))
}

fn shim_pid(c: &Containerd, binary: &str, pod: &str) -> anyhow::Result<u32> {
    let sock = c.socket().display().to_string();
    processes_with(&format!("-id {pod} "))
        .into_iter()
        .find(|(_, cmd)| cmd.contains(binary) && cmd.contains(&sock) && !cmd.contains(" start"))
        .map(|(pid, _)| pid)
        .with_context(|| format!("no {binary} process for pod {pod}"))
}

/// Host memory of one idle pod in KiB: (shim + VMM overhead, guest RAM touched) for husk,
/// (shim + the pod's processes, 0) for runc.
fn idle_pod_kib(
    c: &Containerd,
    cri: &Cri,
    logs: &Path,
    handler: &str,
    guest_mib: u32,
) -> anyhow::Result<(u64, u64)> {
    let (_, pod, ctr) = ready(cri, logs, handler, &format!("mem-{handler}"))?;
    std::thread::sleep(Duration::from_secs(3));
    let result = (|| {
        if handler == "husk" {
            let shim = pss_kib(shim_pid(c, "containerd-shim-husk-v2", &pod)?)?;
            let vm_json = format!("{}/{pod}/vm.json", c.husk_state.display());
            let vmm = processes_with(&vm_json)
                .first()
                .map(|(p, _)| *p)
                .with_context(|| format!("no husk-vmm running {vm_json}"))?;
            let (overhead, guest) = bench::vmm_memory_kib(vmm, u64::from(guest_mib) * 1024)?;
            Ok((shim + overhead, guest))
        } else {
            let shim = pss_kib(shim_pid(c, "containerd-shim-runc-v2", &pod)?)?;
            let procs = pss_kib(task_pid(c, &pod)?)? + pss_kib(task_pid(c, &ctr)?)?;
            Ok((shim + procs, 0))
        }
    })();
    cri.stop_and_remove_pod(&pod)?;
    result
}

/// Runs the benchmark with `runs` measured runs per side (at least [`MIN_RUNS`]).
pub fn run(runs: usize) -> anyhow::Result<Vec<Record>> {
    let runs = runs.max(MIN_RUNS);
    let artifacts = HuskArtifacts::from_env().map_err(anyhow::Error::msg)?;
    let settings = HuskSettings::new(artifacts);
    let c = Containerd::start_cri(Some(&settings))?;
    cri::import_images(&c)?;
    let cri = Cri::connect(&c.socket())?;
    let logs = c.base().join("pods");
    let mut failures = Failures::default();
    let sandbox_api = c.release().is_v2();
    let handlers: &[&str] = if sandbox_api {
        &["runc", "husk", SANDBOX_API_HANDLER]
    } else {
        &["runc", "husk"]
    };
    for handler in handlers {
        let name = format!("warm-{handler}");
        if let Err(e) = pod_ready(&cri, &logs, handler, &name) {
            failures.note(&name, &e)?;
        }
    }
    let sides = template::Sides::prepare(&c, &settings)?;
    let mut trace = trace::Trace::from_env();
    let (mut h, mut r, mut s, mut t) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    // husk-vmm started → agent answering of each restored pod (the shim's log).
    // The log of the cold husk runs alone, for the boot figures below: a restored VM logs
    // the same "ready" line.
    let mut cold_log = String::new();
    let mut template_log = String::new();
    // Without the sandbox API its side is done from the start.
    let s_runs = if sandbox_api { runs } else { 0 };
    let mut attempt = 0;
    while h.len() < runs || r.len() < runs || s.len() < s_runs || t.len() < runs {
        attempt += 1;
        // One side's run this round: its time, "failed", or "done" when it has its runs.
        let mut one = |side: Side| -> anyhow::Result<String> {
            let (times, wanted) = match side {
                Side::Runc => (&mut r, runs),
                Side::Husk => (&mut h, runs),
                Side::Template => (&mut t, runs),
                Side::SandboxApi => (&mut s, s_runs),
            };
            if times.len() >= wanted {
                return Ok("done".into());
            }
            let name = format!("{}-{attempt}", side.label());
            let from = c.log_len();
            let got = match side {
                Side::Template => match trace.as_mut() {
                    Some(t) => t.around(&c, || template::pod_ready(&c, &cri, &logs, &sides, &name)),
                    None => template::pod_ready(&c, &cri, &logs, &sides, &name),
                },
                _ => pod_ready(&cri, &logs, side.label(), &name),
            };
            match side {
                Side::Husk => cold_log.push_str(&c.log_since(from)),
                Side::Template => template_log.push_str(&c.log_since(from)),
                _ => {}
            }
            Ok(match got {
                Ok(phases) => {
                    times.push(phases);
                    format!("{:.0} ms", phases.total())
                }
                Err(e) => {
                    failures.note(&name, &e)?;
                    "failed".into()
                }
            })
        };
        // The order turns every round: a pod started right after a VM's teardown (still
        // freeing guest memory in the nested test host) starts slower, and no side may always
        // be the one that follows it.
        let mut said = [String::new(), String::new(), String::new(), String::new()];
        for k in 0..Side::ALL.len() {
            let i = (attempt + k) % Side::ALL.len();
            said[i] = one(Side::ALL[i])?;
        }
        eprintln!(
            "husk-bench: cri round {attempt}: runc {}, husk {}, husk from a template {}, husk-sandbox {}",
            said[0], said[1], said[2], said[3]
        );
    }
    for (handler, times) in [
        ("husk", &h),
        ("husk from a template", &t),
        ("runc", &r),
        (SANDBOX_API_HANDLER, &s),
    ] {
        let med = |f: fn(&Phases) -> f64| {
            bench::median(&times.iter().map(f).collect::<Vec<_>>()).unwrap_or(f64::NAN)
        };
        eprintln!(
            "husk-bench: {handler} medians: RunPodSandbox {:.0} ms, container create+start+running {:.0} ms",
            med(|p| p.run_pod),
            med(|p| p.container)
        );
    }
    keep_logs(&[
        ("cri-cold.log", &cold_log),
        ("cri-restored.log", &template_log),
    ]);
    let log = cold_log;
    let boots = logged_numbers(&log, "the guest agent is ready", " ms=");
    let setups = logged_numbers(&log, "vCPUs running; setup ", "setup ");
    let guest_ready = logged_numbers(&log, "the guest agent is ready", "guest_ready_ms=");
    let guest_uptime = logged_numbers(&log, "the guest agent is ready", "guest_uptime_ms=");
    // The agent's console marker (the shim logs the console at debug): the guest's uptime when
    // the kernel ran /init.
    let guest_init = logged_numbers(&log, "HUSK-AGENT ready", "init_ms=");
    let med = |v: &[f64]| bench::median(v).unwrap_or(f64::NAN);
    eprintln!(
        "husk-bench: husk VM boot, medians of {} from the shim's log: husk-vmm spawned -> agent answers {:.0} ms; \
         husk-vmm setup before the vCPUs run {:.0} ms; guest uptime when the kernel ran /init {:.0} ms, \
         when the agent began serving {:.0} ms, when it answered {:.0} ms",
        boots.len(),
        med(&boots),
        med(&setups),
        med(&guest_init),
        med(&guest_ready),
        med(&guest_uptime),
    );
    // husk-vmm's own account of its setup, phase by phase (its `vCPUs running; setup` line),
    // booting and restoring.
    let phase_medians = |log: &str, names: &[&str]| -> String {
        names
            .iter()
            .map(|phase| {
                let v = logged_numbers(log, "vCPUs running; setup ", &format!("{phase} "));
                format!("{phase} {:.0}", med(&v))
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    eprintln!(
        "husk-bench: husk-vmm setup phases, medians in ms: {}",
        phase_medians(
            &log,
            &[
                "vm",
                "images",
                "devices",
                "boot structures",
                "jail",
                "workers",
                "vcpus"
            ]
        )
    );
    eprintln!(
        "husk-bench: husk-vmm restore phases, medians in ms: {}",
        phase_medians(
            &template_log,
            &["snapshot", "memory", "vm", "devices", "jail", "workers", "vcpus"]
        )
    );
    let t_vm_ready = logged_numbers(&template_log, "the guest agent is ready", " ms=");
    // The shim's account of RunPodSandbox's VM part and of each container's creation in the
    // guest, cold against restored.
    for (side, log) in [("cold", &log), ("restored", &template_log)] {
        let field = |f: &str| med(&logged_numbers(log, "the sandbox VM is ready", f));
        eprintln!(
            "husk-bench: {side} pods, medians in ms: the pod network {:.0}, the VM {:.0}, SetupSandbox {:.0}; a container created in the guest {:.0} \
             (the share's mounts {:.0}, the agent's CreateContainer {:.0}, of which its runner {:.0}); a sandbox container's anchor {:.0}",
            field("network_ms="),
            field("vm_ms="),
            field("setup_ms="),
            med(&logged_numbers(log, "created", " ms=")),
            med(&logged_numbers(log, "created", "mounts_ms=")),
            med(&logged_numbers(log, "created", "guest_ms=")),
            med(&logged_numbers(log, "container created", "runner_ms=")),
            med(&logged_numbers(log, "held by an anchor", "anchor_ms=")),
        );
    }
    let totals = |v: &[Phases]| v.iter().map(Phases::total).collect::<Vec<_>>();
    let mut idle = |handler: &str, guest_mib: u32| loop {
        match idle_pod_kib(&c, &cri, &logs, handler, guest_mib) {
            Ok(kib) => return Ok::<_, anyhow::Error>(kib),
            Err(e) => failures.note(&format!("idle {handler} pod"), &e)?,
        }
    };
    let (husk_host, guest) = idle("husk", settings.memory_mib)?;
    let (runc_host, _) = idle("runc", 0)?;
    eprintln!(
        "husk-bench: idle pod: husk shim + husk-vmm {husk_host} KiB + guest RAM touched {guest} KiB; runc shim + processes {runc_host} KiB"
    );
    let template_kib = loop {
        match template::idle_pss_kib(&c, &cri, &logs, &sides, IDLE_TEMPLATE_PODS) {
            Ok(kib) => break kib,
            Err(e) => failures.note("idle restored pods", &e)?,
        }
    };
    let (returned_pct, [before, peak, after]) = balloon::measure(&c, &cri, &logs)?;
    eprintln!(
        "husk-bench: balloon: husk-vmm RSS {before} KiB, {peak} KiB with {} MiB touched, {after} KiB {:?} after it was freed: {returned_pct:.0}% back",
        balloon::TOUCH_MIB,
        balloon::WITHIN
    );
    eprintln!(
        "husk-bench: {IDLE_TEMPLATE_PODS} idle pods restored from a template: shim + husk-vmm PSS {template_kib:.0} KiB each"
    );
    let mib = |k: u64| k as f64 / 1024.0;
    let mut records = vec![
        record(
            "pod_ready_ms",
            "ms",
            bench::median(&totals(&h)),
            bench::median(&totals(&r)),
            runs,
        ),
        record(
            "pod_host_mib",
            "MiB",
            Some(mib(husk_host + guest)),
            Some(mib(runc_host)),
            1,
        ),
        record(
            "pod_ready_template_ms",
            "ms",
            bench::median(&totals(&t)),
            bench::median(&totals(&r)),
            runs,
        ),
        // Anchored on the cold boots of the same run (not runc: it has no VM).
        Record {
            anchor: "husk cold boot".into(),
            ..record(
                "vm_ready_template_ms",
                "ms",
                bench::median(&t_vm_ready),
                bench::median(&boots),
                t_vm_ready.len(),
            )
        },
        record(
            "pod_host_template_mib",
            "MiB",
            Some(template_kib / 1024.0),
            Some(mib(runc_host)),
            IDLE_TEMPLATE_PODS,
        ),
        // husk alone: a share of what the guest freed, against all of it.
        Record {
            anchor: "all freed".into(),
            ..record(
                "balloon_return_pct",
                "%",
                Some(returned_pct),
                Some(100.0),
                1,
            )
        },
    ];
    if sandbox_api {
        records.push(record(
            "pod_ready_sandbox_api_ms",
            "ms",
            bench::median(&totals(&s)),
            bench::median(&totals(&r)),
            runs,
        ));
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_times_are_read_from_the_shim_log() {
        let log = "x INFO husk_shim::vm: the guest agent is ready pid=7 agent=\"0.1\" ms=1834\n\
                   y INFO other ms=5\n\
                   w INFO husk-vmm: vCPUs running; setup 412 ms (vm 81 ms, images 300 ms, \
                   devices 2 ms, boot structures 8 ms, jail 15 ms, vcpus 6 ms)\n\
                   z INFO husk_shim::vm: the guest agent is ready pid=9 guest_ready_ms=700 ms=1200\n\
                   v DEBUG husk_shim::vm::spawn: guest: HUSK-AGENT ready init_ms=640 ready_ms=700\n";
        let ready = logged_numbers(log, "the guest agent is ready", " ms=");
        assert_eq!(ready, vec![1834.0, 1200.0]);
        let setup = logged_numbers(log, "vCPUs running; setup ", "setup ");
        assert_eq!(setup, vec![412.0]);
        let vm = logged_numbers(log, "vCPUs running; setup ", "vm ");
        let structures = logged_numbers(log, "vCPUs running; setup ", "boot structures ");
        let vcpus = logged_numbers(log, "vCPUs running; setup ", "vcpus ");
        assert_eq!((vm, structures, vcpus), (vec![81.0], vec![8.0], vec![6.0]));
        let guest = logged_numbers(log, "the guest agent is ready", "guest_ready_ms=");
        assert_eq!(guest, vec![700.0]);
        let init = logged_numbers(log, "HUSK-AGENT ready", "init_ms=");
        assert_eq!(init, vec![640.0]);
    }
}

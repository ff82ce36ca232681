//! The `agent` benchmark (`make bench BENCH=agent`):
//! - `agent_ready_ms`: in the guest, from the kernel handing over to `/init` until husk-agent
//!   serves (both read from CLOCK_BOOTTIME, the clock of /proc/uptime, and printed by the agent
//!   on its ready line). No anchor.
//! - `run_true_ms`: host mode, create + start + wait + remove of `/bin/true` in the busybox
//!   rootfs, against `runc run` of the same bundle; interleaved runs, medians, ratio.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::agent::{self, HostAgent};
use crate::bench::{self, Record};
use crate::microvm::RunningVm;
use crate::rootfs::{busybox_rootfs, spec, write_bundle};

/// The agent's ready line on the console.
pub const READY: &str = "HUSK-AGENT ready";

/// `init_ms` and `ready_ms` from the agent's ready line.
pub fn parse_ready(line: &str) -> Option<(u64, u64)> {
    let field = |name: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(name))
            .and_then(|v| v.parse::<u64>().ok())
    };
    Some((field("init_ms=")?, field("ready_ms=")?))
}

fn record(
    metric: &str,
    husk: Option<f64>,
    anchor: &str,
    anchor_value: Option<f64>,
    runs: usize,
) -> Record {
    Record {
        bench: "agent".into(),
        metric: metric.into(),
        unit: "ms".into(),
        husk,
        anchor: anchor.into(),
        anchor_value,
        ratio: None,
        runs,
        host: bench::host_label().into(),
    }
    .with_ratio()
}

/// Boots husk-vmm with the agent image `runs` times; the agent's own ready time in the guest.
pub fn ready_ms(vmm: &Path, kernel: &Path, image: &Path, runs: usize) -> anyhow::Result<Record> {
    let dir = tempfile::tempdir()?;
    let mut samples = Vec::new();
    for i in 0..runs + 1 {
        let config = serde_json::json!({
            "kernel": kernel, "initramfs": image, "extra_cmdline": "quiet",
            "vcpus": 1, "memory_mib": 256, "serial_log": "/proc/self/fd/1",
            "vcpu_affinity": crate::e2e::vcpu_affinity(1),
        });
        let path = dir.path().join("vm.json");
        std::fs::write(&path, serde_json::to_vec(&config)?)?;
        let mut cmd = Command::new(vmm);
        cmd.arg("--config").arg(&path);
        let mut vm = RunningVm::spawn(cmd)?;
        let line = vm.wait_for(READY, Duration::from_secs(180));
        vm.signal(libc::SIGTERM);
        vm.wait(Duration::from_secs(30));
        let Some((init, ready)) = line.as_deref().and_then(parse_ready) else {
            bail!("no agent ready line; console:\n{}", vm.console);
        };
        if i > 0 {
            let ms = ready.saturating_sub(init) as f64;
            eprintln!("husk-bench: agent ready run {i}: {ms:.0} ms (init at {init} ms)");
            samples.push(ms);
        }
    }
    Ok(record(
        "agent_ready_ms",
        bench::median(&samples),
        "-",
        None,
        runs,
    ))
}

async fn husk_true(
    socket: &Path,
    c: &husk_protocol::agent::service::AgentClient,
    spec: &serde_json::Value,
    i: usize,
) -> anyhow::Result<f64> {
    let started = Instant::now();
    let (status, _, _) = agent::run(
        socket,
        c,
        &format!("b{i}"),
        spec,
        agent::stdio(false, false, false, false),
    )
    .await
    .map_err(|e| anyhow::anyhow!("husk run: {e:?}"))?;
    if status != 0 {
        bail!("/bin/true exited {status} under husk-agent");
    }
    Ok(started.elapsed().as_secs_f64() * 1000.0)
}

fn runc_true(root: &Path, bundle: &Path, i: usize) -> anyhow::Result<f64> {
    let started = Instant::now();
    let status = Command::new("runc")
        .arg("--root")
        .arg(root)
        .args(["run", "--bundle"])
        .arg(bundle)
        .arg(format!("r{i}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .context("running runc (install runc)")?;
    if !status.success() {
        bail!("runc run exited {status}");
    }
    Ok(started.elapsed().as_secs_f64() * 1000.0)
}

/// `run_true_ms`: husk-agent (host mode) against runc, interleaved.
pub fn run_true(runs: usize) -> anyhow::Result<Record> {
    let dir = tempfile::Builder::new().prefix("hb").tempdir_in("/tmp")?;
    let rootfs = busybox_rootfs(dir.path())?;
    let spec = spec(&rootfs, &["/bin/true"], false);
    let bundle = dir.path().join("bundle");
    write_bundle(&bundle, &spec)?;
    let runc_root = dir.path().join("runc");
    let rt = tokio::runtime::Runtime::new()?;
    let host = HostAgent::start();
    let c = rt.block_on(agent::client(&host.socket))?;
    // Warm-up, then interleaved measured runs.
    rt.block_on(husk_true(&host.socket, &c, &spec, 0))?;
    runc_true(&runc_root, &bundle, 0)?;
    let (mut h, mut r) = (Vec::new(), Vec::new());
    for i in 1..=runs {
        h.push(rt.block_on(husk_true(&host.socket, &c, &spec, i))?);
        r.push(runc_true(&runc_root, &bundle, i)?);
        eprintln!(
            "husk-bench: agent run {i}: husk {:.1} ms, runc {:.1} ms",
            h[i - 1],
            r[i - 1]
        );
    }
    drop(c);
    host.stop();
    Ok(record(
        "run_true_ms",
        bench::median(&h),
        "runc",
        bench::median(&r),
        runs,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_line_is_parsed() {
        let l = "HUSK-AGENT ready init_ms=812 ready_ms=845 pivot_root=true";
        assert_eq!(parse_ready(l), Some((812, 845)));
        assert_eq!(parse_ready("HUSK-AGENT ready"), None);
    }
}

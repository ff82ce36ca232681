//! `husk-bench`: husk's benchmarks. Runs where hardware KVM exists (natively, or inside the test
//! host via `make bench`), prints a table and appends records to the results file.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, ValueEnum};
use husk_tests::bench::{self, Record};
use husk_tests::microvm::{
    husk_vmm, qemu_microvm, watch_boot, GuestSpec, RunningVm, TEST_INIT_MARKER,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Bench {
    /// QEMU microvm booting the husk kernel to the test init's marker.
    BootQemu,
    /// husk-vmm against QEMU microvm: boot time and VMM memory overhead.
    Vmm,
}

/// Run husk's benchmarks and record the results.
#[derive(Debug, Parser)]
#[command(name = "husk-bench", version)]
struct Args {
    /// Which benchmarks (all when none is named).
    benches: Vec<Bench>,
    /// Measured runs per side (after one warm-up run).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Results file (JSON lines, appended).
    #[arg(long, default_value = "target/bench/results.jsonl")]
    out: PathBuf,
    /// Guest kernel (defaults to $HUSK_KERNEL).
    #[arg(long, env = "HUSK_KERNEL")]
    kernel: PathBuf,
    /// Test-init initramfs (defaults to $HUSK_TEST_IMAGE).
    #[arg(long, env = "HUSK_TEST_IMAGE")]
    test_image: PathBuf,
    /// husk-vmm (defaults to $HUSK_VMM).
    #[arg(long, env = "HUSK_VMM")]
    vmm: PathBuf,
}

const GUEST_MIB: u32 = 256;

fn guest(args: &Args, cmdline: &str) -> GuestSpec {
    GuestSpec {
        kernel: args.kernel.clone(),
        initramfs: args.test_image.clone(),
        cmdline: cmdline.into(),
        vcpus: 1,
        memory_mib: GUEST_MIB,
    }
}

fn record(
    bench: &str,
    metric: &str,
    unit: &str,
    husk: Option<f64>,
    anchor: Option<f64>,
    runs: usize,
) -> Record {
    Record {
        bench: bench.into(),
        metric: metric.into(),
        unit: unit.into(),
        husk,
        anchor: "qemu-microvm".into(),
        anchor_value: anchor,
        ratio: None,
        runs,
        host: bench::host_label().into(),
    }
    .with_ratio()
}

/// Memory of a VMM holding an idle guest: (PSS outside guest RAM, guest RAM touched), MiB.
fn idle_memory(cmd: std::process::Command) -> anyhow::Result<(f64, f64)> {
    let mut vm = RunningVm::spawn(cmd)?;
    if vm
        .wait_for(TEST_INIT_MARKER, Duration::from_secs(180))
        .is_none()
    {
        bail!(
            "the guest did not reach its marker; console:\n{}",
            vm.console
        );
    }
    std::thread::sleep(Duration::from_secs(2));
    let (overhead, guest) = bench::vmm_memory_kib(vm.pid(), u64::from(GUEST_MIB) * 1024)?;
    vm.signal(libc::SIGTERM);
    vm.wait(Duration::from_secs(30));
    Ok((overhead as f64 / 1024.0, guest as f64 / 1024.0))
}

fn vmm(args: &Args) -> anyhow::Result<Vec<Record>> {
    let dir = tempfile::tempdir()?;
    let husk = |cmdline: &str| husk_vmm(&args.vmm, &guest(args, cmdline), dir.path(), None);
    boot_ms(husk("quiet")?).context("husk-vmm warm-up boot")?;
    boot_ms(qemu_microvm(&guest(args, "quiet"))).context("QEMU warm-up boot")?;
    let (mut h, mut q) = (Vec::new(), Vec::new());
    // Interleaved, so drift in the machine's load hits both alike.
    for i in 0..args.runs {
        h.push(boot_ms(husk("quiet")?).with_context(|| format!("husk-vmm boot {}", i + 1))?);
        q.push(
            boot_ms(qemu_microvm(&guest(args, "quiet")))
                .with_context(|| format!("QEMU boot {}", i + 1))?,
        );
        eprintln!(
            "husk-bench: vmm run {}: husk {:.0} ms, qemu {:.0} ms",
            i + 1,
            h[i],
            q[i]
        );
    }
    let (h_pss, h_guest) = idle_memory(husk("quiet husk.test=hold")?)?;
    let (q_pss, q_guest) = idle_memory(qemu_microvm(&guest(args, "quiet husk.test=hold")))?;
    Ok(vec![
        record(
            "vmm",
            "boot_ms",
            "ms",
            bench::median(&h),
            bench::median(&q),
            args.runs,
        ),
        record(
            "vmm",
            "overhead_pss_mib",
            "MiB",
            Some(h_pss),
            Some(q_pss),
            1,
        ),
        record(
            "vmm",
            "guest_touched_mib",
            "MiB",
            Some(h_guest),
            Some(q_guest),
            1,
        ),
    ])
}

fn boot_ms(cmd: std::process::Command) -> anyhow::Result<f64> {
    let r = watch_boot(cmd, TEST_INIT_MARKER, Duration::from_secs(180))?;
    match (r.to_marker, r.exit_code) {
        (Some(t), Some(0)) => Ok(t.as_secs_f64() * 1000.0),
        _ => bail!(
            "the boot did not reach the marker and exit cleanly (exit {:?}); console:\n{}",
            r.exit_code,
            r.console
        ),
    }
}

fn boot_qemu(args: &Args) -> anyhow::Result<Vec<Record>> {
    let spec = guest(args, "quiet");
    boot_ms(qemu_microvm(&spec)).context("warm-up boot")?;
    let mut samples = Vec::new();
    for i in 0..args.runs {
        let ms = boot_ms(qemu_microvm(&spec)).with_context(|| format!("boot {}", i + 1))?;
        eprintln!("husk-bench: boot-qemu run {}: {ms:.0} ms", i + 1);
        samples.push(ms);
    }
    Ok(vec![record(
        "boot-qemu",
        "boot_ms",
        "ms",
        None,
        bench::median(&samples),
        samples.len(),
    )])
}

fn run(args: Args) -> anyhow::Result<()> {
    if args.runs == 0 {
        bail!("--runs must be at least 1");
    }
    let benches = if args.benches.is_empty() {
        vec![Bench::BootQemu, Bench::Vmm]
    } else {
        args.benches.clone()
    };
    let mut records = Vec::new();
    for b in benches {
        records.extend(match b {
            Bench::BootQemu => boot_qemu(&args)?,
            Bench::Vmm => vmm(&args)?,
        });
    }
    print!("{}", bench::table(&records));
    bench::append(&args.out, &records)
        .with_context(|| format!("writing {}", args.out.display()))?;
    println!("results appended to {}", args.out.display());
    Ok(())
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("husk-bench: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

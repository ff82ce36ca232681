//! `husk-bench`: husk's benchmarks. Runs where hardware KVM exists (natively, or inside the test
//! host via `make bench`), prints a table and appends records to the results file.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, ValueEnum};
use husk_tests::bench::{self, Record};
use husk_tests::microvm::{qemu_microvm, watch_boot, GuestSpec, TEST_INIT_MARKER};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Bench {
    /// QEMU microvm booting the husk kernel to the test init's marker.
    BootQemu,
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
}

fn boot_ms(spec: &GuestSpec) -> anyhow::Result<f64> {
    let r = watch_boot(
        qemu_microvm(spec),
        TEST_INIT_MARKER,
        Duration::from_secs(180),
    )?;
    match (r.to_marker, r.exit_code) {
        (Some(t), Some(0)) => Ok(t.as_secs_f64() * 1000.0),
        _ => bail!(
            "QEMU boot did not reach the marker and exit cleanly (exit {:?}); console:\n{}",
            r.exit_code,
            r.console
        ),
    }
}

fn boot_qemu(args: &Args) -> anyhow::Result<Vec<Record>> {
    let spec = GuestSpec {
        kernel: args.kernel.clone(),
        initramfs: args.test_image.clone(),
        cmdline: "quiet".into(),
        vcpus: 1,
        memory_mib: 256,
    };
    boot_ms(&spec).context("warm-up boot")?;
    let mut samples = Vec::new();
    for i in 0..args.runs {
        let ms = boot_ms(&spec).with_context(|| format!("boot {}", i + 1))?;
        eprintln!("husk-bench: boot-qemu run {}: {ms:.0} ms", i + 1);
        samples.push(ms);
    }
    Ok(vec![Record {
        bench: "boot-qemu".into(),
        metric: "boot_ms".into(),
        unit: "ms".into(),
        husk: None,
        anchor: "qemu-microvm".into(),
        anchor_value: bench::median(&samples),
        ratio: None,
        runs: samples.len(),
        host: bench::host_label().into(),
    }])
}

fn run(args: Args) -> anyhow::Result<()> {
    if args.runs == 0 {
        bail!("--runs must be at least 1");
    }
    let benches = if args.benches.is_empty() {
        vec![Bench::BootQemu]
    } else {
        args.benches.clone()
    };
    let mut records = Vec::new();
    for b in benches {
        records.extend(match b {
            Bench::BootQemu => boot_qemu(&args)?,
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

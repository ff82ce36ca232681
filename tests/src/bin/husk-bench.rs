//! `husk-bench`: husk's benchmarks. Runs where hardware KVM exists (natively, or inside the test
//! host via `make bench`), prints a table and appends records to the results file.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Parser, ValueEnum};
use husk_tests::bench::{self, Record};
use husk_tests::microvm::{
    husk_vmm, husk_vmm_with, hybrid_connect, qemu_microvm, qemu_microvm_vsock, vsock_connect,
    watch_boot, GuestSpec, RunningVm, VmmOptions, VsockOptions, TEST_INIT_MARKER,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Bench {
    /// QEMU microvm booting the husk kernel to the test init's marker.
    BootQemu,
    /// husk-vmm against QEMU microvm: boot time, VMM memory overhead, vsock throughput and
    /// latency (hybrid vsock against vhost-vsock).
    Vmm,
    /// husk-agent: in-guest ready time; host-mode run of /bin/true against runc.
    Agent,
    /// containerd: `ctr run --rm /bin/true` and shim + VMM memory, husk against runc.
    Ctr,
    /// Kubernetes CRI: RunPodSandbox to a running container, and host memory per idle pod,
    /// husk against runc.
    Cri,
    /// virtio-net: TCP throughput host↔guest through a tap, against QEMU's userspace
    /// virtio-net (`vhost=off`).
    Net,
    /// husk-vmm's jail: interleaved boots against `--baseline-vmm` (an earlier build).
    Jail,
    /// Pods created, exec'd into and removed in parallel, cycle after cycle (tests/src/churn.rs),
    /// under runc and under husk: each cycle's time, and what grew (host memory, containerd's
    /// descriptors; the target is nothing).
    Churn,
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
    /// The husk-vmm the `jail` bench compares against (built from an earlier commit).
    #[arg(long)]
    baseline_vmm: Option<PathBuf>,
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

/// The guest's vsock server port (`husk.vsock.serve=`) and the CID both VMMs give it.
const VSOCK_PORT: u32 = 1024;
const GUEST_CID: u32 = 3;
/// Bytes per throughput run, and 64-byte round trips per latency run.
const VSOCK_BYTES: usize = 32 << 20;
const RTT_ROUNDS: usize = 200;

/// What one VMM measured with an idle (then busy) guest.
#[derive(Debug, Default)]
struct Held {
    pss_mib: f64,
    guest_mib: f64,
    vsock: Option<VsockNumbers>,
}

#[derive(Debug, Clone, Copy)]
struct VsockNumbers {
    h2g_mib_s: f64,
    g2h_mib_s: f64,
    rtt_us: f64,
}

/// Boots `cmd` (a guest with `husk.test=hold` and the vsock server), samples memory once the
/// guest is idle, then runs the vsock benchmark through `connect` if given.
fn held_guest(
    cmd: std::process::Command,
    connect: Option<&dyn Fn() -> std::io::Result<UnixStream>>,
) -> anyhow::Result<Held> {
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
    let vsock = match connect {
        Some(connect) => Some(vsock_numbers(connect).with_context(|| vm.console.clone())?),
        None => None,
    };
    vm.signal(libc::SIGTERM);
    vm.wait(Duration::from_secs(30));
    Ok(Held {
        pss_mib: overhead as f64 / 1024.0,
        guest_mib: guest as f64 / 1024.0,
        vsock,
    })
}

fn mib_s(bytes: usize, t: Duration) -> f64 {
    bytes as f64 / (1 << 20) as f64 / t.as_secs_f64()
}

/// Host→guest (`sink`), guest→host (`source`) throughput and 64-byte echo round trips.
fn vsock_numbers(
    connect: &dyn Fn() -> std::io::Result<UnixStream>,
) -> anyhow::Result<VsockNumbers> {
    let (mut h2g, mut g2h) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        let mut s = connect().context("connecting for sink")?;
        s.set_read_timeout(Some(Duration::from_secs(300)))?;
        let chunk: Vec<u8> = (0..64 * 1024u64).map(|i| (i * 7) as u8).collect();
        let started = Instant::now();
        s.write_all(format!("sink {VSOCK_BYTES}\n").as_bytes())?;
        let mut sent = 0;
        while sent < VSOCK_BYTES {
            let n = chunk.len().min(VSOCK_BYTES - sent);
            s.write_all(&chunk[..n])?;
            sent += n;
        }
        let mut line = String::new();
        BufReader::new(&s).read_line(&mut line)?;
        let t = started.elapsed();
        if !line.starts_with(&format!("ok {VSOCK_BYTES} ")) {
            bail!("sink answered {line:?}");
        }
        h2g.push(mib_s(VSOCK_BYTES, t));

        let mut s = connect().context("connecting for source")?;
        s.set_read_timeout(Some(Duration::from_secs(300)))?;
        let started = Instant::now();
        s.write_all(format!("source {VSOCK_BYTES}\n").as_bytes())?;
        let mut got = 0u64;
        let mut buf = vec![0u8; 64 * 1024];
        while got < VSOCK_BYTES as u64 {
            let n = s.read(&mut buf)?;
            if n == 0 {
                bail!("source ended after {got} bytes");
            }
            for (i, b) in buf[..n].iter().enumerate() {
                let at = got + i as u64;
                if *b != ((at.wrapping_mul(31) ^ (at >> 8)) as u8) {
                    bail!("source byte {at} is wrong");
                }
            }
            got += n as u64;
        }
        g2h.push(mib_s(VSOCK_BYTES, started.elapsed()));
    }
    let mut s = connect().context("connecting for echo")?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    s.write_all(b"echo\n")?;
    let msg = [0x5au8; 64];
    let mut back = [0u8; 64];
    let mut rtts = Vec::new();
    for i in 0..RTT_ROUNDS + 20 {
        let started = Instant::now();
        s.write_all(&msg)?;
        s.read_exact(&mut back)?;
        if i >= 20 {
            rtts.push(started.elapsed().as_secs_f64() * 1e6);
        }
    }
    let numbers = VsockNumbers {
        h2g_mib_s: bench::median(&h2g).unwrap_or(0.0),
        g2h_mib_s: bench::median(&g2h).unwrap_or(0.0),
        rtt_us: bench::median(&rtts).unwrap_or(0.0),
    };
    eprintln!("husk-bench: vsock {numbers:?} (h2g runs {h2g:.1?}, g2h runs {g2h:.1?})");
    Ok(numbers)
}

fn vmm(args: &Args) -> anyhow::Result<Vec<Record>> {
    let dir = tempfile::tempdir()?;
    let husk = |cmdline: &str| husk_vmm(&args.vmm, &guest(args, cmdline), dir.path(), None);
    boot_ms(husk("quiet")?).context("husk-vmm warm-up boot")?;
    boot_ms(qemu_microvm(&guest(args, "quiet"))).context("QEMU warm-up boot")?;
    let (mut h, mut q, mut h_up, mut q_up) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    // Interleaved, so drift in the machine's load hits both alike.
    for i in 0..args.runs {
        let (ms, up) =
            boot_ms(husk("quiet")?).with_context(|| format!("husk-vmm boot {}", i + 1))?;
        h.push(ms);
        h_up.push(up);
        let (ms, up) = boot_ms(qemu_microvm(&guest(args, "quiet")))
            .with_context(|| format!("QEMU boot {}", i + 1))?;
        q.push(ms);
        q_up.push(up);
        eprintln!(
            "husk-bench: vmm run {}: husk {:.0} ms (guest uptime at marker {:.0} ms), qemu {:.0} ms (uptime {:.0} ms)",
            i + 1,
            h[i],
            h_up[i],
            q[i],
            q_up[i]
        );
    }

    // Memory with an idle guest, then vsock through each VMM's device: husk's hybrid vsock
    // (Unix socket + CONNECT) against QEMU's vhost-vsock (AF_VSOCK from this host).
    let socket = dir.path().join("v.sock");
    let serve = format!("quiet husk.test=hold husk.vsock.serve={VSOCK_PORT}");
    let opts = VmmOptions {
        control_socket: None,
        vsock: Some(VsockOptions {
            guest_cid: GUEST_CID,
            socket: &socket,
            allowed_guest_ports: &[],
        }),
        balloon: false,
        ..Default::default()
    };
    let husk_cmd = husk_vmm_with(&args.vmm, &guest(args, &serve), dir.path(), &opts)?;
    let hybrid = || hybrid_connect(&socket, VSOCK_PORT, Duration::from_secs(60));
    let husk_held = held_guest(husk_cmd, Some(&hybrid))?;
    let vhost = Path::new("/dev/vhost-vsock").exists();
    let qemu_cmd = if vhost {
        qemu_microvm_vsock(&guest(args, &serve), GUEST_CID)
    } else {
        eprintln!(
            "husk-bench: /dev/vhost-vsock is missing (vhost_vsock not loaded): no QEMU vsock anchor"
        );
        qemu_microvm(&guest(args, &serve))
    };
    let af_vsock = || vsock_connect(GUEST_CID, VSOCK_PORT);
    let qemu_held = held_guest(qemu_cmd, vhost.then_some(&af_vsock as &dyn Fn() -> _))?;
    let (hv, qv) = (husk_held.vsock, qemu_held.vsock);
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
            "boot_uptime_ms",
            "ms",
            bench::median(&h_up),
            bench::median(&q_up),
            args.runs,
        ),
        record(
            "vmm",
            "overhead_pss_mib",
            "MiB",
            Some(husk_held.pss_mib),
            Some(qemu_held.pss_mib),
            1,
        ),
        record(
            "vmm",
            "guest_touched_mib",
            "MiB",
            Some(husk_held.guest_mib),
            Some(qemu_held.guest_mib),
            1,
        ),
        record(
            "vmm",
            "vsock_mib_s",
            "MiB/s",
            hv.map(|v| v.h2g_mib_s),
            qv.map(|v| v.h2g_mib_s),
            3,
        ),
        record(
            "vmm",
            "vsock_g2h_mib_s",
            "MiB/s",
            hv.map(|v| v.g2h_mib_s),
            qv.map(|v| v.g2h_mib_s),
            3,
        ),
        record(
            "vmm",
            "vsock_rtt_us",
            "us",
            hv.map(|v| v.rtt_us),
            qv.map(|v| v.rtt_us),
            RTT_ROUNDS,
        ),
    ])
}

/// Boots to the marker and a clean exit, on fresh pages ([`bench::recycle_freed_pages`]): (ms from spawn to the marker, the guest's uptime in ms
/// at the marker, which is the part spent after the guest kernel's clock started).
fn boot_ms(cmd: std::process::Command) -> anyhow::Result<(f64, f64)> {
    bench::recycle_freed_pages().context("recycling freed pages before a boot")?;
    let r = watch_boot(cmd, TEST_INIT_MARKER, Duration::from_secs(180))?;
    let uptime = r
        .marker_line
        .as_deref()
        .and_then(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix("uptime_ms="))
        })
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(f64::NAN);
    match (r.to_marker, r.exit_code) {
        (Some(t), Some(0)) => Ok((t.as_secs_f64() * 1000.0, uptime)),
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
        let (ms, _) = boot_ms(qemu_microvm(&spec)).with_context(|| format!("boot {}", i + 1))?;
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

fn agent_bench(args: &Args) -> anyhow::Result<Vec<Record>> {
    let image =
        std::env::var_os("HUSK_AGENT_TEST_IMAGE").context("HUSK_AGENT_TEST_IMAGE is not set")?;
    let ready =
        husk_tests::bench_agent::ready_ms(&args.vmm, &args.kernel, image.as_ref(), args.runs)?;
    Ok(vec![ready, husk_tests::bench_agent::run_true(args.runs)?])
}

fn run(args: Args) -> anyhow::Result<()> {
    if args.runs == 0 {
        bail!("--runs must be at least 1");
    }
    let benches = if args.benches.is_empty() {
        vec![Bench::BootQemu, Bench::Vmm, Bench::Agent]
    } else {
        args.benches.clone()
    };
    let mut records = Vec::new();
    for b in benches {
        records.extend(match b {
            Bench::BootQemu => boot_qemu(&args)?,
            Bench::Vmm => vmm(&args)?,
            Bench::Agent => agent_bench(&args)?,
            Bench::Ctr => husk_tests::bench_ctr::run(args.runs)?,
            Bench::Cri => husk_tests::bench_cri::run(args.runs)?,
            Bench::Jail => {
                let baseline = args
                    .baseline_vmm
                    .as_deref()
                    .context("the jail bench needs --baseline-vmm (a husk-vmm from before)")?;
                husk_tests::bench_jail::run(&args.vmm, baseline, &guest(&args, "quiet"), args.runs)?
            }
            Bench::Churn => husk_tests::bench_churn::run()?,
            Bench::Net => husk_tests::bench_net::run(&husk_tests::bench_net::NetBenchArgs {
                vmm: args.vmm.clone(),
                kernel: args.kernel.clone(),
                test_image: args.test_image.clone(),
            })?,
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

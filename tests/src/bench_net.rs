//! `make bench BENCH=net`: TCP throughput between the host and a guest through a tap, husk-vmm's
//! virtio-net against QEMU's userspace virtio-net (`-M microvm`, `-netdev tap,vhost=off
//! -device virtio-net-device`), on one identical setup in the same run.
//!
//! Setup: a network namespace with a persistent tap (host side 10.0.2.2/24, MTU 1500); each
//! VMM in turn boots the test init with `husk.test=net:10.0.2.15/24` and its TCP server, and a
//! client in the namespace streams `sink N` (host → guest, the guest checksums) and `source N`
//! (guest → host, checked byte for byte) three times each. Both VMMs get the same tap, kernel,
//! image, vCPU and memory; each VMM offers its guest the checksum and TSO offloads (QEMU's
//! defaults with a vnet-header tap; husk-vmm's own), so the guest sends and receives 64 KiB
//! segments through both.
//!
//! - `net_mib_s`: host → guest, median MiB/s.
//! - `net_g2h_mib_s`: guest → host, median MiB/s.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::bench::{self, Record};
use crate::microvm::{
    husk_vmm_with_net, in_netns, qemu_microvm_net, GuestSpec, NetOptions, NetnsTap, RunningVm,
    VmmOptions, TEST_INIT_MARKER,
};

const GUEST_IP: &str = "10.0.2.15";
const HOST_CIDR: &str = "10.0.2.2/24";
const MAC: &str = "02:00:00:00:00:2b";
const PORT: u16 = 5201;
/// Bytes per run and runs per direction.
const BYTES: usize = 32 << 20;
const RUNS: usize = 3;
const GUEST_MIB: u32 = 256;

/// What to boot.
#[derive(Debug, Clone)]
pub struct NetBenchArgs {
    /// husk-vmm.
    pub vmm: PathBuf,
    /// The guest kernel.
    pub kernel: PathBuf,
    /// The test-init initramfs.
    pub test_image: PathBuf,
}

#[derive(Debug, Clone, Copy)]
struct Numbers {
    h2g: f64,
    g2h: f64,
}

fn mib_s(bytes: usize, t: Duration) -> f64 {
    bytes as f64 / f64::from(1 << 20) / t.as_secs_f64()
}

fn pattern_byte(i: u64) -> u8 {
    (i.wrapping_mul(31) ^ (i >> 8)) as u8
}

fn connect(netns: &Path) -> anyhow::Result<TcpStream> {
    let addr: SocketAddr = format!("{GUEST_IP}:{PORT}").parse()?;
    let s = in_netns(netns, move || {
        TcpStream::connect_timeout(&addr, Duration::from_secs(60))
    })??;
    s.set_read_timeout(Some(Duration::from_secs(300)))?;
    s.set_write_timeout(Some(Duration::from_secs(300)))?;
    Ok(s)
}

/// Streams both ways through the guest's server.
fn measure(netns: &Path) -> anyhow::Result<Numbers> {
    let chunk: Vec<u8> = (0..64 * 1024u64).map(|i| (i * 13) as u8).collect();
    let (mut h2g, mut g2h) = (Vec::new(), Vec::new());
    for _ in 0..RUNS {
        let mut s = connect(netns).context("connecting for sink")?;
        let started = Instant::now();
        s.write_all(format!("sink {BYTES}\n").as_bytes())?;
        let mut sent = 0;
        while sent < BYTES {
            let n = chunk.len().min(BYTES - sent);
            s.write_all(&chunk[..n])?;
            sent += n;
        }
        let mut line = String::new();
        BufReader::new(&s).read_line(&mut line)?;
        if !line.starts_with(&format!("ok {BYTES} ")) {
            bail!("sink answered {line:?}");
        }
        h2g.push(mib_s(BYTES, started.elapsed()));

        let mut s = connect(netns).context("connecting for source")?;
        let started = Instant::now();
        s.write_all(format!("source {BYTES}\n").as_bytes())?;
        let mut got = 0u64;
        let mut buf = vec![0u8; 256 * 1024];
        while got < BYTES as u64 {
            let n = s.read(&mut buf)?;
            if n == 0 {
                bail!("source ended after {got} bytes");
            }
            if let Some(i) = (0..n).find(|&i| buf[i] != pattern_byte(got + i as u64)) {
                bail!("source byte {} is wrong", got + i as u64);
            }
            got += n as u64;
        }
        g2h.push(mib_s(BYTES, started.elapsed()));
    }
    eprintln!("husk-bench: net runs: host→guest {h2g:.1?} MiB/s, guest→host {g2h:.1?} MiB/s");
    Ok(Numbers {
        h2g: bench::median(&h2g).unwrap_or(0.0),
        g2h: bench::median(&g2h).unwrap_or(0.0),
    })
}

/// Boots `cmd`, waits for the guest's network and marker, measures, stops the VM.
fn with_guest(cmd: Command, netns: &Path, who: &str) -> anyhow::Result<Numbers> {
    let mut vm = RunningVm::spawn(cmd)?;
    if vm
        .wait_for(TEST_INIT_MARKER, Duration::from_secs(180))
        .is_none()
    {
        bail!("{who}: the guest did not reach its marker:\n{}", vm.console);
    }
    if !vm.console.contains("HUSK-TEST-INIT net up") {
        bail!("{who}: the guest's network is not up:\n{}", vm.console);
    }
    let numbers = measure(netns).with_context(|| format!("{who}:\n{}", vm.console));
    vm.signal(libc::SIGTERM);
    vm.wait(Duration::from_secs(30));
    let numbers = numbers?;
    eprintln!("husk-bench: net {who}: {numbers:?}");
    Ok(numbers)
}

fn record(metric: &str, husk: f64, qemu: f64) -> Record {
    Record {
        bench: "net".into(),
        metric: metric.into(),
        unit: "MiB/s".into(),
        husk: Some(husk),
        anchor: "qemu-microvm".into(),
        anchor_value: Some(qemu),
        ratio: None,
        runs: RUNS,
        host: bench::host_label().into(),
    }
    .with_ratio()
}

/// Runs the benchmark.
pub fn run(args: &NetBenchArgs) -> anyhow::Result<Vec<Record>> {
    let net = NetnsTap::create(
        &format!("husk-bench-{}", std::process::id()),
        "husk-btap0",
        HOST_CIDR,
        1500,
    )
    .context("creating the network namespace and tap (needs root and iproute2)")?;
    let netns = net.path();
    let dir = tempfile::tempdir()?;
    let spec = GuestSpec {
        kernel: args.kernel.clone(),
        initramfs: args.test_image.clone(),
        cmdline: format!("quiet husk.test=hold husk.test=net:{GUEST_IP}/24 husk.net.serve={PORT}"),
        vcpus: 1,
        memory_mib: GUEST_MIB,
    };
    let nic = NetOptions {
        tap: &net.tap,
        mac: MAC,
        mtu: None,
        netns: Some(&netns),
    };
    let husk = husk_vmm_with_net(&args.vmm, &spec, dir.path(), &VmmOptions::default(), &[nic])?;
    let husk = with_guest(husk, &netns, "husk-vmm")?;
    let qemu = net.exec(&qemu_microvm_net(&spec, &net.tap, MAC));
    let qemu = with_guest(qemu, &netns, "qemu")?;
    Ok(vec![
        record("net_mib_s", husk.h2g, qemu.h2g),
        record("net_g2h_mib_s", husk.g2h, qemu.g2h),
    ])
}

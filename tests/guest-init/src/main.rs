//! `husk-test-init`: the init of husk's boot tests and benchmarks.
//!
//! Runs as PID 1 in a guest. It mounts /proc, /sys and /dev, prints one marker line that the host
//! side waits for, and reboots (the guest runs with `reboot=k`, so the VMM sees the reset and
//! exits). Built statically (`+crt-static`): the guest has no libc.
//!
//! Marker: `HUSK-TEST-INIT ready kernel=<release> cpus=<online> uptime_ms=<ms>`.
//!
//! `husk.test=hold` on the kernel command line keeps the guest running after the marker (for
//! tests that stop the VM from outside) instead of rebooting. `husk.vsock.serve=` and
//! `husk.vsock.connect=` add the vsock modes of [`vsock`].
//! `husk.test.tick=<secs>` logs a line to the kernel log every `secs` seconds with the
//! interrupt counts of the virtio devices and the local timer (so a stalled test tells a guest
//! that still runs, with a device line that went quiet, from a guest that stopped).
//! `husk.test=fs:<tag>` runs the virtio-fs mode of [`fs`].
//! `husk.test=net:<addr>/<prefix>[,gw=<gw>]` (with `husk.net.serve=` and `husk.net.connect=`)
//! runs the network mode of [`net`].
//! `husk.test=balloon:<MiB>` touches that much memory after the marker, says
//! `HUSK-TEST-INIT balloon touched mib=<MiB>`, holds it 3 s, frees it and says
//! `HUSK-TEST-INIT balloon freed` (for the free page reporting test).
//! `husk.test=dmesg` prints the kernel log after the marker (`kmsg <µs> <text>` lines): with
//! `quiet initcall_debug`, where a boot's time went without the console's cost in it.
//!
//! Run as `husk-test-init hostile ...` (not as PID 1) it is the hostile-guest suite's tool
//! ([`hostile`]).

mod fs;
mod hostile;
mod net;
mod vsock;

use std::ffi::CString;
use std::io::Write;

fn mount(source: &str, target: &str, fstype: &str) {
    let _ = std::fs::create_dir_all(target);
    let (Ok(s), Ok(t), Ok(f)) = (
        CString::new(source),
        CString::new(target),
        CString::new(fstype),
    ) else {
        return;
    };
    // SAFETY: all three pointers are valid NUL-terminated strings that outlive the call; a null
    // data pointer is allowed for these filesystems.
    let rc = unsafe { libc::mount(s.as_ptr(), t.as_ptr(), f.as_ptr(), 0, std::ptr::null()) };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EBUSY) {
            eprintln!("husk-test-init: mount {fstype} on {target}: {err}");
        }
    }
}

fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "?".into())
}

fn uptime_ms() -> u64 {
    let text = read_trimmed("/proc/uptime");
    let secs: f64 = text
        .split_whitespace()
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0.0);
    (secs * 1000.0) as u64
}

/// Number of online CPUs from /sys/devices/system/cpu/online (e.g. "0-1" → 2).
fn online_cpus() -> usize {
    let text = read_trimmed("/sys/devices/system/cpu/online");
    text.split(',')
        .map(|range| match range.split_once('-') {
            Some((a, b)) => match (a.parse::<usize>(), b.parse::<usize>()) {
                (Ok(a), Ok(b)) if b >= a => b - a + 1,
                _ => 0,
            },
            None => usize::from(range.parse::<usize>().is_ok()),
        })
        .sum()
}

/// Every `secs` seconds: `husk-test-init: tick <n> uptime_ms=<ms> <irq lines>` in the kernel
/// log, where the irq lines are /proc/interrupts' virtio and LOC rows with spaces squeezed.
fn tick(secs: u64) {
    let mut kmsg = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/kmsg")
        .ok();
    for n in 0.. {
        std::thread::sleep(std::time::Duration::from_secs(secs));
        let irqs: Vec<String> = std::fs::read_to_string("/proc/interrupts")
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("virtio") || l.trim_start().starts_with("LOC:"))
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect();
        let line = format!(
            "husk-test-init: tick {n} uptime_ms={} {}\n",
            uptime_ms(),
            irqs.join(" | ")
        );
        match kmsg.as_mut() {
            Some(k) => {
                let _ = k.write_all(line.as_bytes());
            }
            None => eprint!("{line}"),
        }
    }
}

/// Touches `mib` MiB, holds them 3 s, then frees them (a block that large is its own mapping,
/// so freeing it returns it to the guest kernel at once).
fn balloon(mib: usize, out: &mut impl Write) {
    let mut block = vec![0u8; mib << 20];
    for page in block.chunks_mut(4096) {
        page[0] = 1;
    }
    let _ = writeln!(out, "HUSK-TEST-INIT balloon touched mib={mib}");
    let _ = out.flush();
    std::thread::sleep(std::time::Duration::from_secs(3));
    // Read it back so the writes cannot be optimized away.
    let touched: usize = block.iter().step_by(4096).map(|&b| usize::from(b)).sum();
    drop(block);
    let _ = writeln!(out, "HUSK-TEST-INIT balloon freed pages={touched}");
    let _ = out.flush();
}

/// Prints every record in the kernel log as `kmsg <µs since boot> <text>`.
fn dmesg(out: &mut impl Write) {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let Ok(mut kmsg) = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open("/dev/kmsg")
    else {
        return;
    };
    let mut record = vec![0u8; 8192];
    loop {
        match kmsg.read(&mut record) {
            Ok(n) if n > 0 => {
                // `<prio>,<seq>,<µs>,<flags>[,...];<text>`
                let text = String::from_utf8_lossy(&record[..n]);
                let Some((head, msg)) = text.split_once(';') else {
                    continue;
                };
                let us = head.split(',').nth(2).unwrap_or("?");
                let _ = writeln!(out, "kmsg {us} {}", msg.lines().next().unwrap_or(""));
            }
            // EPIPE: a record was overwritten before it was read; go on with the next.
            Err(e) if e.raw_os_error() == Some(libc::EPIPE) => continue,
            _ => break,
        }
    }
    let _ = out.flush();
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("hostile") {
        std::process::exit(hostile::main(&args[2..]));
    }
    mount("proc", "/proc", "proc");
    mount("sysfs", "/sys", "sysfs");
    mount("devtmpfs", "/dev", "devtmpfs");

    let cmdline = read_trimmed("/proc/cmdline");
    let arg = |key: &str| {
        cmdline
            .split_whitespace()
            .find_map(|a| a.strip_prefix(key).map(str::to_string))
    };
    // Listen before the marker: the host connects as soon as it sees it.
    if let Some(spec) = arg("husk.test=net:") {
        net::setup(&spec, arg("husk.net.serve="), arg("husk.net.connect="));
    }
    if let Some(port) = arg("husk.vsock.serve=") {
        match port
            .parse()
            .map_err(|_| "not a port".to_string())
            .and_then(|p| vsock::listen(p).map_err(|e| e.to_string()))
        {
            Ok(listener) => {
                std::thread::spawn(move || vsock::serve(listener));
            }
            Err(e) => eprintln!("husk-test-init: vsock listen on {port}: {e}"),
        }
    }

    if let Some(secs) = arg("husk.test.tick=").and_then(|s| s.parse::<u64>().ok()) {
        std::thread::spawn(move || tick(secs.max(1)));
    }

    let marker = format!(
        "HUSK-TEST-INIT ready kernel={} cpus={} uptime_ms={}\n",
        read_trimmed("/proc/sys/kernel/osrelease"),
        online_cpus(),
        uptime_ms()
    );
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(marker.as_bytes());
    let _ = out.flush();

    if let Some(ports) = arg("husk.vsock.connect=") {
        for port in ports.split(',').filter_map(|p| p.parse::<u32>().ok()) {
            let line = match vsock::hello(port) {
                Ok(reply) => format!("HUSK-TEST-INIT vsock-connect port={port} ok reply={reply}\n"),
                Err(e) => format!("HUSK-TEST-INIT vsock-connect port={port} error={e}\n"),
            };
            let _ = out.write_all(line.as_bytes());
            let _ = out.flush();
        }
    }

    if let Some(mib) = arg("husk.test=balloon:").and_then(|m| m.parse::<usize>().ok()) {
        balloon(mib, &mut out);
    }

    if cmdline.split_whitespace().any(|a| a == "husk.test=dmesg") {
        dmesg(&mut out);
    }

    if let Some(tag) = arg("husk.test=fs:") {
        fs::run(&tag, &mut out);
    }

    if cmdline.split_whitespace().any(|a| a == "husk.test=hold") {
        loop {
            std::thread::sleep(std::time::Duration::from_secs(3600));
        }
    }

    // SAFETY: sync(2) has no arguments or preconditions.
    unsafe { libc::sync() };
    // SAFETY: reboot(2) with a valid command; as PID 1 we hold CAP_SYS_BOOT. It only returns on
    // failure, in which case we fall through and exit (which panics the kernel: also an end).
    unsafe { libc::reboot(libc::LINUX_REBOOT_CMD_RESTART) };
    eprintln!(
        "husk-test-init: reboot failed: {}",
        std::io::Error::last_os_error()
    );
}

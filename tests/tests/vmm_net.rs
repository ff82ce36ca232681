//! husk-vmm's virtio-net end to end: a network namespace with a persistent tap in it (iproute2,
//! deleted again by the fixture even when a test fails), a guest whose test init configures its
//! NIC from the kernel command line (`husk.test=net:10.0.2.15/24,gw=10.0.2.2`), and traffic
//! both ways between the guest and processes in that namespace: the guest connects to a host
//! listener, the host pings the guest (ICMP, and ARP on the way: the host's neighbour table
//! ends up with the guest's MAC), and TCP streams of several MiB go host → guest, guest → host
//! and both ways at once (echo), each checked byte for byte or by checksum. A configuration
//! naming a missing tap or namespace fails before the guest boots, with exit code 1 and the
//! name in the error.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use husk_tests::e2e;
use husk_tests::microvm::{
    husk_vmm_with_net, in_netns, watch_boot, GuestSpec, NetOptions, NetnsTap, RunningVm,
    VmmOptions, TEST_INIT_MARKER,
};

const BOOT_TIMEOUT: Duration = Duration::from_secs(240);
const IO_TIMEOUT: Duration = Duration::from_secs(300);
const GUEST_IP: &str = "10.0.2.15";
const HOST_IP: &str = "10.0.2.2";
const MAC: &str = "02:00:00:00:00:2a";
const MTU: u16 = 1400;
const SERVE_PORT: u16 = 5201;
const HELLO_PORT: u16 = 5300;
const STREAM_BYTES: usize = 8 << 20;
const ECHO_BYTES: usize = 4 << 20;

/// The guest's `source` pattern (tests/guest-init/src/vsock.rs `pattern_byte`).
fn pattern_byte(i: u64) -> u8 {
    (i.wrapping_mul(31) ^ (i >> 8)) as u8
}

/// FNV-1a 64, the guest's `sink` checksum.
fn fnv(bytes: impl IntoIterator<Item = u8>) -> u64 {
    bytes.into_iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn data(len: usize, seed: u64) -> Vec<u8> {
    (0..len as u64)
        .map(|i| (i.wrapping_mul(2_654_435_761).wrapping_add(seed) >> 7) as u8)
        .collect()
}

fn connect_guest(netns: &Path) -> TcpStream {
    let addr: SocketAddr = format!("{GUEST_IP}:{SERVE_PORT}").parse().unwrap();
    let s = in_netns(netns, move || {
        TcpStream::connect_timeout(&addr, Duration::from_secs(60))
    })
    .unwrap()
    .unwrap();
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    s
}

/// One ICMP echo from the namespace to the guest; true if the reply came.
fn ping(netns: &Path, seq: u16) -> bool {
    in_netns(netns, move || -> std::io::Result<bool> {
        use std::os::fd::{FromRawFd, OwnedFd};
        // SAFETY: socket(2) with constant arguments; returns a new descriptor or -1.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: a new descriptor owned by nobody else.
        let sock = std::net::UdpSocket::from(unsafe { OwnedFd::from_raw_fd(fd) });
        sock.set_read_timeout(Some(Duration::from_secs(5)))?;
        let id: u16 = 0x4855;
        let mut pkt = vec![8u8, 0, 0, 0];
        pkt.extend(id.to_be_bytes());
        pkt.extend(seq.to_be_bytes());
        pkt.extend(b"husk-ping-payload");
        let sum = pkt
            .chunks(2)
            .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
            .sum::<u32>();
        let sum = (sum & 0xffff) + (sum >> 16);
        let csum = !(((sum & 0xffff) + (sum >> 16)) as u16);
        pkt[2..4].copy_from_slice(&csum.to_be_bytes());
        sock.send_to(&pkt, format!("{GUEST_IP}:0"))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut buf = [0u8; 1500];
        while Instant::now() < deadline {
            let n = match sock.recv(&mut buf) {
                Ok(n) => n,
                Err(_) => continue,
            };
            let ihl = usize::from(buf[0] & 0x0f) * 4;
            if n >= ihl + 8
                && buf[ihl] == 0
                && buf[ihl + 4..ihl + 6] == id.to_be_bytes()
                && buf[ihl + 6..ihl + 8] == seq.to_be_bytes()
            {
                return Ok(true);
            }
        }
        Ok(false)
    })
    .unwrap()
    .unwrap()
}

fn wait_line(vm: &mut RunningVm, needle: &str) -> String {
    vm.wait_for(needle, BOOT_TIMEOUT)
        .unwrap_or_else(|| panic!("{}", vm.missing(&format!("{needle:?} line"))))
}

#[test]
#[ignore = "needs hardware KVM: run with `make e2e` (uses the nested test host where needed)"]
fn guest_and_host_exchange_traffic_through_the_tap() {
    let env = e2e::require();
    let net = NetnsTap::create(
        &format!("husk-e2e-{}", std::process::id()),
        "husk-tap0",
        &format!("{HOST_IP}/24"),
        MTU,
    )
    .unwrap();
    let netns = net.path();

    // The host side the guest connects to, listening before the guest boots.
    let hello_addr: SocketAddr = format!("{HOST_IP}:{HELLO_PORT}").parse().unwrap();
    let listener = in_netns(&netns, move || TcpListener::bind(hello_addr))
        .unwrap()
        .unwrap();
    let hello = std::thread::spawn(move || -> std::io::Result<String> {
        let (s, _) = listener.accept()?;
        s.set_read_timeout(Some(IO_TIMEOUT))?;
        let mut line = String::new();
        BufReader::new(s.try_clone()?).read_line(&mut line)?;
        (&s).write_all(b"welcome\n")?;
        Ok(line.trim().to_string())
    });

    let dir = tempfile::tempdir().unwrap();
    let spec = GuestSpec {
        kernel: env.kernel.clone(),
        initramfs: env.test_image.clone(),
        cmdline: format!(
            "husk.test=hold husk.test=net:{GUEST_IP}/24,gw={HOST_IP} \
             husk.net.serve={SERVE_PORT} husk.net.connect={HOST_IP}:{HELLO_PORT}"
        ),
        vcpus: 1,
        memory_mib: 256,
    };
    let nic = NetOptions {
        tap: &net.tap,
        mac: MAC,
        mtu: Some(MTU),
        netns: Some(&netns),
    };
    let cmd =
        husk_vmm_with_net(&env.vmm, &spec, dir.path(), &VmmOptions::default(), &[nic]).unwrap();
    let mut vm = RunningVm::spawn(cmd).unwrap();
    let up = wait_line(&mut vm, "HUSK-TEST-INIT net ");
    assert!(
        up.contains(&format!(
            "net up if=eth0 addr={GUEST_IP}/24 mac={MAC} mtu={MTU}"
        )),
        "{up}\n{}",
        vm.console
    );

    // Guest → host connection (through ARP for the gateway and the default route).
    let connected = wait_line(&mut vm, "HUSK-TEST-INIT net-connect");
    assert!(
        connected.contains("net-connect ok reply=welcome"),
        "{connected}\n{}",
        vm.console
    );
    assert_eq!(hello.join().unwrap().unwrap(), format!("hello {GUEST_IP}"));
    // The test init prints its marker after the network lines.
    wait_line(&mut vm, TEST_INIT_MARKER);

    // ICMP from the host, and the guest's MAC in the host's neighbour table (ARP).
    assert!(
        (1..=3).any(|seq| ping(&netns, seq)),
        "no ICMP echo reply\n{}",
        vm.console
    );
    let neigh = net.ip_output(&["neigh", "show", GUEST_IP]).unwrap();
    assert!(neigh.contains(MAC), "neighbour table: {neigh:?}");

    // Host → guest: the guest checksums what it read.
    let sent = data(STREAM_BYTES, 1);
    let mut s = connect_guest(&netns);
    let started = Instant::now();
    s.write_all(format!("sink {STREAM_BYTES}\n").as_bytes())
        .unwrap();
    s.write_all(&sent).unwrap();
    let mut line = String::new();
    BufReader::new(&s).read_line(&mut line).unwrap();
    let h2g = started.elapsed();
    assert_eq!(
        line.trim(),
        format!("ok {STREAM_BYTES} {:016x}", fnv(sent.iter().copied()))
    );

    // Guest → host: the test pattern, byte for byte.
    let mut s = connect_guest(&netns);
    let started = Instant::now();
    s.write_all(format!("source {STREAM_BYTES}\n").as_bytes())
        .unwrap();
    let mut got = Vec::with_capacity(STREAM_BYTES);
    s.read_to_end(&mut got).unwrap();
    let g2h = started.elapsed();
    assert_eq!(got.len(), STREAM_BYTES);
    if let Some(at) = (0..got.len()).find(|&i| got[i] != pattern_byte(i as u64)) {
        panic!("guest → host byte {at} is wrong");
    }

    // Both ways at once: the guest echoes while the host is still sending.
    let sent = data(ECHO_BYTES, 7);
    let s = connect_guest(&netns);
    (&s).write_all(b"echo\n").unwrap();
    let mut reader = s.try_clone().unwrap();
    let back = std::thread::spawn(move || {
        let mut got = vec![0u8; ECHO_BYTES];
        reader.read_exact(&mut got).map(|_| got)
    });
    (&s).write_all(&sent).unwrap();
    let echoed = back.join().unwrap().unwrap();
    assert!(echoed == sent, "the echo differs");
    drop(s);

    let mib = STREAM_BYTES as f64 / f64::from(1 << 20);
    eprintln!(
        "vmm_net: host→guest {:.1} MiB/s, guest→host {:.1} MiB/s (nested speeds are not results)",
        mib / h2g.as_secs_f64(),
        mib / g2h.as_secs_f64()
    );
    vm.signal(libc::SIGTERM);
    let code = vm.wait(Duration::from_secs(60));
    assert_eq!(code, Some(128 + libc::SIGTERM), "{}", vm.console);
    assert!(
        !vm.console.contains("husk-vmm: warning: virtio-net"),
        "the device complained:\n{}",
        vm.console
    );
    drop(net);
    assert!(!Path::new(&netns).exists(), "the namespace was left behind");
}

#[test]
#[ignore = "needs hardware KVM: run with `make e2e` (uses the nested test host where needed)"]
fn a_missing_tap_or_namespace_is_named_and_is_a_vmm_error() {
    let env = e2e::require();
    let dir = tempfile::tempdir().unwrap();
    let spec = GuestSpec {
        kernel: env.kernel.clone(),
        initramfs: env.test_image.clone(),
        cmdline: String::new(),
        vcpus: 1,
        memory_mib: 128,
    };
    let missing_ns = Path::new("/run/netns/husk-no-such-netns");
    for (tap, netns, needle) in [
        ("husk-missing0", None, "husk-missing0"),
        ("husk-tap0", Some(missing_ns), "husk-no-such-netns"),
    ] {
        let nic = NetOptions {
            tap,
            mac: MAC,
            mtu: None,
            netns,
        };
        let cmd =
            husk_vmm_with_net(&env.vmm, &spec, dir.path(), &VmmOptions::default(), &[nic]).unwrap();
        let r = watch_boot(cmd, TEST_INIT_MARKER, Duration::from_secs(60)).unwrap();
        assert_eq!(r.exit_code, Some(1), "{}", r.console);
        assert!(r.to_marker.is_none(), "the guest booted:\n{}", r.console);
        assert!(
            r.console.contains(needle) && r.console.contains(tap),
            "{}",
            r.console
        );
    }
    // Nothing was created in the VMM's own namespace under the missing name.
    let out = std::process::Command::new("ip")
        .args(["link", "show", "husk-missing0"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "a tap was created: {out:?}");
}

//! Pod networking end to end: a dual-stack network namespace shaped like CNI's (a veth whose
//! namespace side is `eth0` with 10.99.0.2/24 and fd00:99::2/64, MTU 1400 and default routes
//! via the host side's 10.99.0.1 and fd00:99::1), a busybox container started with `ctr run
//! --with-ns network:<netns> --runtime husk`, and traffic both ways in both families: the test
//! host connects to the container's TCP server, the container connects to a listener in the
//! test host. `ip` in the container shows the addresses, the MTU and the default routes. After kill and delete no tap, no ingress qdisc and no husk-vmm is
//! left; a missing namespace path fails `ctr run` naming it and leaves nothing.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use husk_tests::containerd::{Containerd, CtrOutput, HuskArtifacts, HuskSettings, HUSK};
use husk_tests::oci_image::BUSYBOX_REF;

const T: Duration = Duration::from_secs(300);
const POD_IP: &str = "10.99.0.2";
const HOST_IP: &str = "10.99.0.1";
const POD_IP6: &str = "fd00:99::2";
const HOST_IP6: &str = "fd00:99::1";
const MTU: &str = "1400";
const SERVE_PORT: u16 = 8080;
const HOST_PORT: u16 = 9090;
const GREETING: &str = "husk-pod-hello";

fn ip(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().expect("running ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn in_ns(ns: &str, cmd: &[&str]) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", ns])
        .args(cmd)
        .output()
        .expect("running ip netns exec");
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// The CNI-like namespace; removed on drop, even when the test fails.
struct PodNs {
    name: String,
    host_veth: String,
}

impl PodNs {
    fn create() -> PodNs {
        let pid = std::process::id();
        let ns = PodNs {
            name: format!("husk-pod-{pid}"),
            host_veth: format!("hpv{}", pid % 1_000_000),
        };
        ip(&["netns", "add", &ns.name]);
        ip(&[
            "link",
            "add",
            &ns.host_veth,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &ns.name,
        ]);
        ip(&[
            "addr",
            "add",
            &format!("{HOST_IP}/24"),
            "dev",
            &ns.host_veth,
        ]);
        // No duplicate address detection on either side, as CNI's bridge plugin does, so the
        // addresses are usable at once.
        ip(&[
            "addr",
            "add",
            &format!("{HOST_IP6}/64"),
            "dev",
            &ns.host_veth,
            "nodad",
        ]);
        ip(&["link", "set", &ns.host_veth, "mtu", MTU, "up"]);
        ip(&["-n", &ns.name, "link", "set", "lo", "up"]);
        ip(&["-n", &ns.name, "link", "set", "eth0", "mtu", MTU, "up"]);
        ip(&[
            "-n",
            &ns.name,
            "addr",
            "add",
            &format!("{POD_IP}/24"),
            "dev",
            "eth0",
        ]);
        ip(&[
            "-n",
            &ns.name,
            "addr",
            "add",
            &format!("{POD_IP6}/64"),
            "dev",
            "eth0",
            "nodad",
        ]);
        ip(&["-n", &ns.name, "route", "add", "default", "via", HOST_IP]);
        ip(&[
            "-n", &ns.name, "-6", "route", "add", "default", "via", HOST_IP6,
        ]);
        ns
    }

    fn path(&self) -> String {
        format!("/var/run/netns/{}", self.name)
    }
}

impl Drop for PodNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
        // Usually gone with the namespace already (its peer was in it).
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_veth])
            .stderr(std::process::Stdio::null())
            .status();
    }
}

fn settings() -> HuskSettings {
    let artifacts = HuskArtifacts::from_env().unwrap_or_else(|e| {
        panic!("{e}: run the husk end-to-end tests with `make e2e` after `make build image kernel`")
    });
    HuskSettings::new(artifacts)
}

fn ok(out: &CtrOutput, what: &str, c: &Containerd) {
    assert_eq!(out.code, 0, "{what}: {out}\n{}", c.log_tail(80));
}

/// Connects to the container's server at `ip` until it answers (the VM boots first), reads
/// one line.
fn read_greeting(ip: &str) -> String {
    let addr = SocketAddr::new(ip.parse().unwrap(), SERVE_PORT);
    let deadline = Instant::now() + T;
    loop {
        let attempt =
            TcpStream::connect_timeout(&addr, Duration::from_secs(10)).and_then(|mut s| {
                s.set_read_timeout(Some(Duration::from_secs(60)))?;
                // busybox nc keeps the connection open after its stdin ends: read one line.
                let mut text = String::new();
                BufReader::new(&mut s).read_line(&mut text)?;
                Ok(text)
            });
        match attempt {
            Ok(text) if !text.is_empty() => return text,
            other => {
                assert!(
                    Instant::now() < deadline,
                    "no answer from {addr}: {other:?}"
                );
                std::thread::sleep(Duration::from_millis(500));
            }
        }
    }
}

/// Has the container connect to a listener on `host_ip` in the test host and send a line;
/// returns the line.
fn from_the_pod(c: &Containerd, id: &str, host_ip: &str) -> String {
    let listener = TcpListener::bind(SocketAddr::new(host_ip.parse().unwrap(), HOST_PORT)).unwrap();
    listener.set_nonblocking(true).unwrap();
    let accept = std::thread::spawn(move || -> std::io::Result<String> {
        let deadline = Instant::now() + T;
        let mut s = loop {
            match listener.accept() {
                Ok((s, _)) => break s,
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(200))
                }
                Err(e) => return Err(e),
            }
        };
        s.set_nonblocking(false)?;
        s.set_read_timeout(Some(Duration::from_secs(120)))?;
        let mut text = String::new();
        BufReader::new(&mut s).read_line(&mut text)?;
        s.write_all(b"bye\n").ok();
        Ok(text)
    });
    let send = format!("echo from-the-pod | nc {host_ip} {HOST_PORT}");
    let exec_id = if host_ip.contains(':') {
        "send-v6"
    } else {
        "send-v4"
    };
    let out = c.ctr(
        &["task", "exec", "--exec-id", exec_id, id, "sh", "-c", &send],
        None,
        T,
    );
    ok(&out, &format!("nc {host_ip} from the container"), c);
    accept
        .join()
        .unwrap()
        .unwrap_or_else(|e| panic!("accepting on {host_ip}: {e}"))
}

#[test]
#[ignore = "end-to-end: needs hardware KVM (test host), containerd, husk-vmm, the agent image; run with `make e2e`"]
fn a_pod_network_namespace_reaches_the_vm_both_ways() {
    husk_tests::e2e::require();
    let settings = settings();
    let c = Containerd::start(Some(&settings)).unwrap();
    c.import_busybox().unwrap();
    let ns = PodNs::create();
    let id = "pod-net";
    let with_ns = format!("network:{}", ns.path());
    let server = format!("while true; do echo {GREETING} | nc -l -p {SERVE_PORT}; done");
    let run = c.ctr(
        &[
            "run",
            "-d",
            "--runtime",
            HUSK,
            "--with-ns",
            &with_ns,
            BUSYBOX_REF,
            id,
            "sh",
            "-c",
            &server,
        ],
        None,
        T,
    );
    ok(&run, "ctr run -d", &c);

    // The netns side: a tap and the redirect qdiscs while the pod runs.
    let links = ip(&["-n", &ns.name, "-d", "link", "show"]);
    assert!(
        links.contains("husktap0"),
        "no tap in the pod namespace:\n{links}"
    );
    let filters = in_ns(
        &ns.name,
        &["tc", "filter", "show", "dev", "eth0", "ingress"],
    );
    assert!(
        filters.contains("mirred") && filters.contains("husktap0"),
        "no redirect on eth0:\n{filters}"
    );

    eprintln!("pod-net: running; tap and redirect in place");
    // Test host → container.
    assert_eq!(read_greeting(POD_IP).trim(), GREETING);
    assert_eq!(read_greeting(POD_IP6).trim(), GREETING);

    eprintln!("pod-net: test host -> container ok");
    // Container → test host.
    for host_ip in [HOST_IP, HOST_IP6] {
        assert_eq!(from_the_pod(&c, id, host_ip).trim(), "from-the-pod");
    }

    eprintln!("pod-net: container -> test host ok");
    // The guest's view: the CNI address, MTU and default route.
    let addr = c.ctr(
        &[
            "task",
            "exec",
            "--exec-id",
            "addr",
            id,
            "ip",
            "addr",
            "show",
            "eth0",
        ],
        None,
        T,
    );
    ok(&addr, "ip addr", &c);
    assert!(
        addr.stdout.contains(&format!("{POD_IP}/24"))
            && addr.stdout.contains(&format!("{POD_IP6}/64"))
            && addr.stdout.contains("mtu 1400"),
        "{}",
        addr.stdout
    );
    let route = c.ctr(
        &["task", "exec", "--exec-id", "route", id, "ip", "route"],
        None,
        T,
    );
    ok(&route, "ip route", &c);
    assert!(
        route
            .stdout
            .contains(&format!("default via {HOST_IP} dev eth0")),
        "{}",
        route.stdout
    );

    let route6 = c.ctr(
        &[
            "task",
            "exec",
            "--exec-id",
            "route6",
            id,
            "ip",
            "-6",
            "route",
        ],
        None,
        T,
    );
    ok(&route6, "ip -6 route", &c);
    assert!(
        route6
            .stdout
            .contains(&format!("default via {HOST_IP6} dev eth0")),
        "{}",
        route6.stdout
    );

    eprintln!(
        "pod-net: guest view ok:\n{}{}{}",
        addr.stdout, route.stdout, route6.stdout
    );
    // Teardown: nothing of the pod network is left in the namespace, no husk-vmm anywhere.
    let kill = c.ctr(&["task", "kill", "-s", "SIGKILL", id], None, T);
    ok(&kill, "ctr task kill", &c);
    let deadline = Instant::now() + T;
    loop {
        let del = c.ctr(&["task", "delete", id], None, T);
        if del.code == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "task delete: {del}");
        std::thread::sleep(Duration::from_millis(500));
    }
    ok(
        &c.ctr(&["container", "delete", id], None, T),
        "container delete",
        &c,
    );
    c.assert_clean(&[id]);
    let links = ip(&["-n", &ns.name, "link", "show"]);
    assert!(!links.contains("husktap"), "a tap was left:\n{links}");
    let qdiscs = in_ns(&ns.name, &["tc", "qdisc", "show", "dev", "eth0"]);
    assert!(
        !qdiscs.contains("ingress"),
        "the ingress qdisc was left:\n{qdiscs}"
    );
}

#[test]
#[ignore = "end-to-end: needs hardware KVM (test host), containerd, husk-vmm, the agent image; run with `make e2e`"]
fn a_missing_network_namespace_fails_run_naming_it() {
    husk_tests::e2e::require();
    let settings = settings();
    let c = Containerd::start(Some(&settings)).unwrap();
    c.import_busybox().unwrap();
    let id = "pod-nons";
    let missing = format!("/var/run/netns/husk-missing-{}", std::process::id());
    let run = c.ctr(
        &[
            "run",
            "--rm",
            "--runtime",
            HUSK,
            "--with-ns",
            &format!("network:{missing}"),
            BUSYBOX_REF,
            id,
            "true",
        ],
        None,
        T,
    );
    assert_ne!(run.code, 0, "{run}");
    assert!(
        run.stderr.contains(&missing),
        "the error does not name {missing}: {run}"
    );
    c.remove_all();
    c.assert_clean(&[id]);
}

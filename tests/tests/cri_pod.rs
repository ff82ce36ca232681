//! Kubernetes pods on husk: containerd's CRI plugin driven as kubelet drives it
//! (src/cri/), with `runtime_handler = "husk"`, and the same scenario under `runc` for parity.
//!
//! The scenario: RunPodSandbox (with a network sysctl), two long-running busybox containers
//! (under husk: one VM, one boot id, not the test host's), the pod's sysctl in both, ExecSync, CRI log files, hostPath volumes (read-write,
//! updated on the host, read-only, rslave and rshared with a mount the host makes afterwards), CRI's /etc/hosts, /etc/resolv.conf and hostname,
//! UpdateContainerResources, ContainerStats, an OOM-killed container, a server in the pod
//! reached over the CNI bridge, then StopPodSandbox + RemovePodSandbox and nothing left.
//! Also: ten husk pods at once, and bad input (annotations, memory, the node's network, IPC or
//! PID namespace, a missing kernel).
//! End-to-end tests (`#[ignore]`d): they run in the nested test host.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use husk_tests::containerd::{processes_with, shim_socket, Containerd};
use husk_tests::cri::{
    self, container_config, eventually, exited, husk_settings, pod_config, running, start,
    wait_container, with_memory_limit, Cri,
};
use k8s_cri::v1::{
    LinuxContainerResources, LinuxSandboxSecurityContext, Mount, MountPropagation, NamespaceMode,
    NamespaceOption, PodSandboxConfig,
};

const T: Duration = Duration::from_secs(300);
const HUSK: &str = "husk";
const RUNC: &str = "runc";

/// ExecSync, asserting it worked; returns stdout.
fn sh(cri: &Cri, id: &str, script: &str) -> String {
    let r = cri
        .exec_sync(id, &["sh", "-c", script], 120)
        .unwrap_or_else(|e| panic!("exec {script:?} in {id}: {e}"));
    assert_eq!(
        r.exit_code,
        0,
        "exec {script:?} in {id}: stdout {:?} stderr {:?}",
        String::from_utf8_lossy(&r.stdout),
        String::from_utf8_lossy(&r.stderr)
    );
    String::from_utf8_lossy(&r.stdout).into_owned()
}

fn bind(host: &Path, container: &str, readonly: bool) -> Mount {
    Mount {
        container_path: container.into(),
        host_path: host.display().to_string(),
        readonly,
        ..Default::default()
    }
}

fn run(cmd: &str, args: &[&str]) {
    let out = std::process::Command::new(cmd).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Unmounts everything at and below its path when dropped (what [`propagation`] mounted), so a
/// failed test leaves no mount behind either.
struct Unmount(std::path::PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-R")
            .arg(&self.0)
            .status();
    }
}

/// A container with the `prop` volume twice, HostToContainer at /slave and Bidirectional at
/// /shared; after it started, the host mounts a tmpfs below the volume and the container must
/// see it through both. Returns the container's id and the guard of the host's mounts.
fn propagation(
    c: &Containerd,
    cri: &Cri,
    pod: &str,
    pod_cfg: &PodSandboxConfig,
    prop: &Path,
) -> (String, Unmount) {
    let p = prop.display().to_string();
    run("mount", &["-t", "tmpfs", "-o", "size=1m", "husk-prop", &p]);
    let mounted = Unmount(prop.to_path_buf());
    run("mount", &["--make-shared", &p]);
    let mut cfg = container_config("prop", &["sleep", "3600"]);
    cfg.mounts = vec![
        Mount {
            propagation: MountPropagation::PropagationHostToContainer as i32,
            ..bind(prop, "/slave", false)
        },
        Mount {
            propagation: MountPropagation::PropagationBidirectional as i32,
            ..bind(prop, "/shared", false)
        },
    ];
    let id = cri
        .create_and_start(pod, pod_cfg, &cfg)
        .unwrap_or_else(|e| {
            panic!(
                "container with rslave and rshared volumes: {e}\n{}",
                c.log_tail(60)
            )
        });
    wait_container(cri, &id, T, running).unwrap();
    let sub = prop.join("sub");
    std::fs::create_dir_all(&sub).unwrap();
    run(
        "mount",
        &[
            "-t",
            "tmpfs",
            "-o",
            "size=1m",
            "husk-prop-sub",
            &sub.display().to_string(),
        ],
    );
    std::fs::write(sub.join("late.txt"), "mounted-after-start\n").unwrap();
    for dest in ["/slave", "/shared"] {
        let mut last = String::new();
        assert!(
            eventually(Duration::from_secs(60), || {
                last = cri
                    .exec_sync(&id, &["cat", &format!("{dest}/sub/late.txt")], 60)
                    .map(|r| String::from_utf8_lossy(&r.stdout).into_owned())
                    .unwrap_or_else(|e| e.to_string());
                last == "mounted-after-start\n"
            }),
            "a mount the host made below the {dest} volume after start never appeared: {last:?}"
        );
    }
    (id, mounted)
}

/// GET / from `ip:port` over the CNI bridge; the body on success.
fn http_get(ip: &str, port: u16) -> std::io::Result<String> {
    let addr = format!("{ip}:{port}")
        .parse()
        .map_err(|e| std::io::Error::other(format!("{e}")))?;
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(b"GET /index.html HTTP/1.0\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

fn scenario(handler: &str) {
    let husk = (handler == HUSK).then(husk_settings);
    let (c, cri) = start(husk.as_ref());
    let netns_before = cri::netns_names();
    let base = c.base().to_path_buf();
    let logs = base.join("pods/web");
    let (data, cfg, ro) = (
        base.join("vol/data"),
        base.join("vol/cfg"),
        base.join("vol/ro"),
    );
    let prop = base.join("vol/prop");
    for d in [&logs, &data, &cfg, &ro, &prop] {
        std::fs::create_dir_all(d).unwrap();
    }
    std::fs::write(data.join("hello.txt"), "from-host\n").unwrap();
    std::fs::write(cfg.join("key"), "v1\n").unwrap();
    std::fs::write(ro.join("fixed"), "fixed\n").unwrap();

    let mut pod_cfg: PodSandboxConfig = pod_config("web", &logs);
    // A pod network sysctl (kubelet passes the pod's safe sysctls in the sandbox config).
    pod_cfg
        .linux
        .as_mut()
        .unwrap()
        .sysctls
        .insert("net.ipv4.ip_local_port_range".into(), "20000 40000".into());
    let pod = cri
        .run_pod(&pod_cfg, handler)
        .unwrap_or_else(|e| panic!("RunPodSandbox ({handler}): {e}\n{}", c.log_tail(60)));
    eprintln!("cri_pod[{handler}]: pod {pod}");

    let mut a_cfg = container_config(
        "a",
        &[
            "sh",
            "-c",
            "echo started-a; echo err-a >&2; exec sleep 3600",
        ],
    );
    a_cfg.mounts = vec![
        bind(&data, "/data", false),
        bind(&cfg, "/cfg", true),
        bind(&ro, "/ro", true),
    ];
    let a = cri
        .create_and_start(&pod, &pod_cfg, &a_cfg)
        .unwrap_or_else(|e| panic!("container a: {e}\n{}", c.log_tail(60)));
    let b = cri
        .create_and_start(&pod, &pod_cfg, &container_config("b", &["sleep", "3600"]))
        .unwrap_or_else(|e| panic!("container b: {e}\n{}", c.log_tail(60)));
    for id in [&a, &b] {
        wait_container(&cri, id, T, running).unwrap();
    }

    // One VM for the pod: one husk-vmm, one boot id shared by both containers.
    let host_boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    let boot_a = sh(&cri, &a, "cat /proc/sys/kernel/random/boot_id");
    let boot_b = sh(&cri, &b, "cat /proc/sys/kernel/random/boot_id");
    assert_eq!(boot_a, boot_b, "both containers run in one kernel");
    if handler == HUSK {
        assert_ne!(
            boot_a, host_boot,
            "husk's containers run in their own kernel"
        );
        let vmms = processes_with(&format!("{}/", c.husk_state.display()));
        let vmms: Vec<_> = vmms.iter().filter(|(_, p)| p.contains("vm.json")).collect();
        assert_eq!(vmms.len(), 1, "one husk-vmm for the pod: {vmms:?}");
        assert!(vmms[0].1.contains(&format!("{pod}/vm.json")), "{vmms:?}");
    } else {
        assert_eq!(boot_a, host_boot, "runc's containers share the host kernel");
    }

    // The pod's network sysctl holds in every container of the pod.
    for id in [&a, &b] {
        assert_eq!(
            sh(&cri, id, "cat /proc/sys/net/ipv4/ip_local_port_range"),
            "20000\t40000\n",
            "[{handler}] the pod's sysctl in {id}"
        );
    }

    // ExecSync: stdout, stderr, exit code.
    let r = cri
        .exec_sync(&a, &["sh", "-c", "echo out; echo err >&2; exit 3"], 60)
        .unwrap();
    assert_eq!(
        (r.stdout.as_slice(), r.stderr.as_slice(), r.exit_code),
        (&b"out\n"[..], &b"err\n"[..], 3)
    );

    // The CRI log file (LogDirectory/LogPath) carries both streams in CRI's format.
    let log = logs.join("a.log");
    assert!(
        eventually(Duration::from_secs(60), || {
            let t = std::fs::read_to_string(&log).unwrap_or_default();
            t.contains(" stdout F started-a") && t.contains(" stderr F err-a")
        }),
        "{}: {:?}",
        log.display(),
        std::fs::read_to_string(&log)
    );

    // hostPath volumes.
    assert_eq!(sh(&cri, &a, "cat /data/hello.txt"), "from-host\n");
    sh(&cri, &a, "echo from-pod > /data/pod.txt");
    assert_eq!(
        std::fs::read_to_string(data.join("pod.txt")).unwrap(),
        "from-pod\n"
    );
    assert_eq!(sh(&cri, &a, "cat /cfg/key"), "v1\n");
    std::fs::write(cfg.join(".key.tmp"), "v2\n").unwrap();
    std::fs::rename(cfg.join(".key.tmp"), cfg.join("key")).unwrap();
    assert!(
        eventually(Duration::from_secs(60), || sh(&cri, &a, "cat /cfg/key")
            == "v2\n"),
        "a file replaced on the host never became visible in the pod"
    );
    let w = cri
        .exec_sync(&a, &["sh", "-c", "echo x > /ro/w"], 60)
        .unwrap();
    assert_ne!(w.exit_code, 0, "a read-only mount accepted a write");
    assert!(
        String::from_utf8_lossy(&w.stderr).contains("Read-only"),
        "{:?}",
        String::from_utf8_lossy(&w.stderr)
    );
    assert_eq!(sh(&cri, &a, "cat /ro/fixed"), "fixed\n");

    // Mount propagation: hostPath volumes with HostToContainer (rslave) and Bidirectional
    // (rshared) propagation start, and a mount the host makes below the volume afterwards
    // appears in the container. containerd requires such a volume's source to be a shared mount.
    let (prop_ctr, prop_mounts) = propagation(&c, &cri, &pod, &pod_cfg, &prop);

    // CRI's /etc/hosts (a copy of the host's), resolv.conf (from the pod's DNS config), hostname.
    let host_hosts = std::fs::read_to_string("/etc/hosts").unwrap();
    assert_eq!(sh(&cri, &a, "cat /etc/hosts"), host_hosts);
    let resolv = sh(&cri, &a, "cat /etc/resolv.conf");
    assert!(
        resolv.contains(&format!("nameserver {}", cri::DNS_SERVER))
            && resolv.contains(&format!("search {}", cri::DNS_SEARCH)),
        "{resolv:?}"
    );
    assert_eq!(sh(&cri, &a, "hostname"), "web\n");

    // UpdateContainerResources reaches the container's cgroup.
    let mem_max = "p=$(sed -n 's/^0:://p' /proc/self/cgroup); cat /sys/fs/cgroup$p/memory.max";
    let limit: i64 = 96 << 20;
    cri.update_resources(
        &b,
        LinuxContainerResources {
            memory_limit_in_bytes: limit,
            ..Default::default()
        },
    )
    .unwrap_or_else(|e| panic!("UpdateContainerResources: {e}\n{}", c.log_tail(40)));
    assert_eq!(sh(&cri, &b, mem_max).trim(), limit.to_string());

    // ContainerStats.
    let stats = cri.stats(&a).unwrap();
    let ws = stats
        .memory
        .as_ref()
        .and_then(|m| m.working_set_bytes.as_ref())
        .map(|v| v.value)
        .unwrap_or(0);
    assert!(ws > 0, "no memory working set in {stats:?}");

    // A container over its memory limit is OOM-killed, and CRI says so.
    let hog = cri
        .create_and_start(
            &pod,
            &pod_cfg,
            &with_memory_limit(
                container_config(
                    "hog",
                    &["dd", "if=/dev/zero", "of=/dev/null", "bs=128M", "count=1"],
                ),
                32 << 20,
            ),
        )
        .unwrap_or_else(|e| panic!("container hog: {e}\n{}", c.log_tail(40)));
    let st = wait_container(&cri, &hog, T, exited).unwrap();
    assert_eq!(
        (st.reason.as_str(), st.exit_code),
        ("OOMKilled", 137),
        "{st:?}"
    );

    // A server in the pod answers a client on the test host over the CNI bridge.
    let web = cri
        .create_and_start(
            &pod,
            &pod_cfg,
            &container_config(
                "srv",
                &[
                    "sh",
                    "-c",
                    "mkdir -p /www && echo hello-from-pod > /www/index.html && exec httpd -f -p 8080 -h /www",
                ],
            ),
        )
        .unwrap_or_else(|e| panic!("container srv: {e}\n{}", c.log_tail(40)));
    wait_container(&cri, &web, T, running).unwrap();
    let ip = cri
        .pod_status(&pod)
        .unwrap()
        .network
        .map(|n| n.ip)
        .unwrap_or_default();
    let mut last = String::new();
    let net_ok = !ip.is_empty()
        && eventually(Duration::from_secs(60), || match http_get(&ip, 8080) {
            Ok(body) => {
                last = body.clone();
                body.contains("hello-from-pod")
            }
            Err(e) => {
                last = e.to_string();
                false
            }
        });
    let net_failure = (!net_ok).then(|| format!("pod ip {ip:?}: last answer {last:?}"));

    // A command that does not exist fails at once, naming it: a container's and an exec's (the
    // times are printed next to runc's, from the same run).
    let t0 = Instant::now();
    let e = cri
        .create_and_start(
            &pod,
            &pod_cfg,
            &container_config("noexec", &["/no/such/program"]),
        )
        .unwrap_err();
    eprintln!(
        "cri_pod[{handler}]: a missing executable failed after {:?}: {e}",
        t0.elapsed()
    );
    assert!(e.to_string().contains("/no/such/program"), "{e}");
    let t0 = Instant::now();
    let r = cri.exec_sync(&b, &["/no/such/program"], 60);
    eprintln!(
        "cri_pod[{handler}]: an exec of a missing executable ended after {:?}: {r:?}",
        t0.elapsed()
    );
    match r {
        Ok(r) => assert_ne!(r.exit_code, 0, "{r:?}"),
        Err(e) => assert!(e.to_string().contains("/no/such/program"), "{e}"),
    }

    // Stop and remove: nothing of the pod is left.
    cri.stop_and_remove_pod(&pod)
        .unwrap_or_else(|e| panic!("stop/remove pod: {e}\n{}", c.log_tail(60)));
    let ids = [
        pod.as_str(),
        a.as_str(),
        b.as_str(),
        hog.as_str(),
        web.as_str(),
        prop_ctr.as_str(),
    ];
    drop(prop_mounts);
    c.assert_clean(&ids);
    assert!(
        !shim_socket(&c.socket(), cri::NAMESPACE, &pod).exists(),
        "the pod's shim socket is left"
    );
    cri::wait_nothing_left(&c, &netns_before).unwrap();
    if let Some(f) = net_failure {
        c.save_log(&format!("cri_pod_{handler}"));
        panic!("[{handler}] the pod's server did not answer over the CNI bridge: {f}");
    }
}

#[test]
#[ignore = "end-to-end: needs containerd with CRI, runc and CNI plugins (make e2e)"]
fn cri_pod_runc() {
    scenario(RUNC);
}

#[test]
#[ignore = "end-to-end: needs hardware KVM and husk's artifacts (make e2e)"]
fn cri_pod_husk() {
    scenario(HUSK);
}

#[test]
#[ignore = "end-to-end: needs hardware KVM and husk's artifacts (make e2e)"]
fn cri_ten_husk_pods_in_parallel() {
    let mut settings = husk_settings();
    settings.memory_mib = 128;
    let (c, cri) = start(Some(&settings));
    let netns_before = cri::netns_names();
    let results: Vec<Result<(String, String), String>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..10)
            .map(|i| {
                let cri = cri.clone();
                let logs = c.base().join(format!("pods/p{i}"));
                s.spawn(move || {
                    std::fs::create_dir_all(&logs).map_err(|e| e.to_string())?;
                    let mut cfg = pod_config(&format!("p{i}"), &logs);
                    cri::start_pod_like_kubelet(&cri, &mut cfg, i, HUSK)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err("thread panicked".into())))
            .collect()
    });
    let failures: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    let pods: Vec<&(String, String)> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    if failures.is_empty() {
        let vmms: Vec<String> = processes_with(&format!("{}/", c.husk_state.display()))
            .into_iter()
            .filter(|(_, p)| p.contains("vm.json"))
            .map(|(_, p)| p)
            .collect();
        let without: Vec<&str> = pods
            .iter()
            .map(|(pod, _)| pod.as_str())
            .filter(|pod| !vmms.iter().any(|v| v.contains(pod)))
            .collect();
        let ends: Vec<String> = c
            .log_tail(4000)
            .lines()
            .filter(|l| l.contains("the sandbox VM ended") || l.contains("husk-vmm: vCPU"))
            .map(String::from)
            .collect();
        assert!(
            without.is_empty(),
            "one husk-vmm per pod: none for {without:?}; what the shims logged:\n{}",
            ends.join("\n")
        );
    }
    std::thread::scope(|s| {
        for (pod, _) in &pods {
            let cri = cri.clone();
            s.spawn(move || {
                if let Err(e) = cri.stop_and_remove_pod(pod) {
                    eprintln!("stop/remove {pod}: {e}");
                }
            });
        }
    });
    let clean = cri::wait_nothing_left(&c, &netns_before);
    assert!(
        failures.is_empty(),
        "pods failed: {failures:#?}\n{}",
        c.log_tail(80)
    );
    clean.unwrap();
}

/// RunPodSandbox with `pod` must fail with a message containing every `needles`, leaving
/// nothing behind.
fn refused(c: &Containerd, cri: &Cri, pod: &PodSandboxConfig, needles: &[&str]) {
    let netns_before = cri::netns_names();
    match cri.run_pod(pod, HUSK) {
        Ok(id) => {
            let _ = cri.stop_and_remove_pod(&id);
            panic!("RunPodSandbox accepted a pod it should refuse ({needles:?})");
        }
        Err(e) => {
            let msg = e.to_string();
            eprintln!("cri_bad_input: refused as expected: {msg}");
            for n in needles {
                assert!(msg.contains(n), "the error does not name {n:?}: {msg}");
            }
        }
    }
    cri::wait_nothing_left(c, &netns_before).unwrap();
}

#[test]
#[ignore = "end-to-end: needs hardware KVM and husk's artifacts (make e2e)"]
fn cri_bad_input_is_refused_without_leaks() {
    let settings = husk_settings();
    let (c, cri) = start(Some(&settings));
    let logs = c.base().join("pods/bad");
    std::fs::create_dir_all(&logs).unwrap();

    let mut pod = pod_config("bad-vcpus", &logs);
    pod.annotations
        .insert("io.husk.vcpus".into(), "lots".into());
    refused(&c, &cri, &pod, &["io.husk.vcpus", "lots"]);

    let mut pod = pod_config("bad-memory", &logs);
    pod.annotations
        .insert("io.husk.memory".into(), "100000000".into());
    refused(&c, &cri, &pod, &["memory"]);

    // The pod's declared resources (kubelet's sum of its containers' limits) beyond the host.
    let mut pod = pod_config("bad-limit", &logs);
    if let Some(l) = pod.linux.as_mut() {
        l.resources = Some(LinuxContainerResources {
            memory_limit_in_bytes: 1 << 50,
            ..Default::default()
        });
    }
    refused(&c, &cri, &pod, &["io.kubernetes.cri.sandbox-memory"]);

    // A pod that asks for one of the node's namespaces, which a VM cannot give.
    for (name, mode, needle) in [
        (
            "host-net",
            [NamespaceMode::Node, NamespaceMode::Pod, NamespaceMode::Pod],
            "hostNetwork",
        ),
        (
            "host-ipc",
            [NamespaceMode::Pod, NamespaceMode::Node, NamespaceMode::Pod],
            "hostIPC",
        ),
        (
            "host-pid",
            [NamespaceMode::Pod, NamespaceMode::Pod, NamespaceMode::Node],
            "hostPID",
        ),
    ] {
        let mut pod = pod_config(name, &logs);
        pod.linux.as_mut().unwrap().security_context = Some(LinuxSandboxSecurityContext {
            namespace_options: Some(NamespaceOption {
                network: mode[0] as i32,
                ipc: mode[1] as i32,
                pid: mode[2] as i32,
                ..Default::default()
            }),
            ..Default::default()
        });
        refused(&c, &cri, &pod, &[needle, "runc"]);
    }

    let mut missing = settings.clone();
    missing.artifacts.kernel = c.base().join("no-such-vmlinux");
    c.write_husk_config(&missing).unwrap();
    refused(
        &c,
        &cri,
        &pod_config("bad-kernel", &logs),
        &["no-such-vmlinux"],
    );
    c.write_husk_config(&settings).unwrap();

    // The same containerd still runs a good pod afterwards.
    let good = pod_config("good", &logs);
    let netns_before = cri::netns_names();
    let id = cri
        .run_pod(&good, HUSK)
        .unwrap_or_else(|e| panic!("a good pod after bad ones: {e}\n{}", c.log_tail(40)));
    cri.stop_and_remove_pod(&id).unwrap();
    cri::wait_nothing_left(&c, &netns_before).unwrap();
}

//! The one-pod scenario, the same under `runc` and `husk`: each step takes the running pod.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use husk_tests::containerd::{processes_with, shim_socket, Containerd};
use husk_tests::cri::{
    self, container_config, eventually, exited, husk_settings, pod_config, running, start,
    wait_container, with_memory_limit, Cri,
};
use k8s_cri::v1::{ContainerConfig, LinuxContainerResources, PodSandboxConfig};

use crate::volumes::{propagation, Volumes};
use crate::{HUSK, T};

/// A running pod and what its steps need.
pub struct Pod<'a> {
    pub c: &'a Containerd,
    pub cri: &'a Cri,
    pub handler: &'a str,
    pub id: String,
    pub cfg: PodSandboxConfig,
}

impl Pod<'_> {
    /// Creates and starts a container of `cfg` in the pod; panics naming `what` and containerd's
    /// log tail.
    pub fn start(&self, cfg: &ContainerConfig, what: &str) -> String {
        self.cri
            .create_and_start(&self.id, &self.cfg, cfg)
            .unwrap_or_else(|e| {
                let log = self.c.log_tail(60);
                panic!("[{}] container {what}: {e}\n{log}", self.handler)
            })
    }
}

/// ExecSync, asserting it worked; returns stdout.
pub fn sh(cri: &Cri, id: &str, script: &str) -> String {
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

/// The whole scenario under `handler`. Under husk the pod is restored from a VM template
/// (issue 17: the product's default, `templates = true`), made ahead of time with
/// `containerd-shim-husk-v2 template build --nics 1`: every step runs on a restored guest, and
/// its NIC has the pod's MAC, not the template's. (Cold boots run the CRI pods of the other
/// suites: the ten pods here, sandbox_api, cri_security, pod_net.)
pub fn run(handler: &str) {
    let (c, cri) = if handler == HUSK {
        cri::start_restoring(&husk_settings(), "cri_pod[husk]")
    } else {
        start(None)
    };
    // A step that fails because the pod's VM died of the nested test host's known fault
    // says so on its first line, for the e2e rule.
    c.naming_guest_loss(|| {
        let netns_before = cri::netns_names();
        let log_from = c.log_len();
        let base = c.base().to_path_buf();
        let logs = base.join("pods/web");
        std::fs::create_dir_all(&logs).unwrap();
        let volumes = Volumes::new(&base);

        let mut cfg = pod_config("web", &logs);
        // A pod network sysctl (kubelet passes the pod's safe sysctls in the sandbox config).
        cfg.linux
            .as_mut()
            .unwrap()
            .sysctls
            .insert("net.ipv4.ip_local_port_range".into(), "20000 40000".into());
        // And an IPC one (also a Kubernetes safe sysctl): set in the sandbox container's IPC
        // namespace (under husk by its anchor), which both containers join.
        cfg.linux
            .as_mut()
            .unwrap()
            .sysctls
            .insert("kernel.shm_rmid_forced".into(), "1".into());
        let id = cri
            .run_pod(&cfg, handler)
            .unwrap_or_else(|e| panic!("RunPodSandbox ({handler}): {e}\n{}", c.log_tail(60)));
        eprintln!("cri_pod[{handler}]: pod {id}");
        if handler == HUSK {
            let log = c.log_since(log_from);
            assert!(
                log.contains("restored from a template"),
                "the pod restored the template:\n{}",
                c.log_tail(60)
            );
            // Its sandbox container is the agent's pod anchor, not a runner's /pause.
            assert!(
                log.contains("held by an anchor"),
                "the sandbox container is held by an anchor:\n{}",
                c.log_tail(60)
            );
        }
        let netns = cri::netns_names()
            .into_iter()
            .find(|n| !netns_before.contains(n))
            .expect("CRI made the pod's network namespace");
        let pod = Pod {
            c: &c,
            cri: &cri,
            handler,
            id,
            cfg,
        };

        let mut a_cfg = container_config(
            "a",
            &[
                "sh",
                "-c",
                "echo started-a; echo err-a >&2; exec sleep 3600",
            ],
        );
        a_cfg.mounts = volumes.mounts();
        let a = pod.start(&a_cfg, "a");
        let b = pod.start(&container_config("b", &["sleep", "3600"]), "b");
        for id in [&a, &b] {
            wait_container(&cri, id, T, running).unwrap();
        }
        one_kernel(&pod, &a, &b);
        own_mac(&pod, &a, &netns);
        exec_and_logs(&pod, &a, &logs.join("a.log"));
        volumes.check(&pod, &a);
        // Mount propagation: hostPath volumes with HostToContainer (rslave) and Bidirectional
        // (rshared) propagation start, and a mount the host makes below the volume afterwards
        // appears in the container.
        let (prop, prop_mounts) = propagation(&pod, &base.join("vol/prop"));
        cri_files(&pod, &a);
        resources(&pod, &a, &b);
        let hog = out_of_memory(&pod);
        let (web, net_failure) = server(&pod);
        crate::portforward::check(&pod);
        let mesh = crate::netfilter::check(&pod);
        missing_executable(&pod, &b);

        // Stop and remove: nothing of the pod is left.
        cri.stop_and_remove_pod(&pod.id)
            .unwrap_or_else(|e| panic!("stop/remove pod: {e}\n{}", c.log_tail(60)));
        let ids = [
            pod.id.as_str(),
            a.as_str(),
            b.as_str(),
            hog.as_str(),
            web.as_str(),
            prop.as_str(),
            mesh.as_str(),
        ];
        drop(prop_mounts);
        c.assert_clean(&ids);
        assert!(
            !shim_socket(&c.socket(), cri::NAMESPACE, &pod.id).exists(),
            "the pod's shim socket is left"
        );
        cri::wait_nothing_left(&c, &netns_before).unwrap();
        if let Some(f) = net_failure {
            c.save_log(&format!("cri_pod_{handler}"));
            panic!("[{handler}] the pod's server did not answer over the CNI bridge: {f}");
        }
    });
}

/// Both containers run in one kernel: under husk one VM (one husk-vmm, one boot id that is
/// not the test host's), under runc the host's. The pod's network and IPC sysctls hold in both.
fn one_kernel(pod: &Pod, a: &str, b: &str) {
    let (c, cri, handler) = (pod.c, pod.cri, pod.handler);
    let host_boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    let boot_a = sh(cri, a, "cat /proc/sys/kernel/random/boot_id");
    let boot_b = sh(cri, b, "cat /proc/sys/kernel/random/boot_id");
    assert_eq!(boot_a, boot_b, "both containers run in one kernel");
    if handler == HUSK {
        assert_ne!(
            boot_a, host_boot,
            "husk's containers run in their own kernel"
        );
        let vmms = processes_with(&format!("{}/", c.husk_state.display()));
        let vmms: Vec<_> = vmms.iter().filter(|(_, p)| p.contains("vm.json")).collect();
        assert_eq!(vmms.len(), 1, "one husk-vmm for the pod: {vmms:?}");
        assert!(
            vmms[0].1.contains(&format!("{}/vm.json", pod.id)),
            "{vmms:?}"
        );
    } else {
        assert_eq!(boot_a, host_boot, "runc's containers share the host kernel");
    }
    for id in [a, b] {
        assert_eq!(
            sh(cri, id, "cat /proc/sys/net/ipv4/ip_local_port_range"),
            "20000\t40000\n",
            "[{handler}] the pod's sysctl in {id}"
        );
        assert_eq!(
            sh(cri, id, "cat /proc/sys/kernel/shm_rmid_forced"),
            "1\n",
            "[{handler}] the pod's IPC sysctl in {id}"
        );
    }
}

/// The pod's eth0 has the MAC CNI gave the pod's interface (the veth in its network
/// namespace); under husk, restored from a template, it is no longer the template's.
fn own_mac(pod: &Pod, a: &str, netns: &str) {
    let inside = sh(pod.cri, a, "cat /sys/class/net/eth0/address");
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", netns, "cat", "/sys/class/net/eth0/address"])
        .output()
        .unwrap();
    let cni = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success() && !cni.is_empty(), "{out:?}");
    assert_eq!(inside, cni, "[{}] the pod's MAC is CNI's", pod.handler);
    assert!(
        !inside.starts_with("02:68:75:73:6b:"),
        "a template's MAC: {inside}"
    );
}

/// ExecSync's stdout, stderr and exit code; the CRI log file (LogDirectory/LogPath) carries
/// both of the container's streams in CRI's format.
fn exec_and_logs(pod: &Pod, a: &str, log: &std::path::Path) {
    let r = pod
        .cri
        .exec_sync(a, &["sh", "-c", "echo out; echo err >&2; exit 3"], 60)
        .unwrap();
    assert_eq!(
        (r.stdout.as_slice(), r.stderr.as_slice(), r.exit_code),
        (&b"out\n"[..], &b"err\n"[..], 3)
    );
    assert!(
        eventually(Duration::from_secs(60), || {
            let t = std::fs::read_to_string(log).unwrap_or_default();
            t.contains(" stdout F started-a") && t.contains(" stderr F err-a")
        }),
        "{}: {:?}",
        log.display(),
        std::fs::read_to_string(log)
    );
}

/// CRI's /etc/hosts (a copy of the host's), resolv.conf (from the pod's DNS config), hostname.
fn cri_files(pod: &Pod, a: &str) {
    let host_hosts = std::fs::read_to_string("/etc/hosts").unwrap();
    assert_eq!(sh(pod.cri, a, "cat /etc/hosts"), host_hosts);
    let resolv = sh(pod.cri, a, "cat /etc/resolv.conf");
    assert!(
        resolv.contains(&format!("nameserver {}", cri::DNS_SERVER))
            && resolv.contains(&format!("search {}", cri::DNS_SEARCH)),
        "{resolv:?}"
    );
    assert_eq!(sh(pod.cri, a, "hostname"), "web\n");
}

/// UpdateContainerResources reaches the container's cgroup; ContainerStats has a working set.
fn resources(pod: &Pod, a: &str, b: &str) {
    let mem_max = "p=$(sed -n 's/^0:://p' /proc/self/cgroup); cat /sys/fs/cgroup$p/memory.max";
    let limit: i64 = 96 << 20;
    pod.cri
        .update_resources(
            b,
            LinuxContainerResources {
                memory_limit_in_bytes: limit,
                ..Default::default()
            },
        )
        .unwrap_or_else(|e| panic!("UpdateContainerResources: {e}\n{}", pod.c.log_tail(40)));
    assert_eq!(sh(pod.cri, b, mem_max).trim(), limit.to_string());

    let stats = pod.cri.stats(a).unwrap();
    let ws = stats
        .memory
        .as_ref()
        .and_then(|m| m.working_set_bytes.as_ref())
        .map(|v| v.value)
        .unwrap_or(0);
    assert!(ws > 0, "no memory working set in {stats:?}");
}

/// A container over its memory limit is OOM-killed, and CRI says so. Returns its id.
fn out_of_memory(pod: &Pod) -> String {
    let hog = pod.start(
        &with_memory_limit(
            container_config(
                "hog",
                &["dd", "if=/dev/zero", "of=/dev/null", "bs=128M", "count=1"],
            ),
            32 << 20,
        ),
        "hog",
    );
    let st = wait_container(pod.cri, &hog, T, exited).unwrap();
    assert_eq!(
        (st.reason.as_str(), st.exit_code),
        ("OOMKilled", 137),
        "{st:?}"
    );
    hog
}

/// A server in the pod answers a client on the test host over the CNI bridge (and a second one
/// listens on `[::1]:8081` alone, for [`crate::portforward`]). Returns its id
/// and, when it never answered, what the client last saw (the caller fails after cleaning up).
fn server(pod: &Pod) -> (String, Option<String>) {
    let web = pod.start(
        &container_config(
            "srv",
            &[
                "sh",
                "-c",
                "mkdir -p /www && echo hello-from-pod > /www/index.html && \
                 httpd -p [::1]:8081 -h /www && exec httpd -f -p 8080 -h /www",
            ],
        ),
        "srv",
    );
    wait_container(pod.cri, &web, T, running).unwrap();
    let ip = pod
        .cri
        .pod_status(&pod.id)
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
    (
        web,
        (!net_ok).then(|| format!("pod ip {ip:?}: last answer {last:?}")),
    )
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

/// A command that does not exist fails at once, naming it: a container's and an exec's (the
/// times are printed next to runc's, from the same run).
fn missing_executable(pod: &Pod, b: &str) {
    let handler = pod.handler;
    let t0 = Instant::now();
    let e = pod
        .cri
        .create_and_start(
            &pod.id,
            &pod.cfg,
            &container_config("noexec", &["/no/such/program"]),
        )
        .unwrap_err();
    eprintln!(
        "cri_pod[{handler}]: a missing executable failed after {:?}: {e}",
        t0.elapsed()
    );
    assert!(e.to_string().contains("/no/such/program"), "{e}");
    let t0 = Instant::now();
    let r = pod.cri.exec_sync(b, &["/no/such/program"], 60);
    eprintln!(
        "cri_pod[{handler}]: an exec of a missing executable ended after {:?}: {r:?}",
        t0.elapsed()
    );
    match r {
        Ok(r) => assert_ne!(r.exit_code, 0, "{r:?}"),
        Err(e) => assert!(e.to_string().contains("/no/such/program"), "{e}"),
    }
}

//! A hostile guest against the host, through CRI: a privileged container in a husk pod plays
//! the attacker (it mounts the pod's virtio-fs share itself, as code that owns the guest
//! kernel can). A canary directory on the host beside the sandbox state must be byte-identical
//! afterwards, and nothing may be left behind. Each test names what it attacks.
//!
//! Garbage in the virtqueues is written into the guest's RAM from the host, through husk-vmm's
//! `/proc/<pid>/mem`, at the rings the `queues` control request names: the guest kernel has no
//! `/dev/mem`, and to the device the bytes are the guest's either way.
//!
//! Filling the host's disk: the share's top is read-only to the guest (a write there gets
//! EROFS, covered below), and with `writable_limit_mib` the containers' root file systems write
//! to a file system of that size (`a_container_filling_its_root_file_system_...`).
//! End-to-end tests (`#[ignore]`d): they run in the nested test host.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use husk_tests::containerd::{processes_with, Containerd, HuskSettings};
use husk_tests::cri::{self, container_config, exited, pod_config, running, wait_container, Cri};
use husk_tests::oci_image;
use k8s_cri::v1::PodSandboxConfig;

const T: Duration = Duration::from_secs(300);
const HOSTILE_REF: &str = "localhost/hostile:test";
/// Where the attacker mounts the pod's share.
const SHARE: &str = "/mnt/share";

/// A CRI containerd with a husk pod whose privileged `attacker` container has the share
/// mounted, and a canary directory on the host.
struct Attack {
    c: Containerd,
    cri: Cri,
    pod: String,
    pod_cfg: PodSandboxConfig,
    attacker: String,
    canary: PathBuf,
    canary_before: BTreeMap<String, String>,
    netns_before: Vec<String>,
}

/// Every entry below `dir`: relative path -> kind and content (symlinks are never followed).
fn snapshot(dir: &Path) -> BTreeMap<String, String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            let meta = std::fs::symlink_metadata(&p).unwrap();
            let what = if meta.is_dir() {
                walk(root, &p, out);
                "dir".to_string()
            } else if meta.file_type().is_symlink() {
                format!("link {:?}", std::fs::read_link(&p).unwrap())
            } else {
                format!("file {:?}", std::fs::read(&p).unwrap())
            };
            out.insert(rel, what);
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

fn hostile_image(c: &Containerd) {
    let tool = std::env::var_os("HUSK_TEST_INIT")
        .map(PathBuf::from)
        .expect(
            "HUSK_TEST_INIT (the static husk-test-init, the attacker's tool): run with make e2e",
        );
    let tool = std::fs::read(&tool).unwrap_or_else(|e| panic!("{}: {e}", tool.display()));
    let layer = oci_image::busybox_layer_with(
        &oci_image::host_busybox().unwrap(),
        &[("usr/bin/husk-hostile", &tool, 0o755)],
    )
    .unwrap();
    let out = c.base().join("img/hostile.tar");
    let info = oci_image::write_image(&out, HOSTILE_REF, &layer, &["/bin/sh"]).unwrap();
    let r = c.ctr(
        &["image", "import", &info.path.display().to_string()],
        None,
        Duration::from_secs(120),
    );
    assert_eq!(r.code, 0, "importing the hostile image: {r}");
}

impl Attack {
    fn start(name: &str) -> Attack {
        Attack::start_with(name, &cri::husk_settings())
    }

    fn start_with(name: &str, settings: &HuskSettings) -> Attack {
        let (c, cri) = cri::start(Some(settings));
        hostile_image(&c);
        let netns_before = cri::netns_names();
        let canary = c.husk_state.with_file_name("canary");
        std::fs::create_dir_all(canary.join("etc")).unwrap();
        std::fs::write(canary.join("etc/passwd"), "root:x:0:0:canary\n").unwrap();
        std::fs::write(canary.join("precious"), "do not touch\n").unwrap();
        let canary_before = snapshot(&canary);
        let logs = c.base().join(format!("pods/{name}"));
        std::fs::create_dir_all(&logs).unwrap();
        let pod_cfg = cri::privileged_pod(pod_config(name, &logs));
        let pod = cri
            .run_pod(&pod_cfg, "husk")
            .unwrap_or_else(|e| panic!("RunPodSandbox: {e}\n{}", c.log_tail(60)));
        let script =
            format!("mkdir -p {SHARE} && mount -t virtiofs husk {SHARE} && exec sleep 3600");
        let mut cfg =
            cri::privileged_container(container_config("attacker", &["sh", "-c", &script]));
        cfg.image.as_mut().unwrap().image = HOSTILE_REF.into();
        let attacker = cri
            .create_and_start(&pod, &pod_cfg, &cfg)
            .unwrap_or_else(|e| panic!("the attacker container: {e}\n{}", c.log_tail(60)));
        wait_container(&cri, &attacker, T, running).unwrap();
        let a = Attack {
            c,
            cri,
            pod,
            pod_cfg,
            attacker,
            canary,
            canary_before,
            netns_before,
        };
        a.wait_for_share();
        a
    }

    fn wait_for_share(&self) {
        for _ in 0..100 {
            if self
                .sh_status(&format!("grep -q ' {SHARE} ' /proc/mounts"))
                .0
                == 0
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        panic!("the attacker never mounted the share");
    }

    /// Runs `script` in the attacker; (exit code, stdout + stderr).
    fn sh_status(&self, script: &str) -> (i32, String) {
        let r = self
            .cri
            .exec_sync(&self.attacker, &["sh", "-c", script], 300)
            .unwrap_or_else(|e| panic!("exec {script:?} in the attacker: {e}"));
        let mut out = String::from_utf8_lossy(&r.stdout).into_owned();
        out.push_str(&String::from_utf8_lossy(&r.stderr));
        (r.exit_code, out)
    }

    /// A busybox container in the pod, started and running.
    fn container(&self, name: &str) -> String {
        let id = self
            .cri
            .create_and_start(
                &self.pod,
                &self.pod_cfg,
                &container_config(name, &["sleep", "3600"]),
            )
            .unwrap_or_else(|e| panic!("container {name}: {e}\n{}", self.c.log_tail(60)));
        wait_container(&self.cri, &id, T, running).unwrap();
        id
    }

    fn remove(&self, id: &str) {
        self.cri.stop_container(id, 0).unwrap();
        self.cri
            .remove_container(id)
            .unwrap_or_else(|e| panic!("removing {id}: {e}\n{}", self.c.log_tail(40)));
    }

    /// Runs `steps` against the attack, then [`Attack::finish`]. A step that fails because the
    /// pod's VM was lost to the nested test host's known fault (a triple fault, or a guest stuck
    /// in the fetch fault until its health check failed) says so on its first line
    /// ([`Containerd::naming_guest_loss`]), so the e2e rule can tell it from a product failure.
    fn run(self, steps: impl FnOnce(&Attack)) {
        self.c.naming_guest_loss(|| steps(&self));
        self.finish();
    }

    /// The canary is as it was, the pod is removed, and nothing is left.
    fn finish(self) {
        assert_eq!(
            snapshot(&self.canary),
            self.canary_before,
            "the canary beside the sandbox state changed"
        );
        self.cri.stop_and_remove_pod(&self.pod).unwrap();
        cri::wait_nothing_left(&self.c, &self.netns_before).unwrap();
        assert_eq!(snapshot(&self.canary), self.canary_before);
    }
}

#[test]
#[ignore = "end-to-end: needs hardware KVM and husk's artifacts (make e2e)"]
fn share_symlink_swaps_while_the_shim_deletes_a_container_never_reach_the_host() {
    Attack::start("swap").run(|a| {
        let canary = a.canary.display().to_string();
        // Swap the victim's directories in the share for links to the canary, in a loop, while the
        // shim deletes the victim: its rootfs contents (writable) and the share's own entries
        // (read-only, so those attempts fail).
        let swap_loop = |victim: &str| {
            let d = format!("{SHARE}/{victim}");
            format!(
                "while :; do \
                   rm -rf {d}/rootfs/etc {d}/rootfs/tmp; ln -sfn {canary} {d}/rootfs/etc; \
                   ln -sfn {canary}/etc {d}/rootfs/tmp; rm -rf {d}/rootfs {d}/mounts {d}; \
                   ln -sfn {canary} {d}; ln -sfn {canary} {d}/rootfs; \
                 done >/dev/null 2>&1 & echo $! > /tmp/swapper"
            )
        };
        for round in 0..20 {
            let victim = a.container(&format!("victim-{round}"));
            let (code, out) = a.sh_status(&swap_loop(&victim));
            assert_eq!(code, 0, "round {round}: starting the swap loop: {out}");
            std::thread::sleep(Duration::from_millis(200));
            a.remove(&victim);
            let (code, out) = a.sh_status("kill $(cat /tmp/swapper)");
            assert_eq!(
                code,
                0,
                "round {round}: stopping the swap loop: {out}\n{}",
                a.c.log_tail(40)
            );
            let left: Vec<String> = husk_tests::containerd::mounts_below(&a.c.husk_state)
                .into_iter()
                .filter(|m| m.contains(&victim))
                .collect();
            assert!(
                left.is_empty(),
                "round {round}: mounts of {victim} left: {left:?}"
            );
            assert_eq!(
                snapshot(&a.canary),
                a.canary_before,
                "round {round}: the canary changed"
            );
        }
    });
}

/// Free bytes of the file system holding `dir`.
fn free_bytes(dir: &Path) -> u64 {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).unwrap();
    // SAFETY: all-zero bytes are a valid `statvfs` (plain integers).
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is NUL-terminated and `st` is a writable statvfs.
    let rc = unsafe { libc::statvfs(path.as_ptr(), &mut st) };
    assert_eq!(rc, 0, "statvfs {}", dir.display());
    st.f_bavail * st.f_frsize
}

#[test]
#[ignore = "end-to-end: needs hardware KVM and husk's artifacts (make e2e)"]
fn a_container_filling_its_root_file_system_gets_enospc_and_the_host_keeps_its_space() {
    const LIMIT_MIB: u64 = 64;
    let mut s = cri::husk_settings();
    s.writable_limit_mib = LIMIT_MIB;
    Attack::start_with("fill", &s).run(|a| {
        let other = a.container("other");
        let writable = husk_tests::containerd::writable_dir(&a.c.husk_state);
        let before = free_bytes(&writable);
        // The privileged attacker writes three times the limit into its own root file system.
        let (code, out) = a.sh_status(&format!(
            "dd if=/dev/zero of=/fill bs=1M count={} conv=fsync; echo dd=$?; stat -c size=%s /fill",
            3 * LIMIT_MIB
        ));
        assert_eq!(code, 0, "{out}");
        assert!(out.contains("No space left on device"), "{out}");
        assert!(!out.contains("dd=0"), "dd must fail: {out}");
        let size: u64 = out
            .lines()
            .find_map(|l| l.strip_prefix("size="))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no size: {out}"));
        assert!(size <= LIMIT_MIB << 20, "{size} bytes written: {out}");
        let used = before.saturating_sub(free_bytes(&writable));
        assert!(
            used <= (LIMIT_MIB + 8) << 20,
            "the host lost {used} bytes for a {LIMIT_MIB} MiB limit"
        );
        // The limit is the pod's: another container finds it full too, a new one is refused
        // naming the setting, and the pod keeps working.
        let refused = a.cri.create_and_start(
            &a.pod,
            &a.pod_cfg,
            &container_config("late", &["sleep", "3600"]),
        );
        let e = refused.expect_err("a container created while the pod's writable layer is full");
        assert!(e.to_string().contains("writable_limit_mib"), "{e}");
        let r = a
            .cri
            .exec_sync(&other, &["sh", "-c", "echo x > /new; echo rc=$?"], 60)
            .unwrap();
        let out =
            String::from_utf8_lossy(&r.stdout).into_owned() + &String::from_utf8_lossy(&r.stderr);
        assert!(out.contains("No space left on device"), "{out}");
        // Deleting the filler gives the space back.
        assert_eq!(a.sh_status("rm /fill").0, 0);
        let r = a
            .cri
            .exec_sync(&other, &["sh", "-c", "echo x > /new && cat /new"], 60)
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&r.stdout).trim(), "x", "{r:?}");
        a.remove(&other);
    });
}

#[test]
#[ignore = "end-to-end: needs hardware KVM and husk's artifacts (make e2e)"]
fn guest_made_entries_where_the_next_container_goes_are_refused() {
    Attack::start("precreate").run(|a| {
        let canary = a.canary.display().to_string();
        // Whatever name the next container gets, the guest cannot put anything there first.
        for attempt in [
            format!("ln -s {canary} {SHARE}/next"),
            format!("mkdir {SHARE}/next"),
            format!("touch {SHARE}/next"),
            format!("mkdir {SHARE}/$(ls {SHARE} | head -n 1)/mounts-x"),
            format!("ln -s {canary} {SHARE}/$(ls {SHARE} | head -n 1)/rootfs-x"),
        ] {
            let (code, out) = a.sh_status(&attempt);
            assert_ne!(code, 0, "{attempt} succeeded: {out}");
            assert!(out.contains("Read-only file system"), "{attempt}: {out}");
        }
        let id = a.container("after");
        let (code, out) = a.sh_status(&format!("ls {SHARE}/{id}/rootfs/bin/sh"));
        assert_eq!(
            code, 0,
            "the new container's rootfs is where the shim put it: {out}"
        );
        a.remove(&id);
    });
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

#[test]
#[ignore = "end-to-end: needs hardware KVM and husk's artifacts (make e2e)"]
fn log_port_and_console_floods_cost_the_host_bounded_memory() {
    Attack::start("flood").run(|a| {
        let sock = a.c.socket().display().to_string();
        let shims: Vec<u32> = processes_with("containerd-shim-husk-v2")
            .into_iter()
            .filter(|(_, cmd)| cmd.contains(&sock))
            .map(|(pid, _)| pid)
            .collect();
        assert_eq!(shims.len(), 1, "one shim for the pod: {shims:?}");
        let before = rss_kib(shims[0]);
        // 1000 connections to the agent-log port, each with 1 MiB and no newline: the port took its
        // one connection (the agent's) at boot and is closed, so every one is refused.
        let (code, out) = a.sh_status("husk-hostile hostile vsock-flood 1026 1000 1048576");
        assert_eq!(code, 0, "{out}");
        assert!(
            out.contains("connected=0 refused=1000"),
            "a container reached the host's log port: {out}"
        );
        // A 64 KiB console line without a newline, straight into the serial port (the node in the
        // container's /dev, a tmpfs: the share refuses device nodes). 16 times the bound; every
        // byte is a port write, which the nested test host pays dearly for: 256 KiB once took the
        // test host's own kernel down (a stack overflow in its SVM path).
        let (code, out) = a.sh_status(
            "mknod /dev/hostile-tty c 4 64 && head -c 65536 /dev/zero | tr '\\0' x > /dev/hostile-tty && echo done",
        );
        assert_eq!(code, 0, "writing the console: {out}");
        let after = rss_kib(shims[0]);
        eprintln!("hostile_guest: shim RSS {before} KiB -> {after} KiB");
        assert!(
            after < before + 16 * 1024,
            "the shim grew by {} KiB under the floods",
            after.saturating_sub(before)
        );
        // The pod still works.
        let id = a.container("alive");
        let r = a.cri.exec_sync(&id, &["echo", "alive"], 60).unwrap();
        assert_eq!(r.stdout, b"alive\n");
        a.remove(&id);
    });
}

/// husk-vmm's pid for the pod.
fn vmm_pid(a: &Attack) -> u32 {
    let vmms: Vec<u32> = processes_with(&format!("{}/{}/vm.json", a.c.husk_state.display(), a.pod))
        .into_iter()
        .map(|(pid, _)| pid)
        .collect();
    assert_eq!(vmms.len(), 1, "one husk-vmm for the pod: {vmms:?}");
    vmms[0]
}

/// From a `queues` answer: the rings (desc, avail, used) and size of `device`'s queue `q`.
fn rings(queues: &str, device: &str, q: usize) -> Option<([u64; 3], u64)> {
    let part = queues
        .split('[')
        .find(|p| p.contains(&format!(" {device} status=")))?;
    let entry = part
        .split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("q{q}=")))?;
    let field = |name: &str| {
        entry
            .split(',')
            .find_map(|f| f.strip_prefix(&format!("{name}:")))
            .map(str::to_string)
    };
    let hex = |v: &str| u64::from_str_radix(v.trim_start_matches("0x"), 16).ok();
    let r: Vec<u64> = field("rings")?.split('/').filter_map(hex).collect();
    let size = field("size")?.trim_end_matches(']').parse().ok()?;
    Some(([*r.first()?, *r.get(1)?, *r.get(2)?], size))
}

/// The host address of guest physical 0: husk-vmm's anonymous mapping of exactly `bytes`.
fn guest_ram_base(pid: u32, bytes: u64) -> u64 {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let found: Vec<u64> = maps
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (range, perms) = (f.next()?, f.next()?);
            let (a, b) = range.split_once('-')?;
            let (a, b) = (
                u64::from_str_radix(a, 16).ok()?,
                u64::from_str_radix(b, 16).ok()?,
            );
            (perms.starts_with("rw") && b - a == bytes && f.nth(3).is_none()).then_some(a)
        })
        .collect();
    assert_eq!(
        found.len(),
        1,
        "one {bytes}-byte anonymous mapping in husk-vmm: {maps}"
    );
    found[0]
}

#[test]
#[ignore = "end-to-end: needs hardware KVM and husk's artifacts (make e2e)"]
fn garbage_in_the_virtqueues_ends_the_device_or_the_vm_never_husk_vmm() {
    use std::io::{Seek, SeekFrom, Write};
    let mut s = cri::husk_settings();
    s.liveness_timeout_secs = 20;
    Attack::start_with("garbage", &s).run(|a| {
        let pid = vmm_pid(a);
        // The VMM the garbage goes to runs every thread without privileges but the file server's.
        let threads =
            husk_tests::process::check_vmm_privileges(pid).unwrap_or_else(|e| panic!("{e}"));
        husk_tests::process::check_vmm_jail(pid).unwrap_or_else(|e| panic!("{e}"));
        eprintln!(
            "hostile_guest: husk-vmm {pid}: {} threads, privileges as documented",
            threads.len()
        );
        let ctl = a.c.husk_state.join(&a.pod).join("run/ctl");
        let queues = husk_tests::microvm::control(&ctl, "queues\n").unwrap();
        let base = guest_ram_base(pid, u64::from(s.memory_mib) << 20);
        let mut mem = std::fs::OpenOptions::new()
            .write(true)
            .open(format!("/proc/{pid}/mem"))
            .unwrap();
        let mut poke = |gpa: u64, bytes: &[u8]| {
            mem.seek(SeekFrom::Start(base + gpa)).unwrap();
            mem.write_all(bytes).unwrap();
        };
        // The receive queues, whose buffers the guest posted ahead (a queue the guest posts into
        // afresh for every request heals as it goes): every descriptor points outside RAM with a
        // huge length and chains to itself, and the available ring announces seven times the queue.
        for (device, q) in [("vsock", 0), ("net", 0)] {
            let ([desc, avail, _], size) =
                rings(&queues, device, q).unwrap_or_else(|| panic!("no {device} q{q} in {queues}"));
            for i in 0..size {
                let mut d = Vec::with_capacity(16);
                d.extend_from_slice(&0xdead_beef_0000u64.to_le_bytes());
                d.extend_from_slice(&u32::MAX.to_le_bytes());
                d.extend_from_slice(&3u16.to_le_bytes()); // NEXT | WRITE
                d.extend_from_slice(&(i as u16).to_le_bytes()); // itself
                poke(desc + 16 * i, &d);
                poke(avail + 4 + 2 * i, &(i as u16).to_le_bytes());
            }
            poke(avail + 2, &(size as u16).wrapping_mul(7).to_le_bytes());
        }
        eprintln!("hostile_guest: garbage written into vsock q0 and net q0 of husk-vmm {pid}");
        // Guest traffic makes the devices look: an exec goes over vsock, a file over virtio-fs.
        let _ = a
            .cri
            .exec_sync(&a.attacker, &["ls", &format!("{SHARE}/")], 20);
        let st = wait_container(&a.cri, &a.attacker, T, exited)
            .unwrap_or_else(|e| panic!("the pod's task never ended: {e}\n{}", a.c.log_tail(60)));
        assert_eq!(st.exit_code, 137, "{st:?}");
        let log = a.c.log_tail(2000);
        let end = log
            .lines()
            .find(|l| l.contains("the sandbox VM ended unexpectedly"))
            .unwrap_or_else(|| {
                panic!(
                    "the shim never reported the VM's end:\n{}",
                    a.c.log_tail(80)
                )
            });
        for crash in [
            "signal 4",
            "signal 6",
            "signal 7",
            "signal 8",
            "signal 11",
            "signal 31",
        ] {
            assert!(!end.contains(crash), "husk-vmm crashed: {end}");
        }
        eprintln!(
            "hostile_guest: {}",
            &end[end.find("the sandbox VM").unwrap_or(0)..]
                .chars()
                .take(300)
                .collect::<String>()
        );
    });
}

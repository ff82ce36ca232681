//! Container rootfs and OCI specs for tests: a busybox rootfs built from the host's static
//! `/bin/busybox` (Debian's busybox-static), and a spec shaped like `runc spec`'s default.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

/// Builds a busybox rootfs in `dir` (bin/busybox plus a symlink per applet, /etc/passwd) and
/// returns its path. `HUSK_BUSYBOX` overrides the busybox binary.
pub fn busybox_rootfs(dir: &Path) -> std::io::Result<PathBuf> {
    let busybox = std::env::var_os("HUSK_BUSYBOX")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/bin/busybox".into());
    let bytes = std::fs::read(&busybox)?;
    if husk_image::elf::has_interpreter(&bytes) {
        return Err(std::io::Error::other(format!(
            "{} is dynamically linked: install busybox-static",
            busybox.display()
        )));
    }
    let root = dir.join("rootfs");
    for d in ["bin", "proc", "sys", "dev", "tmp", "etc", "root", "run"] {
        std::fs::create_dir_all(root.join(d))?;
    }
    std::fs::copy(&busybox, root.join("bin/busybox"))?;
    let list = std::process::Command::new(&busybox)
        .arg("--list")
        .output()?;
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        if applet != "busybox" && !applet.is_empty() {
            let _ = std::os::unix::fs::symlink("busybox", root.join("bin").join(applet));
        }
    }
    std::fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
    )?;
    std::fs::write(root.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n")?;
    // Tells a test that a process runs in this rootfs (and not in some other busybox tree).
    std::fs::write(root.join("etc/husk-rootfs"), "husk-test-rootfs\n")?;
    Ok(root)
}

/// The capabilities `runc spec` grants.
pub const DEFAULT_CAPS: &[&str] = &["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"];

/// A process object (`args`, terminal) like `runc spec`'s.
pub fn process(args: &[&str], terminal: bool) -> Value {
    json!({
        "terminal": terminal,
        "user": {"uid": 0, "gid": 0},
        "args": args,
        "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "TERM=xterm"],
        "cwd": "/",
        "capabilities": {
            "bounding": DEFAULT_CAPS, "effective": DEFAULT_CAPS,
            "permitted": DEFAULT_CAPS, "ambient": DEFAULT_CAPS
        },
        "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
        "noNewPrivileges": true
    })
}

/// A spec like `runc spec`'s default for `rootfs` running `args` (read-only root, new
/// pid/ipc/uts/mount/network namespaces, the usual mounts, masked and read-only paths).
pub fn spec(rootfs: &Path, args: &[&str], terminal: bool) -> Value {
    json!({
        "ociVersion": "1.0.2",
        "process": process(args, terminal),
        "root": {"path": rootfs, "readonly": true},
        "hostname": "husk-test",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
             "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
             "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs",
             "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev"]}
        ],
        "linux": {
            "resources": {"devices": [{"allow": false, "access": "rwm"}]},
            "namespaces": [
                {"type": "pid"}, {"type": "network"}, {"type": "ipc"},
                {"type": "uts"}, {"type": "mount"}
            ],
            "maskedPaths": [
                "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
                "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware",
                "/proc/scsi"
            ],
            "readonlyPaths": [
                "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"
            ]
        }
    })
}

/// Writes `spec` as `<bundle>/config.json` (for `runc run`).
pub fn write_bundle(bundle: &Path, spec: &Value) -> std::io::Result<()> {
    std::fs::create_dir_all(bundle)?;
    std::fs::write(bundle.join("config.json"), serde_json::to_vec_pretty(spec)?)
}

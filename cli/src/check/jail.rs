//! Whether this kernel can jail husk-vmm (`hypervisor/src/jail`, `hypervisor/src/seccomp`):
//! the jail has no off switch, so a kernel without one of these fails every pod; this says so
//! before the first one.

use std::path::Path;

use super::{Line, Probe};

const C: &str = "husk-vmm jail";

/// The namespaces husk-vmm enters, with the kernel option behind each.
const NAMESPACES: [(&str, &str); 5] = [
    ("mnt", "mount namespaces"),
    ("net", "CONFIG_NET_NS"),
    ("ipc", "CONFIG_IPC_NS"),
    ("uts", "CONFIG_UTS_NS"),
    ("pid", "CONFIG_PID_NS"),
];

/// The seccomp actions husk-vmm's filters use.
const ACTIONS: [&str; 3] = ["kill_process", "allow", "log"];

pub fn check(p: &dyn Probe) -> Line {
    let mut missing = Vec::new();
    for (ns, option) in NAMESPACES {
        if p.open_read(&Path::new("/proc/self/ns").join(ns)).is_err() {
            missing.push(format!("{ns} namespaces ({option})"));
        }
    }
    match p.read_to_string(Path::new("/proc/sys/kernel/seccomp/actions_avail")) {
        Ok(avail) => {
            let have: Vec<&str> = avail.split_whitespace().collect();
            for action in ACTIONS.iter().filter(|a| !have.contains(a)) {
                missing.push(format!("the seccomp action {action}"));
            }
        }
        Err(_) => missing.push("seccomp filters (CONFIG_SECCOMP_FILTER)".into()),
    }
    if missing.is_empty() {
        Line::ok(
            C,
            "seccomp filters and mount, network, IPC, UTS and PID namespaces are available",
        )
    } else {
        Line::fail(
            C,
            format!(
                "this kernel lacks {}: husk-vmm cannot jail itself, so no pod can start",
                missing.join(", ")
            ),
            "run husk on a kernel with these options (any distribution kernel has them)",
        )
    }
}

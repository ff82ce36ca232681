//! Which cgroup hierarchy the pods' VMs go into (`husk_protocol::cgroup_layout`): v2, hybrid or legacy
//! v1, and whether the memory controller is there to account a VM to its pod.

use std::path::Path;

use husk_protocol::cgroup_layout::Hierarchy;

use super::{Line, Probe};

const C: &str = "cgroups";

pub fn check(p: &dyn Probe) -> Line {
    let mountinfo = p
        .read_to_string(Path::new("/proc/self/mountinfo"))
        .unwrap_or_default();
    let h = match Hierarchy::from_mountinfo(&mountinfo) {
        Ok(h) => h,
        Err(e) => {
            return Line::fail(
                C,
                format!("{e}: husk-vmm cannot be put in a pod's cgroup"),
                "mount cgroup2 at /sys/fs/cgroup (or the v1 controllers below it)",
            )
        }
    };
    match h.memory_root() {
        Some(_) => Line::ok(
            C,
            format!(
                "{}: husk-vmm runs in each pod's cgroup (linux.cgroupsPath), its memory \
                 charged to the pod",
                h.describe()
            ),
        ),
        None => Line::warn(
            C,
            format!(
                "{} without the memory controller: VMs are not charged to their pods",
                h.describe()
            ),
        ),
    }
}

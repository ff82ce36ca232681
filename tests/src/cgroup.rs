//! The host's cgroup v2 tree as the end-to-end tests see it (the test host mounts cgroup2 at
//! `/sys/fs/cgroup`): the pod cgroups kubelet would make, which cgroup a process is in, its
//! memory figures, and the pod cgroups husk left behind.

use std::path::{Path, PathBuf};

/// Where the tests' pods' cgroups go, as kubelet's cgroupfs driver names them.
pub const KUBEPODS: &str = "/kubepods";

/// The v2 hierarchy's root.
pub fn root() -> PathBuf {
    PathBuf::from("/sys/fs/cgroup")
}

/// The directory of cgroup `path` (`/kubepods/...`).
pub fn dir(path: &str) -> PathBuf {
    root().join(path.trim_start_matches('/'))
}

/// The cgroup v2 path of `pid` (`0::` line of `/proc/<pid>/cgroup`).
pub fn of(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("0::").map(str::to_string))
}

/// A pod cgroup made as kubelet makes one (the memory controller enabled down to it), with a
/// memory limit when `max_bytes` is set; removed on drop.
#[derive(Debug)]
pub struct PodParent {
    /// Its path (`/kubepods/...`), the pod's `cgroup_parent`.
    pub path: String,
}

impl PodParent {
    /// Makes `path` with `memory.max` = `max_bytes`.
    pub fn make(path: &str, max_bytes: Option<u64>) -> std::io::Result<PodParent> {
        let mut d = root();
        for part in Path::new(path.trim_start_matches('/')).components() {
            std::fs::write(d.join("cgroup.subtree_control"), "+memory +pids")?;
            d.push(part);
            if !d.exists() {
                std::fs::create_dir(&d)?;
            }
        }
        if let Some(max) = max_bytes {
            std::fs::write(d.join("memory.max"), max.to_string())?;
        }
        Ok(PodParent {
            path: path.to_string(),
        })
    }
}

impl Drop for PodParent {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(dir(&self.path));
    }
}

/// A number from a cgroup file (`memory.current`, `memory.peak`), or a `key value` line of one
/// (`memory.events`' `oom_kill`).
pub fn number(cgroup: &str, file: &str, key: Option<&str>) -> Option<u64> {
    let text = std::fs::read_to_string(dir(cgroup).join(file)).ok()?;
    match key {
        None => text.trim().parse().ok(),
        Some(k) => text.lines().find_map(|l| {
            let (name, v) = l.split_once(' ')?;
            (name == k).then(|| v.trim().parse().ok()).flatten()
        }),
    }
}

/// Cgroups below [`KUBEPODS`] named like a sandbox or container id (64 hex digits): what a
/// pod's teardown must have removed.
pub fn leftover_pod_cgroups() -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![dir(KUBEPODS)];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            if !e.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let name = e.file_name().to_string_lossy().into_owned();
            if name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit()) {
                found.push(e.path().display().to_string());
            }
            stack.push(e.path());
        }
    }
    found
}

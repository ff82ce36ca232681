//! The pod's cgroup: husk-vmm lives in the cgroup the sandbox's spec names
//! (`linux.cgroupsPath`), so the node accounts the VM's memory and CPU to the pod and the
//! pod's limits (kubelet's pod cgroup, its parent) bound it, as Kata's `sandbox_cgroup_only`.
//!
//! - The shim makes the cgroup (and any missing parent) in every hierarchy ([`hierarchy`]),
//!   enabling the memory, cpu and pids controllers down a v2 path and giving a new v1 cpuset
//!   its parent's CPUs and memory nodes.
//! - husk-vmm starts in it: `clone3(CLONE_INTO_CGROUP)` on cgroup v2; on v1 the child writes
//!   itself into each hierarchy's `cgroup.procs` before it executes ([`Join`]).
//! - The VM is sized to fit the pod's memory limit with room for husk-vmm's own memory
//!   ([`fit_memory`]), so a guest that uses all of its RAM meets the guest's OOM killer, never
//!   the host's.
//! - What husk made is recorded in `<state>/cgroup` and removed when the VM is gone, by the
//!   shim or by the `delete` action after a shim crash.
//!
//! The shim itself stays where containerd started it: it must outlive any OOM in the pod to
//! report the containers' exits, and the pod's OOM killer must never be able to pick it.

pub mod path;

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub use husk_protocol::cgroup_layout::{self as hierarchy, Hierarchy};

/// The controllers enabled down a v2 path (when the parent offers them).
const V2_CONTROLLERS: [&str; 3] = ["cpu", "memory", "pids"];
/// The name of the record in a sandbox's state directory.
pub const RECORD: &str = "cgroup";

/// A cgroup operation failed.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// No cgroup file system.
    #[error(transparent)]
    NoCgroups(#[from] hierarchy::NoCgroups),
    /// A file or directory operation failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// On which path.
        path: PathBuf,
        /// Why it failed.
        #[source]
        source: io::Error,
    },
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> CgroupError {
    let path = path.to_path_buf();
    move |source| CgroupError::Io { what, path, source }
}

/// The pod's cgroup, made in every hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodCgroup {
    /// One leaf per hierarchy, the v2 one first when there is one: what husk-vmm joins.
    leaves: Vec<PathBuf>,
    /// The directories husk made (absolute), leaves included. Only these are removed: a leaf
    /// that already existed is someone else's (`ctr run --cgroup` naming a live cgroup), joined
    /// but never swept or removed.
    made: Vec<PathBuf>,
    /// Whether the host is v2 only (joined with `CLONE_INTO_CGROUP`).
    unified: bool,
    /// The leaf in the hierarchy with the memory controller, and whether it is v2.
    memory: Option<(PathBuf, bool)>,
}

/// How husk-vmm's child joins the pod's cgroup before it executes.
#[derive(Debug)]
pub enum Join {
    /// `clone3(CLONE_INTO_CGROUP)` with this directory (cgroup v2).
    IntoCgroup(OwnedFd),
    /// Write `0` (itself) into each of these `cgroup.procs` (cgroup v1 and hybrid).
    Procs(Vec<OwnedFd>),
}

impl PodCgroup {
    /// Makes `rel` (from [`path::parse`]) in every hierarchy of `h`.
    pub fn create(h: &Hierarchy, rel: &Path) -> Result<PodCgroup, CgroupError> {
        let mut made = Vec::new();
        let mut leaves = Vec::new();
        for (i, root) in h.roots().into_iter().enumerate() {
            let v2 = i == 0 && !matches!(h, Hierarchy::V1 { unified: None, .. });
            let mut dir = root.clone();
            for part in rel.components() {
                if v2 {
                    // A parent that holds processes itself cannot hand controllers down (v2's
                    // no-internal-processes rule); the pod's memory is then charged, and
                    // limited, at the nearest parent that has them.
                    if let Err(e) = enable_controllers(&dir) {
                        tracing::warn!("{e}: the pod's cgroup accounts at a parent");
                    }
                }
                let parent = dir.clone();
                dir.push(part);
                match std::fs::create_dir(&dir) {
                    Ok(()) => {
                        made.push(dir.clone());
                        inherit_cpuset(&parent, &dir)?;
                    }
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(io_err("making the cgroup", &dir)(e)),
                }
            }
            leaves.push(dir);
        }
        let memory = h.memory_root().map(|(root, v2)| (root.join(rel), v2));
        Ok(PodCgroup {
            leaves,
            made,
            unified: matches!(h, Hierarchy::Unified(_)),
            memory,
        })
    }

    /// The leaves (one per hierarchy).
    pub fn leaves(&self) -> &[PathBuf] {
        &self.leaves
    }

    /// Opens what the child needs to join.
    pub fn join(&self) -> Result<Join, CgroupError> {
        if self.unified {
            let dir = &self.leaves[0];
            let fd = open(dir, libc::O_PATH | libc::O_DIRECTORY).map_err(io_err("opening", dir))?;
            return Ok(Join::IntoCgroup(fd));
        }
        let mut fds = Vec::new();
        for leaf in &self.leaves {
            let procs = leaf.join("cgroup.procs");
            fds.push(open(&procs, libc::O_WRONLY).map_err(io_err("opening", &procs))?);
        }
        Ok(Join::Procs(fds))
    }

    /// The tightest memory limit on the pod's cgroup and its parents, in bytes; `None`
    /// without one (or without a memory controller).
    pub fn memory_limit(&self) -> Option<u64> {
        let (leaf, v2) = self.memory.as_ref()?;
        let file = if *v2 {
            "memory.max"
        } else {
            "memory.limit_in_bytes"
        };
        leaf.ancestors()
            .filter_map(|d| std::fs::read_to_string(d.join(file)).ok())
            .filter_map(|v| v.trim().parse::<u64>().ok())
            // v1 writes "no limit" as a page-rounded i64::MAX.
            .filter(|b| *b < (1 << 62))
            .min()
    }

    /// Writes what husk made to `file`, for a `delete` after a shim crash.
    pub fn record(&self, file: &Path) -> Result<(), CgroupError> {
        let mut text = String::new();
        for m in &self.made {
            let kind = if self.leaves.contains(m) {
                "leaf"
            } else {
                "made"
            };
            text.push_str(&format!("{kind} {}\n", m.display()));
        }
        std::fs::write(file, text).map_err(io_err("writing", file))
    }

    /// What [`PodCgroup::record`] wrote; `None` when there is no record. Relative paths and
    /// paths with `..` are ignored.
    pub fn recorded(file: &Path) -> Option<PodCgroup> {
        let text = std::fs::read_to_string(file).ok()?;
        let mut cg = PodCgroup {
            leaves: Vec::new(),
            made: Vec::new(),
            unified: false,
            memory: None,
        };
        for line in text.lines() {
            let Some((kind, p)) = line.split_once(' ') else {
                continue;
            };
            let p = PathBuf::from(p);
            if !p.is_absolute() || p.components().any(|c| c.as_os_str() == "..") {
                continue;
            }
            match kind {
                "leaf" => {
                    cg.leaves.push(p.clone());
                    cg.made.push(p);
                }
                "made" => cg.made.push(p),
                _ => {}
            }
        }
        Some(cg)
    }

    /// Removes what husk made, deepest first: its leaves (waiting up to `limit` for exiting
    /// processes to leave them; any left are killed first), then its parents where empty.
    /// Returns what could not be removed.
    pub fn remove(&self, limit: Duration) -> Vec<String> {
        let mut failed = Vec::new();
        let mut made = self.made.clone();
        made.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        for dir in made {
            if self.leaves.contains(&dir) {
                if let Err(e) = remove_leaf(&dir, limit) {
                    failed.push(format!("{}: {e}", dir.display()));
                }
                continue;
            }
            match std::fs::remove_dir(&dir) {
                Ok(()) => {}
                // Another pod's, or gone already: not ours to wait for.
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EBUSY | libc::ENOTEMPTY | libc::ENOENT)
                    ) => {}
                Err(e) => failed.push(format!("{}: {e}", dir.display())),
            }
        }
        failed
    }
}

/// `rmdir` a leaf: processes that are exiting leave it within milliseconds; one that stays
/// (a straggler after a crash) is killed.
fn remove_leaf(leaf: &Path, limit: Duration) -> io::Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        match std::fs::remove_dir(leaf) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                kill_members(leaf);
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(e),
        }
    }
}

fn kill_members(leaf: &Path) {
    let procs = std::fs::read_to_string(leaf.join("cgroup.procs")).unwrap_or_default();
    for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// Enables [`V2_CONTROLLERS`] (those `dir` offers) for `dir`'s children.
fn enable_controllers(dir: &Path) -> Result<(), CgroupError> {
    let offered = std::fs::read_to_string(dir.join("cgroup.controllers")).unwrap_or_default();
    let enabled = std::fs::read_to_string(dir.join("cgroup.subtree_control")).unwrap_or_default();
    let missing: Vec<String> = V2_CONTROLLERS
        .iter()
        .filter(|c| offered.split_whitespace().any(|o| o == **c))
        .filter(|c| !enabled.split_whitespace().any(|e| e == **c))
        .map(|c| format!("+{c}"))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let file = dir.join("cgroup.subtree_control");
    std::fs::write(&file, missing.join(" ")).map_err(io_err("enabling controllers in", &file))
}

/// A new v1 cpuset starts with no CPUs and no memory nodes, and nothing can join it: give it
/// its parent's.
fn inherit_cpuset(parent: &Path, dir: &Path) -> Result<(), CgroupError> {
    for file in ["cpuset.cpus", "cpuset.mems"] {
        let Ok(mine) = std::fs::read_to_string(dir.join(file)) else {
            return Ok(()); // not a v1 cpuset hierarchy
        };
        if !mine.trim().is_empty() {
            continue;
        }
        let theirs = std::fs::read_to_string(parent.join(file)).unwrap_or_default();
        let target = dir.join(file);
        std::fs::write(&target, theirs.trim()).map_err(io_err("writing", &target))?;
    }
    Ok(())
}

fn open(path: &Path, flags: libc::c_int) -> io::Result<OwnedFd> {
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL in the path"))?;
    // SAFETY: `c` is NUL-terminated; open returns a new descriptor or -1.
    let fd = unsafe { libc::open(c.as_ptr(), flags | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the descriptor is new and owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Removes the cgroup recorded in a sandbox's state root `root` (nothing when none was
/// made); returns what could not be removed.
pub fn remove_recorded(root: &Path) -> Vec<String> {
    match PodCgroup::recorded(&root.join(RECORD)) {
        Some(cg) => cg.remove(Duration::from_secs(5)),
        None => Vec::new(),
    }
}

/// husk-vmm's own memory beyond guest RAM that the pod's limit must leave room for: its
/// binary's and libraries' pages it touches first, page tables for guest RAM, KVM's
/// accounted allocations and the device buffers (the vmm bench measures about 4 MiB PSS;
/// this keeps a wide margin).
pub const VMM_OVERHEAD_MIB: u64 = 32;

/// The VM memory that fits a pod memory limit of `limit` bytes: `memory_mib` when it fits
/// with [`VMM_OVERHEAD_MIB`], else smaller when the size was husk's own choice (the config's
/// base plus the containers' limits); an explicit size (`explicit`: the name of the
/// annotation that set it) that does not fit is refused, as is a limit too small for any VM.
pub fn fit_memory(
    memory_mib: u32,
    limit: Option<u64>,
    explicit: Option<&str>,
    min_mib: u32,
) -> Result<u32, String> {
    let Some(limit) = limit else {
        return Ok(memory_mib);
    };
    let limit_mib = limit / (1 << 20);
    let room = limit_mib.saturating_sub(VMM_OVERHEAD_MIB);
    if u64::from(memory_mib) <= room {
        return Ok(memory_mib);
    }
    if let Some(name) = explicit {
        return Err(format!(
            "{name} = {memory_mib} MiB does not fit the pod's memory limit of {limit_mib} MiB \
             with husk-vmm's {VMM_OVERHEAD_MIB} MiB: raise the limit (the RuntimeClass's \
             overhead.podFixed.memory) or lower {name}"
        ));
    }
    if room < u64::from(min_mib) {
        return Err(format!(
            "the pod's memory limit of {limit_mib} MiB leaves {room} MiB for the VM after \
             husk-vmm's {VMM_OVERHEAD_MIB} MiB, less than the {min_mib} MiB a VM needs: raise \
             the RuntimeClass's overhead.podFixed.memory"
        ));
    }
    Ok(room as u32)
}

#[cfg(test)]
mod tests;

//! The container cgroups (`/sys/fs/cgroup/husk/<id>`): what the agent reads and writes itself,
//! without forking (stats, freeze, pids, kill, OOM count, removal). libcontainer creates them
//! and applies the spec's limits (a sandbox container's anchor does both through libcgroups,
//! [`manager`]); `UpdateContainer` goes through libcgroups.
//!
//! Parsers are pure functions over file text, unit-tested without a cgroup.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use husk_protocol::agent::api;

use crate::error::{AgentError, Result};

/// Where cgroup v2 is mounted.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// The parent of every container cgroup, relative to the root.
pub const PARENT: &str = "husk";

/// The spec's `linux.cgroupsPath` for a container.
pub fn spec_path(container_id: &str) -> String {
    format!("/{PARENT}/{container_id}")
}

/// The container's cgroup directory.
pub fn dir(container_id: &str) -> PathBuf {
    Path::new(CGROUP_ROOT).join(PARENT).join(container_id)
}

/// libcgroups' manager for the cgroup at `path` (relative to the cgroup root), for a container
/// named `name` in its errors.
pub fn manager(path: PathBuf, name: &str) -> Result<libcgroups::common::AnyCgroupManager> {
    libcgroups::common::create_cgroup_manager(libcgroups::common::CgroupConfig {
        cgroup_path: path,
        systemd_cgroup: false,
        container_name: name.into(),
    })
    .map_err(AgentError::runtime("cgroup manager"))
}

/// `key value` lines (memory.stat, memory.events, cpu.stat) as a map; junk lines are skipped.
pub fn parse_flat_keyed(text: &str) -> BTreeMap<String, u64> {
    text.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let (k, v) = (w.next()?, w.next()?);
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

/// A single-value file; `max` is u64::MAX.
pub fn parse_single(text: &str) -> Option<u64> {
    let t = text.trim();
    if t == "max" {
        Some(u64::MAX)
    } else {
        t.parse().ok()
    }
}

/// io.stat lines: `MAJ:MIN rbytes=.. wbytes=.. rios=.. wios=.. ...`.
pub fn parse_io_stat(text: &str) -> Vec<api::IoStat> {
    text.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let (maj, min) = w.next()?.split_once(':')?;
            let mut s = api::IoStat {
                major: maj.parse().ok()?,
                minor: min.parse().ok()?,
                ..Default::default()
            };
            for kv in w {
                let Some((k, v)) = kv.split_once('=') else {
                    continue;
                };
                let v: u64 = v.parse().unwrap_or(0);
                match k {
                    "rbytes" => s.rbytes = v,
                    "wbytes" => s.wbytes = v,
                    "rios" => s.rios = v,
                    "wios" => s.wios = v,
                    _ => {}
                }
            }
            Some(s)
        })
        .collect()
}

fn read(dir: &Path, file: &str) -> Option<String> {
    std::fs::read_to_string(dir.join(file)).ok()
}

/// memory.events `oom_kill`, 0 when unknown.
pub fn oom_kills(dir: &Path) -> u64 {
    read(dir, "memory.events")
        .map(|t| parse_flat_keyed(&t).get("oom_kill").copied().unwrap_or(0))
        .unwrap_or(0)
}

/// Every pid in the cgroup and its descendants.
pub fn pids(dir: &Path) -> Vec<i32> {
    let mut out = Vec::new();
    collect_pids(dir, &mut out);
    out
}

fn collect_pids(dir: &Path, out: &mut Vec<i32>) {
    if let Some(t) = read(dir, "cgroup.procs") {
        out.extend(t.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
    }
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                collect_pids(&e.path(), out);
            }
        }
    }
}

/// Sends `signal` to every process in the cgroup (SIGKILL through cgroup.kill when the kernel
/// has it, which also catches processes forking meanwhile).
pub fn kill_all(dir: &Path, signal: i32) -> Result<()> {
    if signal == libc::SIGKILL && std::fs::write(dir.join("cgroup.kill"), "1").is_ok() {
        return Ok(());
    }
    let sig = nix::sys::signal::Signal::try_from(signal)
        .map_err(|_| AgentError::InvalidArgument(format!("bad signal {signal}")))?;
    for pid in pids(dir) {
        // ESRCH: it exited meanwhile.
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
    }
    Ok(())
}

/// Freezes or thaws the cgroup and waits (bounded) until the kernel reports it done.
pub async fn freeze(dir: &Path, frozen: bool) -> Result<()> {
    let want = if frozen { "1" } else { "0" };
    std::fs::write(dir.join("cgroup.freeze"), want).map_err(AgentError::io(format!(
        "writing {}/cgroup.freeze",
        dir.display()
    )))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let events = read(dir, "cgroup.events").unwrap_or_default();
        if parse_flat_keyed(&events)
            .get("frozen")
            .map(|v| v.to_string())
            == Some(want.into())
        {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(AgentError::Io {
                what: format!("waiting for {} to report frozen={want}", dir.display()),
                source: std::io::ErrorKind::TimedOut.into(),
            });
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Removes the cgroup and its sub-cgroups (deepest first). Retries briefly: the kernel removes
/// an exited task from the cgroup a moment after its parent reaped it.
pub async fn remove(dir: &Path) -> Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match remove_tree(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(AgentError::io(format!("rmdir {}", dir.display()))(e)),
        }
    }
}

fn remove_tree(dir: &Path) -> std::io::Result<()> {
    for e in std::fs::read_dir(dir)?.flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            remove_tree(&e.path())?;
        }
    }
    std::fs::remove_dir(dir)
}

/// The numbers of StatsResponse.
pub fn stats(dir: &Path) -> Result<api::StatsResponse> {
    if !dir.exists() {
        return Err(AgentError::Io {
            what: format!("reading stats of {}", dir.display()),
            source: std::io::ErrorKind::NotFound.into(),
        });
    }
    let map = |f: &str| -> HashMap<String, u64> {
        read(dir, f)
            .map(|t| parse_flat_keyed(&t).into_iter().collect())
            .unwrap_or_default()
    };
    let single = |f: &str, default: u64| {
        read(dir, f)
            .and_then(|t| parse_single(&t))
            .unwrap_or(default)
    };
    Ok(api::StatsResponse {
        cpu_stat: map("cpu.stat"),
        memory_stat: map("memory.stat"),
        memory_current: single("memory.current", 0),
        memory_max: single("memory.max", u64::MAX),
        swap_current: single("memory.swap.current", 0),
        swap_max: single("memory.swap.max", u64::MAX),
        memory_events: map("memory.events"),
        pids_current: single("pids.current", 0),
        pids_max: single("pids.max", u64::MAX),
        io: read(dir, "io.stat")
            .map(|t| parse_io_stat(&t))
            .unwrap_or_default(),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_keyed_and_single_values() {
        let m = parse_flat_keyed("low 0\nhigh 2\noom 1\noom_kill 1\nbad\nx y\n");
        assert_eq!(m.get("oom_kill"), Some(&1));
        assert_eq!(m.get("high"), Some(&2));
        assert!(!m.contains_key("x") && !m.contains_key("bad"));
        assert_eq!(parse_single("max\n"), Some(u64::MAX));
        assert_eq!(parse_single("1048576\n"), Some(1 << 20));
        assert_eq!(parse_single("x"), None);
    }

    #[test]
    fn io_stat_lines() {
        let v = parse_io_stat("254:0 rbytes=4096 wbytes=8192 rios=1 wios=2 dbytes=0 dios=0\n");
        assert_eq!(v.len(), 1);
        assert_eq!(
            (v[0].major, v[0].minor, v[0].rbytes, v[0].wios),
            (254, 0, 4096, 2)
        );
    }

    #[test]
    fn files_in_a_fake_cgroup_tree() {
        let d = tempfile::tempdir().unwrap();
        let cg = d.path().join("c1");
        std::fs::create_dir_all(cg.join("sub")).unwrap();
        std::fs::write(cg.join("cgroup.procs"), "10\n11\n").unwrap();
        std::fs::write(cg.join("sub/cgroup.procs"), "12\n").unwrap();
        std::fs::write(cg.join("memory.events"), "oom 1\noom_kill 2\n").unwrap();
        std::fs::write(cg.join("memory.max"), "max\n").unwrap();
        std::fs::write(cg.join("pids.current"), "3\n").unwrap();
        let mut p = pids(&cg);
        p.sort();
        assert_eq!(p, [10, 11, 12]);
        assert_eq!(oom_kills(&cg), 2);
        assert_eq!(oom_kills(&d.path().join("nope")), 0);
        let s = stats(&cg).unwrap();
        assert_eq!(
            (s.memory_max, s.pids_current, s.pids_max),
            (u64::MAX, 3, u64::MAX)
        );
        assert_eq!(s.memory_events.get("oom_kill"), Some(&2));
        assert_eq!(spec_path("c1"), "/husk/c1");
        assert_eq!(dir("c1"), Path::new("/sys/fs/cgroup/husk/c1"));
    }
}

//! What a test left behind: the processes (shims, husk-vmm), mounts, shim sockets and husk
//! state a [`Containerd`] looks for after a test ([`Containerd::leftovers`],
//! [`Containerd::assert_clean`]), and the host lookups they use.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::Containerd;

/// The socket path containerd 1.6 computes for a shim (`runtime/v2/shim/util_unix.go`).
pub fn shim_socket(containerd_sock: &Path, namespace: &str, id: &str) -> PathBuf {
    let joined = containerd_sock.join(namespace).join(id);
    let hash = Sha256::digest(joined.as_os_str().as_encoded_bytes());
    PathBuf::from(format!("/run/containerd/s/{hash:x}"))
}

fn cmdline(pid: &str) -> Option<String> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(
        raw.split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect::<Vec<_>>()
            .join(" "),
    )
}

/// (pid, command line) of every process whose command line contains `needle`.
pub fn processes_with(needle: &str) -> Vec<(u32, String)> {
    let mut out = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Ok(pid) = name.parse::<u32>() else {
                continue;
            };
            if pid == std::process::id() {
                continue;
            }
            if let Some(c) = cmdline(&name) {
                let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .map(|s| {
                        s.rsplit(')')
                            .next()
                            .is_some_and(|r| r.trim_start().starts_with('Z'))
                    })
                    .unwrap_or(true);
                if c.contains(needle) && !zombie {
                    out.push((pid, c));
                }
            }
        }
    }
    out
}

/// The loop devices whose backing file lies below `dir` (`/dev/loopN: <file>`; a file unlinked
/// once mounted reads `<file> (deleted)`).
pub fn loop_devices_below(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let Ok(block) = std::fs::read_dir("/sys/block") else {
        return found;
    };
    for e in block.flatten() {
        let Ok(file) = std::fs::read_to_string(e.path().join("loop/backing_file")) else {
            continue;
        };
        if Path::new(file.trim()).starts_with(dir) {
            found.push(format!(
                "/dev/{}: {}",
                e.file_name().to_string_lossy(),
                file.trim()
            ));
        }
    }
    found
}

/// Mount points at or below `dir`.
pub fn mounts_below(dir: &Path) -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| Path::new(m).starts_with(dir))
        .map(String::from)
        .collect()
}
impl Containerd {
    /// What a finished test left behind for container `ids`: shim and husk-vmm processes,
    /// mounts, shim sockets, husk state directories, containers and tasks.
    pub fn leftovers(&self, ids: &[&str]) -> Vec<String> {
        let mut found = Vec::new();
        let sock = self.socket();
        for id in ids {
            for (pid, c) in processes_with(&format!("-id {id} ")) {
                if c.contains(&sock.display().to_string()) {
                    found.push(format!("shim process {pid}: {c}"));
                }
            }
            for (pid, c) in processes_with(&format!("{}/{id}/vm.json", self.husk_state.display())) {
                found.push(format!("husk-vmm process {pid}: {c}"));
            }
            let s = shim_socket(&sock, self.namespace, id);
            if s.exists() {
                found.push(format!("shim socket {}", s.display()));
            }
            let st = self.husk_state.join(id);
            if st.exists() {
                found.push(format!("husk state {}", st.display()));
            }
        }
        let bundles = self
            .base
            .join("state/io.containerd.runtime.v2.task")
            .join(self.namespace);
        for id in ids {
            for dir in [self.husk_state.join(id), bundles.join(id)] {
                for m in mounts_below(&dir) {
                    found.push(format!("mount {m}"));
                }
            }
        }
        for what in [["task", "ls", "-q"], ["container", "ls", "-q"]] {
            let out = self.ctr(&what, None, Duration::from_secs(30));
            for line in out.stdout.lines().filter(|l| ids.contains(&l.trim())) {
                found.push(format!("{} {}", what[0], line.trim()));
            }
        }
        found
    }

    /// Waits (at most 30 s: shims exit and containerd's `delete` runs after the reply) until
    /// nothing of `ids` is left; panics listing what is.
    pub fn assert_clean(&self, ids: &[&str]) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = self.leftovers(ids);
            if left.is_empty() {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "left behind for {ids:?}:\n{}\ncontainerd log:\n{}",
                    left.join("\n"),
                    self.log_tail(80)
                );
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shim_socket_matches_containerds_formula() {
        // The test vector of containerd-shim 0.12 (src/lib.rs): address, namespace, id.
        let s = shim_socket(
            Path::new("/run/containerd/containerd.sock"),
            "default",
            "123",
        );
        assert_eq!(
            s,
            Path::new(
                "/run/containerd/s/0ddfbd72d02b3551e75f3a0ed90b9965b533401be618f43a568bc522764e0ad0"
            )
        );
    }
}

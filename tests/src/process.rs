//! Child-process helpers shared by the harness: die with the parent, wait with a deadline,
//! report exit codes the way a shell does, tell how busy a process's threads are.

use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

/// Makes the child receive SIGKILL when the harness dies, so no QEMU outlives it.
pub fn kill_with_parent(cmd: &mut Command) {
    let hook = || {
        // SAFETY: prctl(2) with PR_SET_PDEATHSIG takes a signal number and touches no memory.
        if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    };
    // SAFETY: the hook runs between fork and exec and calls only prctl(2), which is
    // async-signal-safe; it allocates nothing and touches no memory shared with the parent.
    unsafe { cmd.pre_exec(hook) };
}

/// Puts the child in a process group of its own, so a timeout can kill everything it started.
pub fn own_process_group(cmd: &mut Command) {
    cmd.process_group(0);
}

/// Waits for `child` until `deadline`; `None` means it is still running.
pub fn wait_until(child: &mut Child, deadline: Instant) -> std::io::Result<Option<ExitStatus>> {
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// How long a SIGKILLed child may take to be reaped before the harness gives up on it. A process
/// stuck in an uninterruptible KVM call (seen with nested KVM under TCG) never finishes exiting;
/// the harness must report that instead of hanging.
pub const REAP_GRACE: Duration = Duration::from_secs(10);

/// Kills the child's process group (or the child alone) with SIGKILL and reaps it within
/// [`REAP_GRACE`]; returns false when the child would not die.
pub fn kill_and_reap(child: &mut Child, group: bool) -> bool {
    let pid = child.id() as libc::pid_t;
    // SAFETY: kill(2) with a pid we spawned and have not reaped yet (so it cannot have been
    // reused); a negative pid addresses its process group.
    unsafe { libc::kill(if group { -pid } else { pid }, libc::SIGKILL) };
    let reaped = matches!(wait_until(child, Instant::now() + REAP_GRACE), Ok(Some(_)));
    if !reaped {
        eprintln!("husk-tests: pid {pid} did not exit within {REAP_GRACE:?} of SIGKILL (stuck in the kernel?)");
    }
    reaped
}

/// The exit code a shell would report: the code, or 128 + signal number.
pub fn shell_code(status: ExitStatus) -> i32 {
    status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

/// Each thread of process `pid` and how busy it was over `window`, as `name busy%` pairs
/// (`vcpu0 100%, husk-fs-husk 0%, ...`): whether a stalled guest spins in its vCPU or idles
/// waiting for something.
pub fn thread_busy(pid: u32, window: Duration) -> String {
    // utime + stime in clock ticks, by thread name (fields 14 and 15 of stat, after the
    // parenthesised comm, which may contain spaces).
    let sample = || -> Vec<(String, u64)> {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            return Vec::new();
        };
        let mut out: Vec<(String, u64)> = tasks
            .flatten()
            .filter_map(|t| {
                let stat = std::fs::read_to_string(t.path().join("stat")).ok()?;
                let (head, rest) = stat.rsplit_once(") ")?;
                let name = head.split_once(" (")?.1.to_string();
                let f: Vec<&str> = rest.split_whitespace().collect();
                let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
                Some((name, ticks))
            })
            .collect();
        out.sort();
        out
    };
    let before = sample();
    std::thread::sleep(window);
    let after = sample();
    // SAFETY: sysconf only reads a configuration value.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let window_ticks = (window.as_millis() as u64 * hz / 1000).max(1);
    let parts: Vec<String> = after
        .iter()
        .map(|(name, t)| {
            let was = before
                .iter()
                .find(|(n, _)| n == name)
                .map_or(*t, |(_, b)| *b);
            format!("{name} {}%", t.saturating_sub(was) * 100 / window_ticks)
        })
        .collect();
    if parts.is_empty() {
        format!("process {pid} is gone")
    } else {
        parts.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thread_busy_names_each_thread_and_a_gone_process() {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let idle = std::thread::Builder::new()
            .name("t-idle-probe".into())
            .spawn(move || rx.recv())
            .unwrap();
        let report = thread_busy(std::process::id(), Duration::from_millis(200));
        assert!(report.contains("t-idle-probe 0%"), "{report}");
        tx.send(()).unwrap();
        idle.join().unwrap().unwrap();
        assert_eq!(
            thread_busy(u32::MAX, Duration::from_millis(1)),
            format!("process {} is gone", u32::MAX)
        );
    }

    #[test]
    fn shell_codes_match_sh() {
        let exit3 = Command::new("sh").args(["-c", "exit 3"]).status().unwrap();
        assert_eq!(shell_code(exit3), 3);
        let killed = Command::new("sh")
            .args(["-c", "kill -9 $$"])
            .status()
            .unwrap();
        assert_eq!(shell_code(killed), 137);
    }

    #[test]
    fn deadline_and_kill() {
        let mut cmd = Command::new("sleep");
        cmd.arg("30");
        own_process_group(&mut cmd);
        let mut child = cmd.spawn().unwrap();
        let got = wait_until(&mut child, Instant::now() + Duration::from_millis(100)).unwrap();
        assert!(got.is_none());
        kill_and_reap(&mut child, true);
        assert!(child.try_wait().unwrap().is_some());
    }
}

/// One thread's capability sets and `no_new_privs`, from `/proc/<pid>/task/<tid>/status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThreadPrivileges {
    /// The thread id.
    pub tid: u32,
    /// Its name (`comm`).
    pub name: String,
    /// `CapEff`.
    pub effective: u64,
    /// `CapPrm`.
    pub permitted: u64,
    /// `CapBnd`.
    pub bounding: u64,
    /// `CapInh`.
    pub inheritable: u64,
    /// `CapAmb`.
    pub ambient: u64,
    /// `NoNewPrivs`.
    pub no_new_privs: bool,
    /// `Seccomp`: 0 none, 1 strict, 2 filter.
    pub seccomp: u8,
}

/// Every thread of `pid` with its privileges.
pub fn thread_privileges(pid: u32) -> Vec<ThreadPrivileges> {
    let mut out = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for t in tasks.flatten() {
        let Ok(tid) = t.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(status) = std::fs::read_to_string(t.path().join("status")) else {
            continue;
        };
        let field = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .map(|v| v.trim().to_string())
                .unwrap_or_default()
        };
        let hex = |key: &str| u64::from_str_radix(&field(key), 16).unwrap_or(u64::MAX);
        out.push(ThreadPrivileges {
            tid,
            name: field("Name:"),
            effective: hex("CapEff:"),
            permitted: hex("CapPrm:"),
            bounding: hex("CapBnd:"),
            inheritable: hex("CapInh:"),
            ambient: hex("CapAmb:"),
            no_new_privs: field("NoNewPrivs:") == "1",
            seccomp: field("Seccomp:").parse().unwrap_or(u8::MAX),
        });
    }
    out
}

/// The capabilities husk-vmm's virtio-fs worker serves files with (`hypervisor/src/caps.rs`):
/// CHOWN, DAC_OVERRIDE, FOWNER, FSETID, SETGID, SETUID.
pub const FILE_SERVER_CAPS: u64 = 0xdb;

/// What husk-vmm (run as root) holds once its VM runs: on every thread a seccomp filter
/// (`Seccomp: 2`), `no_new_privs`, bounding
/// and permitted sets of exactly the file server's, nothing inheritable or ambient, and no
/// effective capability except on the virtio-fs workers (`husk-fs-<tag>`), which hold the file
/// server's. `Err` lists every thread that differs.
pub fn check_vmm_privileges(pid: u32) -> Result<Vec<ThreadPrivileges>, String> {
    let threads = thread_privileges(pid);
    if threads.is_empty() {
        return Err(format!("no threads of {pid}"));
    }
    let wrong: Vec<String> = threads
        .iter()
        .filter(|t| {
            let eff = if t.name.starts_with("husk-fs-") {
                FILE_SERVER_CAPS
            } else {
                0
            };
            !(t.no_new_privs
                && t.seccomp == 2
                && t.bounding == FILE_SERVER_CAPS
                && t.permitted == FILE_SERVER_CAPS
                && t.inheritable == 0
                && t.ambient == 0
                && t.effective == eff)
        })
        .map(|t| format!("{t:?}"))
        .collect();
    if wrong.is_empty() {
        Ok(threads)
    } else {
        Err(format!(
            "husk-vmm {pid} threads with other privileges than documented:\n{}",
            wrong.join("\n")
        ))
    }
}

/// What husk-vmm `pid`'s jail looks like from the host, as [`check_vmm_jail`] found it.
#[derive(Debug, Clone)]
pub struct JailView {
    /// The top level of `/proc/<pid>/root`.
    pub root_entries: Vec<String>,
    /// Namespaces (`mnt`, `net`, `ipc`, `uts`) it shares with the host (this process).
    pub shared_namespaces: Vec<String>,
    /// `Max open files`, `Max locked memory` and `Max core file size` (soft limits).
    pub limits: Vec<(String, String)>,
}

/// Checks that husk-vmm `pid` runs in its jail (`hypervisor/src/jail`): its own mount,
/// network, IPC and UTS namespaces (every thread), a root holding only `proc` and the socket
/// directory's first path component, no core dumps and no locked memory. `Err` says what
/// differs.
pub fn check_vmm_jail(pid: u32) -> Result<JailView, String> {
    let ns = |p: &str, kind: &str| std::fs::read_link(format!("{p}/ns/{kind}")).ok();
    let mut shared = Vec::new();
    let tasks: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .map_err(|e| format!("/proc/{pid}/task: {e}"))?
        .flatten()
        .map(|t| t.path().display().to_string())
        .collect();
    for kind in ["mnt", "net", "ipc", "uts"] {
        let host = ns("/proc/self", kind);
        for task in &tasks {
            if ns(task, kind) == host {
                shared.push(format!("{kind} ({task})"));
            }
        }
    }
    let mut root_entries: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/root"))
        .map_err(|e| format!("/proc/{pid}/root: {e}"))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    root_entries.sort();
    let limits_text = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap_or_default();
    let limits: Vec<(String, String)> =
        ["Max open files", "Max locked memory", "Max core file size"]
            .iter()
            .map(|name| {
                let soft = limits_text
                    .lines()
                    .find_map(|l| l.strip_prefix(name))
                    .and_then(|rest| rest.split_whitespace().next())
                    .unwrap_or("?")
                    .to_string();
                (name.to_string(), soft)
            })
            .collect();
    let view = JailView {
        root_entries,
        shared_namespaces: shared,
        limits,
    };
    let mut wrong = Vec::new();
    if !view.shared_namespaces.is_empty() {
        wrong.push(format!(
            "namespaces shared with the host: {:?}",
            view.shared_namespaces
        ));
    }
    if !view.root_entries.iter().any(|e| e == "proc") || view.root_entries.len() > 2 {
        wrong.push(format!("its root holds {:?}", view.root_entries));
    }
    for (name, want) in [("Max locked memory", "0"), ("Max core file size", "0")] {
        if !view.limits.iter().any(|(n, v)| n == name && v == want) {
            wrong.push(format!("{name} is not {want}: {:?}", view.limits));
        }
    }
    if wrong.is_empty() {
        Ok(view)
    } else {
        Err(format!(
            "husk-vmm {pid} is not jailed as documented: {}",
            wrong.join("; ")
        ))
    }
}

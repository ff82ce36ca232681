//! Starting husk-vmm as PID 1 of a PID namespace of its own, the first step of its jail (the
//! rest it does itself, `hypervisor/src/jail`): `clone3` with `CLONE_NEWPID | CLONE_PIDFD`,
//! then `execve`. The shim keeps the pidfd and reaps the VMM through it, so the pid it knows
//! (the host's view) is the VMM's own, with no supervisor process in between.
//!
//! It starts in the pod's cgroup ([`crate::cgroup`]): created there with `CLONE_INTO_CGROUP`
//! on cgroup v2, or writing itself into each v1 hierarchy's `cgroup.procs` before it executes,
//! so no page of it is ever charged elsewhere.
//!
//! The child of a multi-threaded process may only make async-signal-safe calls until it
//! executes: everything it needs (paths, argv, environment, pipes, cgroup descriptors) is
//! prepared before the clone, and the child only duplicates descriptors, writes, resets
//! signals and executes.

use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::cgroup::Join;

/// `CLONE_INTO_CGROUP` (Linux 5.7), not in the libc crate.
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;
/// The child's exit code when it cannot join its cgroup.
pub const CGROUP_JOIN_FAILED: i32 = 126;

/// Whether a launched process outlives the thread that launched it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifetime {
    /// It lives on (a pod's husk-vmm survives its shim; containerd's `delete` cleans up).
    Own,
    /// The kernel SIGKILLs it when the launching thread ends (`PR_SET_PDEATHSIG`): a VM the
    /// shim runs for itself, such as a template's, never outlives its work.
    EndsWithLauncher,
}

/// A process started by [`launch`].
#[derive(Debug)]
pub struct Launched {
    /// Its pid, as the host sees it.
    pub pid: u32,
    /// A pidfd for it: readable once it exited; reaped with `waitid(P_PIDFD)`.
    pub pidfd: OwnedFd,
    /// The read end of its stdout.
    pub stdout: OwnedFd,
    /// The read end of its stderr.
    pub stderr: OwnedFd,
}

fn cstring(s: &OsStr) -> io::Result<CString> {
    CString::new(s.as_bytes()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{s:?} contains a NUL byte"),
        )
    })
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: pipe2 writes two descriptors into the array owned by this frame.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the read end is new and owned by nothing else.
    let read = unsafe { OwnedFd::from_raw_fd(fds[0]) };
    // SAFETY: the write end is new and owned by nothing else.
    let write = unsafe { OwnedFd::from_raw_fd(fds[1]) };
    Ok((read, write))
}

/// Runs `program` with `args` (stdin `/dev/null`, stdout and stderr piped back, a process
/// group of its own), in a new PID namespace when `new_pid_namespace` (which needs
/// `CAP_SYS_ADMIN`), in the cgroup `join` opened, living as long as `lifetime` says.
pub fn launch(
    program: &Path,
    args: &[&OsStr],
    new_pid_namespace: bool,
    join: Option<&Join>,
    lifetime: Lifetime,
) -> io::Result<Launched> {
    let path = cstring(program.as_os_str())?;
    let argv_owned: Vec<CString> = std::iter::once(program.as_os_str())
        .chain(args.iter().copied())
        .map(cstring)
        .collect::<io::Result<_>>()?;
    let mut argv: Vec<*const libc::c_char> = argv_owned.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let env_owned: Vec<CString> = std::env::vars_os()
        .filter_map(|(k, v)| {
            let mut kv = k.as_bytes().to_vec();
            kv.push(b'=');
            kv.extend_from_slice(v.as_bytes());
            CString::new(kv).ok()
        })
        .collect();
    let mut envp: Vec<*const libc::c_char> = env_owned.iter().map(|e| e.as_ptr()).collect();
    envp.push(std::ptr::null());
    let devnull: OwnedFd = std::fs::File::open("/dev/null")?.into();
    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;

    let mut pidfd: RawFd = -1;
    let mut flags = libc::CLONE_PIDFD as u64;
    if new_pid_namespace {
        flags |= libc::CLONE_NEWPID as u64;
    }
    // SAFETY: clone_args is plain data; zero is "unused" for every field not set below.
    let mut cl: libc::clone_args = unsafe { std::mem::zeroed() };
    cl.flags = flags;
    cl.pidfd = &mut pidfd as *mut RawFd as u64;
    cl.exit_signal = libc::SIGCHLD as u64;
    let mut procs: Vec<RawFd> = Vec::new();
    match join {
        Some(Join::IntoCgroup(dir)) => {
            cl.flags |= CLONE_INTO_CGROUP;
            cl.cgroup = dir.as_raw_fd() as u64;
        }
        Some(Join::Procs(files)) => procs = files.iter().map(|f| f.as_raw_fd()).collect(),
        None => {}
    }
    // SAFETY: clone3 with a valid clone_args of the size given and no CLONE_VM: the child is a
    // copy of this process with only the calling thread. It runs `exec_child`, which makes
    // only async-signal-safe calls on memory prepared above, and never returns.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &mut cl as *mut libc::clone_args,
            std::mem::size_of::<libc::clone_args>(),
        )
    };
    if ret == 0 {
        // SAFETY: see exec_child; every pointer refers to this (copied) frame's data.
        unsafe {
            exec_child(
                &path,
                &argv,
                &envp,
                [devnull.as_raw_fd(), out_w.as_raw_fd(), err_w.as_raw_fd()],
                &procs,
                lifetime,
            )
        }
    }
    if ret < 0 {
        let e = io::Error::last_os_error();
        let what = if cl.flags & CLONE_INTO_CGROUP != 0 {
            "starting it in the pod's cgroup (clone3 with CLONE_INTO_CGROUP: needs Linux 5.7 \
             and a cgroup v2 directory that may hold processes)"
        } else if new_pid_namespace {
            "starting it in a new PID namespace (clone3 with CLONE_NEWPID: needs CAP_SYS_ADMIN \
             and a kernel with PID namespaces, 5.3 or later)"
        } else {
            "starting it (clone3)"
        };
        return Err(io::Error::new(e.kind(), format!("{what}: {e}")));
    }
    // SAFETY: the kernel wrote a new pidfd that nothing else owns.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    Ok(Launched {
        pid: ret as u32,
        pidfd,
        stdout: out_r,
        stderr: err_r,
    })
}

/// The child's side: stdio, its cgroups (`cgroup.procs` descriptors to write itself into;
/// `_exit(126)` with a message on stderr if that fails), a process group of its own, default
/// signals, `execve`; `_exit(127)` if that fails.
///
/// # Safety
///
/// Only in the child of a `clone3` without `CLONE_VM`; `path`, `argv` and `envp` point to
/// NUL-terminated strings and null-terminated arrays that live in this copy of the memory.
unsafe fn exec_child(
    path: &CString,
    argv: &[*const libc::c_char],
    envp: &[*const libc::c_char],
    stdio: [RawFd; 3],
    cgroup_procs: &[RawFd],
    lifetime: Lifetime,
) -> ! {
    if lifetime == Lifetime::EndsWithLauncher {
        // Set first thing; a launching thread that ended before this instant goes unnoticed,
        // so the launcher must outlive the child's start (it waits for the child anyway).
        // SAFETY: prctl is a plain system call, async-signal-safe; it changes only this child.
        unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    }
    for (target, fd) in stdio.iter().enumerate() {
        // SAFETY: dup2 is async-signal-safe; both are descriptors of this process.
        if unsafe { libc::dup2(*fd, target as RawFd) } < 0 {
            // SAFETY: _exit is async-signal-safe and ends this child only.
            unsafe { libc::_exit(127) };
        }
    }
    for fd in cgroup_procs {
        // SAFETY: write is async-signal-safe; the buffer is a static byte string.
        if unsafe { libc::write(*fd, b"0".as_ptr().cast(), 1) } != 1 {
            let msg = b"husk-vmm: cannot join the pod's cgroup (writing its cgroup.procs)\n";
            // SAFETY: as above, to this child's stderr.
            unsafe { libc::write(2, msg.as_ptr().cast(), msg.len()) };
            // SAFETY: _exit is async-signal-safe and ends this child only.
            unsafe { libc::_exit(CGROUP_JOIN_FAILED) };
        }
    }
    // Its own process group: a signal meant for the shim's group does not reach it.
    // SAFETY: setpgid is async-signal-safe and changes only this process.
    unsafe { libc::setpgid(0, 0) };
    // The shim's signal mask and ignored signals must not leak into the VMM.
    // SAFETY: an all-zero sigset_t is the empty set on Linux; no libc call is needed to make it.
    let none: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: sigprocmask is async-signal-safe; `none` lives in this frame.
    unsafe { libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut()) };
    // SAFETY: signal with SIG_DFL is async-signal-safe.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    // SAFETY: execve is async-signal-safe; the caller guarantees the strings and arrays.
    unsafe { libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
    // SAFETY: _exit is async-signal-safe and ends this child only.
    unsafe { libc::_exit(127) }
}

/// How a process reaped through its pidfd ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// It exited with this code.
    Code(i32),
    /// A signal ended it.
    Signal(i32),
}

/// Reaps the exited process behind `pidfd` (`waitid(P_PIDFD, WEXITED | WNOHANG)`); `None` if
/// it has not exited yet.
pub fn reap(pidfd: &OwnedFd) -> io::Result<Option<Ended>> {
    // SAFETY: siginfo_t is plain data, written by waitid.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: waitid on a pidfd we own, writing into `info`.
    let ret = unsafe {
        libc::waitid(
            libc::P_PIDFD,
            pidfd.as_raw_fd() as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOHANG,
        )
    };
    if ret != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: waitid filled `info` for a child that changed state, or left si_pid 0.
    let pid = unsafe { info.si_pid() };
    // SAFETY: as above; si_status is the exit code or the signal.
    let status = unsafe { info.si_status() };
    if pid == 0 {
        return Ok(None);
    }
    Ok(Some(match info.si_code {
        libc::CLD_EXITED => Ended::Code(status),
        _ => Ended::Signal(status),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn wait(l: &Launched) -> Ended {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            if let Some(end) = reap(&l.pidfd).unwrap() {
                return end;
            }
            assert!(std::time::Instant::now() < deadline, "it never ended");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    fn output(fd: OwnedFd) -> String {
        let mut s = String::new();
        std::fs::File::from(fd).read_to_string(&mut s).unwrap();
        s
    }

    fn sh(script: &str, pid_ns: bool) -> io::Result<Launched> {
        launch(
            Path::new("/bin/sh"),
            &[OsStr::new("-c"), OsStr::new(script)],
            pid_ns,
            None,
            Lifetime::Own,
        )
    }

    #[test]
    fn exit_codes_signals_and_output_come_back() {
        let l = sh("echo out; echo err >&2; exit 3", false).unwrap();
        assert_eq!(wait(&l), Ended::Code(3));
        assert_eq!(output(l.stdout), "out\n");
        assert_eq!(output(l.stderr), "err\n");
        let l = sh("kill -9 $$", false).unwrap();
        assert_eq!(wait(&l), Ended::Signal(libc::SIGKILL));
        let e = launch(
            Path::new("/nonexistent/vmm"),
            &[],
            false,
            None,
            Lifetime::Own,
        )
        .unwrap();
        assert_eq!(wait(&e), Ended::Code(127), "a failed exec ends in 127");
    }

    #[test]
    fn a_process_tied_to_its_launcher_dies_with_the_launching_thread() {
        let l = std::thread::spawn(|| {
            let l = launch(
                Path::new("/bin/sleep"),
                &[OsStr::new("60")],
                false,
                None,
                Lifetime::EndsWithLauncher,
            )
            .unwrap();
            // The child sets its death signal right after the clone; a launcher that ended
            // before that would not be noticed (a template's builder thread lives for minutes).
            std::thread::sleep(std::time::Duration::from_millis(300));
            l
        })
        .join()
        .unwrap();
        assert_eq!(wait(&l), Ended::Signal(libc::SIGKILL));
    }

    #[test]
    #[ignore = "needs root (CLONE_NEWPID); run by make unit as root"]
    fn in_a_new_pid_namespace_it_is_pid_1() {
        let l = sh("echo $$; exit 0", true).unwrap();
        assert!(l.pid > 1);
        let ns = std::fs::read_link(format!("/proc/{}/ns/pid", l.pid));
        assert_eq!(wait(&l), Ended::Code(0));
        assert_eq!(output(l.stdout), "1\n");
        if let Ok(theirs) = ns {
            assert_ne!(Some(theirs), std::fs::read_link("/proc/self/ns/pid").ok());
        }
    }

    /// A unique path for a root-only test in this host's real hierarchy.
    fn real_cgroup_path(tag: &str) -> std::path::PathBuf {
        std::path::PathBuf::from(format!("husk-unit-{}/{tag}", std::process::id()))
    }

    #[test]
    #[ignore = "needs root and a cgroup file system; run by make unit as root"]
    fn husk_vmm_starts_inside_the_pods_cgroup_on_this_hosts_hierarchy() {
        use crate::cgroup::{Hierarchy, PodCgroup};
        use std::path::PathBuf;
        use std::time::Duration;
        let h = Hierarchy::detect().unwrap();
        let rel = real_cgroup_path("pod");
        let cg = PodCgroup::create(&h, &rel).unwrap();
        let join = cg.join().unwrap();
        let l = launch(
            Path::new("/bin/sh"),
            &[OsStr::new("-c"), OsStr::new("cat /proc/self/cgroup")],
            false,
            Some(&join),
            Lifetime::Own,
        )
        .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while reap(&l.pidfd).unwrap().is_none() {
            assert!(std::time::Instant::now() < deadline, "sh never ended");
            std::thread::sleep(Duration::from_millis(5));
        }
        let mut out = String::new();
        std::fs::File::from(l.stdout)
            .read_to_string(&mut out)
            .unwrap();
        // Every hierarchy's line names the pod's cgroup.
        let want = format!("/{}", rel.display());
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), h.roots().len(), "{}: {out}", h.describe());
        for l in &lines {
            assert!(l.ends_with(&want), "{l} in {out} ({})", h.describe());
        }
        assert!(cg.remove(Duration::from_secs(2)).is_empty());
        let top = PathBuf::from(format!("husk-unit-{}", std::process::id()));
        for root in h.roots() {
            assert!(!root.join(&rel).exists());
            assert!(!root.join(&top).exists(), "the parent husk made stays");
        }
    }
}

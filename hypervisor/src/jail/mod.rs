//! husk-vmm's jail: once setup has opened everything it needs from the host (`/dev/kvm`, the
//! kernel and initramfs, the tap in the pod's network namespace, the share, the serial log,
//! the sockets), the main thread, still the only thread, leaves the host's namespaces and file
//! tree for good:
//!
//! - (the shim already started it as PID 1 of a PID namespace of its own: a PID namespace
//!   takes a new process, which only the one that starts husk-vmm can make;)
//! - new mount, network, IPC and UTS namespaces (the network one empty: the tap is already
//!   open, and Unix sockets reached by path work across network namespaces);
//! - every mount private, so nothing propagates in or out;
//! - a new root: a small tmpfs mounted over the first socket directory (in the new mount
//!   namespace only: the host sees nothing), holding
//!   - the directories of the vsock and control sockets, bound at their own absolute paths,
//!     so the configured paths keep working and the shim reaches the same inodes from outside;
//!   - `/proc/self`, a bind of this process's own `/proc/<pid>` (the file server reopens
//!     descriptors through `/proc/self/fd`), and nothing else of procfs;
//! - `pivot_root` into it, the old root detached, the new root read-only.
//!
//! The virtio-fs share is not in the jail: the server reaches it only through the descriptor
//! its device opened at setup (see `devices::virtio::fs::device`).
//!
//! Then [`limit_resources`] sets the rlimits. [`crate::caps::drop_after_setup`] drops the
//! capabilities this needed, so the jail cannot be undone (no `CAP_SYS_ADMIN` to mount or
//! `setns`, and the seccomp filters forbid both).

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use husk_protocol::VmConfig;

/// What a step of entering the jail could not do, naming the kernel feature it needs.
#[derive(Debug, thiserror::Error)]
pub enum JailError {
    /// Another thread exists: namespaces are per thread, so it would stay outside.
    #[error(
        "entering the jail: husk-vmm has {0} threads; it must enter with its main thread alone"
    )]
    Threads(usize),
    /// A namespace could not be created.
    #[error("creating a new {what} namespace ({feature}): {source}")]
    Namespace {
        /// Which namespace.
        what: &'static str,
        /// The kernel option it needs.
        feature: &'static str,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// A mount, bind or pivot_root step.
    #[error("building the jail: {step} {path}: {source}")]
    Mount {
        /// What was being done.
        step: &'static str,
        /// On which path.
        path: String,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// An rlimit.
    #[error("setting {0}: {1}")]
    Limit(&'static str, #[source] io::Error),
}

/// The directories the jail holds, at their own absolute paths: those of the vsock socket
/// (and the per-port sockets next to it) and of the control socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JailPlan {
    dirs: Vec<PathBuf>,
}

impl JailPlan {
    /// The plan for `config`.
    pub fn for_config(config: &VmConfig) -> JailPlan {
        let sockets = config
            .vsock
            .iter()
            .map(|v| v.socket.as_path())
            .chain(config.control_socket.as_deref());
        let mut dirs: Vec<PathBuf> = Vec::new();
        for socket in sockets {
            let dir = socket.parent().unwrap_or(Path::new("/"));
            let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
            if !dirs.contains(&dir) {
                dirs.push(dir);
            }
        }
        JailPlan { dirs }
    }

    /// The directories bound into the jail.
    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }
}

fn check(ret: libc::c_int) -> io::Result<()> {
    if ret == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn cstr(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL in the path"))
}

fn mount(
    step: &'static str,
    source: Option<&Path>,
    target: &Path,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> Result<(), JailError> {
    let err = |source| JailError::Mount {
        step,
        path: target.display().to_string(),
        source,
    };
    let source = source.map(cstr).transpose().map_err(err)?;
    let target_c = cstr(target).map_err(err)?;
    let fstype = fstype.map(|f| CString::new(f).expect("no NUL in a literal"));
    let data = data.map(|d| CString::new(d).expect("no NUL in a literal"));
    let ptr = |c: &Option<CString>| c.as_ref().map_or(std::ptr::null(), |c| c.as_ptr());
    // SAFETY: every pointer is a NUL-terminated string owned by this frame, or null where
    // mount(2) allows it.
    let ret = unsafe {
        libc::mount(
            ptr(&source),
            target_c.as_ptr(),
            ptr(&fstype),
            flags,
            ptr(&data).cast(),
        )
    };
    check(ret).map_err(err)
}

fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").map_or(0, |d| d.count())
}

/// How long setup's joined threads may take to leave `/proc/self/task`.
const THREADS_SETTLE: Duration = Duration::from_secs(1);

/// Waits, at most `settle`, until this is the process's only thread. Setup's helper threads
/// (the image loader, the tap opener in the pod's network namespace) are joined before this,
/// but the kernel wakes the joiner as the thread exits and removes it from the thread group a
/// moment later: under load (ten pods starting at once) the count read at once was 2.
fn alone(settle: Duration) -> Result<(), JailError> {
    let deadline = Instant::now() + settle;
    loop {
        match threads() {
            1 => return Ok(()),
            n if Instant::now() >= deadline => return Err(JailError::Threads(n)),
            _ => std::thread::sleep(Duration::from_millis(1)),
        }
    }
}

fn unshare(flag: libc::c_int, what: &'static str, feature: &'static str) -> Result<(), JailError> {
    // SAFETY: unshare(2) takes only flags; it changes this thread's namespaces.
    check(unsafe { libc::unshare(flag) }).map_err(|source| JailError::Namespace {
        what,
        feature,
        source,
    })
}

/// A directory opened `O_PATH` so it can be bound after its path is covered.
fn open_path(path: &Path) -> Result<File, JailError> {
    File::options()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
        .open(path)
        .map_err(|source| JailError::Mount {
            step: "opening",
            path: path.display().to_string(),
            source,
        })
}

/// Binds `dir` (an `O_PATH` descriptor) onto `target` with `extra` mount flags.
fn bind(dir: &File, target: &Path, extra: libc::c_ulong) -> Result<(), JailError> {
    let fd_path = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()));
    mount("binding", Some(&fd_path), target, None, libc::MS_BIND, None)?;
    let flags = libc::MS_REMOUNT | libc::MS_BIND | libc::MS_NOSUID | libc::MS_NODEV;
    mount("restricting", None, target, None, flags | extra, None)
}

/// Enters the jail `plan` describes. Must run on the only thread of the process.
pub fn enter(plan: &JailPlan) -> Result<(), JailError> {
    alone(THREADS_SETTLE)?;
    unshare(libc::CLONE_NEWNS, "mount", "mount namespaces")?;
    unshare(libc::CLONE_NEWNET, "network", "CONFIG_NET_NS")?;
    unshare(libc::CLONE_NEWIPC, "IPC", "CONFIG_IPC_NS")?;
    unshare(libc::CLONE_NEWUTS, "UTS", "CONFIG_UTS_NS")?;
    let root = Path::new("/");
    mount(
        "making private",
        None,
        root,
        None,
        libc::MS_REC | libc::MS_PRIVATE,
        None,
    )?;

    // Everything the jail will hold, opened before the tmpfs covers any of it.
    let dirs = plan
        .dirs
        .iter()
        .map(|d| open_path(d).map(|f| (d, f)))
        .collect::<Result<Vec<_>, _>>()?;
    let proc_self = open_path(Path::new("/proc/self"))?;

    let base = plan
        .dirs
        .first()
        .cloned()
        .unwrap_or_else(std::env::temp_dir);
    let tmpfs_flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    let tmpfs_data = Some("size=64k,nr_inodes=64,mode=0755");
    mount(
        "mounting the jail's tmpfs on",
        Some(Path::new("husk-jail")),
        &base,
        Some("tmpfs"),
        tmpfs_flags,
        tmpfs_data,
    )?;
    let inside = |abs: &Path| base.join(abs.strip_prefix("/").unwrap_or(abs));
    let mkdir = |path: &Path| {
        std::fs::create_dir_all(path).map_err(|source| JailError::Mount {
            step: "creating",
            path: path.display().to_string(),
            source,
        })
    };
    for (dir, fd) in &dirs {
        let target = inside(dir);
        mkdir(&target)?;
        bind(fd, &target, libc::MS_NOEXEC)?;
    }
    let proc_target = inside(Path::new("/proc/self"));
    mkdir(&proc_target)?;
    bind(&proc_self, &proc_target, libc::MS_NOEXEC | libc::MS_RDONLY)?;
    drop(dirs);
    drop(proc_self);

    pivot_into(&base)?;
    mount(
        "making read-only",
        None,
        root,
        None,
        libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY | tmpfs_flags,
        None,
    )
}

/// `pivot_root` into `new_root` (a mount point) with the old root stacked on top of it, then
/// the old root detached.
fn pivot_into(new_root: &Path) -> Result<(), JailError> {
    let err = |step, source| JailError::Mount {
        step,
        path: new_root.display().to_string(),
        source,
    };
    std::env::set_current_dir(new_root).map_err(|e| err("entering", e))?;
    let dot = c".";
    // SAFETY: pivot_root(".", ".") with NUL-terminated literals: the old root ends up mounted
    // on top of the new one, at the working directory.
    check(unsafe { libc::syscall(libc::SYS_pivot_root, dot.as_ptr(), dot.as_ptr()) } as i32)
        .map_err(|e| err("pivot_root into", e))?;
    // SAFETY: detaching the mount at "." (the old root), a NUL-terminated literal.
    check(unsafe { libc::umount2(dot.as_ptr(), libc::MNT_DETACH) })
        .map_err(|e| err("detaching the old root from", e))?;
    std::env::set_current_dir("/").map_err(|e| err("entering", e))
}

/// The descriptors husk-vmm may hold: the file server holds one per guest inode in use, so a
/// busy pod needs many (virtiofsd raises its limit the same way); the kernel's default
/// `fs.nr_open`.
pub const MAX_FILES: u64 = 1 << 20;

/// Resource limits for the rest of the VMM's life:
/// - `RLIMIT_CORE` 0: a core dump would hold the guest's memory;
/// - `RLIMIT_MEMLOCK` 0: nothing is locked (guest memory is ordinary, swappable memory);
/// - `RLIMIT_NOFILE` exactly [`MAX_FILES`] (or the inherited hard limit, where the kernel
///   allows no more), soft and hard: a bound the guest cannot push further.
pub fn limit_resources() -> Result<(), JailError> {
    let set = |resource, name, value: u64| {
        let limit = libc::rlimit {
            rlim_cur: value,
            rlim_max: value,
        };
        // SAFETY: setrlimit reads the rlimit struct owned by this frame.
        check(unsafe { libc::setrlimit(resource, &limit) }).map_err(|e| JailError::Limit(name, e))
    };
    set(libc::RLIMIT_CORE, "RLIMIT_CORE", 0)?;
    set(libc::RLIMIT_MEMLOCK, "RLIMIT_MEMLOCK", 0)?;
    let mut now = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the rlimit struct owned by this frame.
    check(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut now) })
        .map_err(|e| JailError::Limit("RLIMIT_NOFILE", e))?;
    set(libc::RLIMIT_NOFILE, "RLIMIT_NOFILE", MAX_FILES).or_else(|_| {
        set(
            libc::RLIMIT_NOFILE,
            "RLIMIT_NOFILE",
            now.rlim_max.min(MAX_FILES),
        )
    })
}

#[cfg(test)]
mod tests;

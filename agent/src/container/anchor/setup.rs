//! A sandbox container's settings, applied by its anchor to itself (in its new namespaces, as
//! root, before it reports ready), in the order libcontainer's init applies them: cgroup and
//! limits, hostname, sysctls, rlimits, OOM score, umask, its root, groups and ids, seccomp and
//! capabilities. [`crate::container::pause::fits`] has already checked that the spec asks for
//! nothing else that can be seen from outside the container's own mount namespace.
//!
//! The root matters although nothing runs in the container: with a shared PID namespace the
//! pod's processes see the anchor as PID 1, and `/proc/1/root` is its root. So the anchor
//! pivots into the spec's `root.path` (read-only if the spec says so) in a mount namespace of
//! its own and detaches everything else: `/proc/1/root` shows what pause's would (the pause
//! image, here without even /proc or /dev), never the guest's own file tree.

use std::path::{Path, PathBuf};

use libcgroups::common::{CgroupManager, ControllerOpt};
use nix::sched::CloneFlags;
use nix::unistd::{Gid, Pid, Uid};
use oci_spec::runtime::{LinuxNamespaceType, LinuxResources, Spec};

use crate::container::{cgroup, sysctl};
use crate::error::{AgentError, Result};

fn failed(what: &str) -> impl Fn(String) -> AgentError + '_ {
    move |e| AgentError::Runner(format!("{what}: {e}"))
}

/// Applies `spec` to the calling process, which must be single-threaded (just forked).
/// `no_pivot`: enter the root with MS_MOVE and chroot, as the agent's runners do where the
/// guest's root cannot be pivoted away from.
pub fn apply(spec: &Spec, no_pivot: bool) -> Result<()> {
    let syscall = libcontainer::syscall::syscall::create_syscall();
    let linux = spec
        .linux()
        .as_ref()
        .ok_or_else(|| AgentError::InvalidArgument("spec has no linux section".into()))?;
    let process = spec
        .process()
        .as_ref()
        .ok_or_else(|| AgentError::InvalidArgument("spec has no process".into()))?;
    let nnp = process.no_new_privileges() == Some(true);
    if nnp {
        // SAFETY: prctl(2) with PR_SET_NO_NEW_PRIVS and constant arguments changes only this
        // process's flag.
        if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
            return Err(AgentError::io("PR_SET_NO_NEW_PRIVS")(
                std::io::Error::last_os_error(),
            ));
        }
    }

    let cgroup_path = linux
        .cgroups_path()
        .clone()
        .ok_or_else(|| AgentError::InvalidArgument("linux.cgroupsPath is missing".into()))?;
    join_cgroup(&cgroup_path, linux.resources().as_ref())?;
    let new_cgroup_ns = linux
        .namespaces()
        .iter()
        .flatten()
        .any(|n| n.typ() == LinuxNamespaceType::Cgroup && n.path().is_none());
    if new_cgroup_ns {
        nix::sched::unshare(CloneFlags::CLONE_NEWCGROUP)
            .map_err(|e| AgentError::io("unshare(CLONE_NEWCGROUP)")(e.into()))?;
    }

    if let Some(name) = spec.hostname() {
        syscall
            .set_hostname(name)
            .map_err(|e| failed("setting the hostname")(e.to_string()))?;
    }
    if let Some(name) = spec.domainname() {
        syscall
            .set_domainname(name)
            .map_err(|e| failed("setting the domainname")(e.to_string()))?;
    }
    let mut sysctls: Vec<sysctl::Sysctl> = linux
        .sysctl()
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    sysctls.sort();
    sysctl::apply(Path::new(sysctl::PROC_SYS), &sysctls, sysctl::Scope::Any)?;
    for rlimit in process.rlimits().iter().flatten() {
        syscall.set_rlimit(rlimit).map_err(|e| {
            AgentError::InvalidArgument(format!("process.rlimits {:?}: {e}", rlimit.typ()))
        })?;
    }
    if let Some(adj) = process.oom_score_adj() {
        std::fs::write("/proc/self/oom_score_adj", adj.to_string())
            .map_err(AgentError::io(format!("process.oomScoreAdj {adj}")))?;
    }
    if let Some(umask) = process.user().umask() {
        let mode = nix::sys::stat::Mode::from_bits(umask).ok_or_else(|| {
            AgentError::InvalidArgument(format!("process.user.umask {umask:o} is not a mode"))
        })?;
        nix::sys::stat::umask(mode);
    }

    let root = spec
        .root()
        .as_ref()
        .ok_or_else(|| AgentError::InvalidArgument("spec has no root".into()))?;
    enter_root(root.path(), root.readonly() == Some(true), no_pivot)?;

    let user = process.user();
    let groups: Vec<Gid> = user
        .additional_gids()
        .iter()
        .flatten()
        .map(|g| Gid::from_raw(*g))
        .collect();
    syscall
        .set_groups(&groups)
        .map_err(|e| failed("setgroups(process.user.additionalGids)")(e.to_string()))?;
    syscall
        .set_id(Uid::from_raw(user.uid()), Gid::from_raw(user.gid()))
        .map_err(|e| failed("setting process.user's uid and gid")(e.to_string()))?;
    // Without no_new_privs a filter needs CAP_SYS_ADMIN: install it before the capabilities
    // drop, as libcontainer does; with it, as late as possible.
    if !nnp {
        seccomp(linux.seccomp().as_ref())?;
    }
    libcontainer::capabilities::reset_effective(syscall.as_ref())
        .map_err(|e| failed("raising the effective capabilities")(e.to_string()))?;
    if let Some(caps) = process.capabilities() {
        libcontainer::capabilities::drop_privileges(caps, syscall.as_ref())
            .map_err(|e| failed("setting process.capabilities")(e.to_string()))?;
    }
    if nnp {
        seccomp(linux.seccomp().as_ref())?;
    }
    Ok(())
}

/// Makes `root` this process's root, alone in a mount namespace of its own.
fn enter_root(root: &Path, readonly: bool, no_pivot: bool) -> Result<()> {
    use nix::mount::{mount, umount2, MntFlags, MsFlags};
    let step = |what: &'static str| {
        move |e: nix::errno::Errno| {
            AgentError::io(format!("entering root.path {}: {what}", root.display()))(e.into())
        }
    };
    nix::sched::unshare(CloneFlags::CLONE_NEWNS).map_err(step("unshare(CLONE_NEWNS)"))?;
    let none = None::<&str>;
    mount(none, "/", none, MsFlags::MS_REC | MsFlags::MS_PRIVATE, none)
        .map_err(step("making every mount private"))?;
    mount(
        Some(root),
        root,
        none,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        none,
    )
    .map_err(step("binding it onto itself"))?;
    nix::unistd::chdir(root).map_err(step("chdir"))?;
    if no_pivot {
        mount(Some("."), "/", none, MsFlags::MS_MOVE, none).map_err(step("MS_MOVE onto /"))?;
        nix::unistd::chroot(".").map_err(step("chroot"))?;
    } else {
        nix::unistd::pivot_root(".", ".").map_err(step("pivot_root"))?;
        umount2(".", MntFlags::MNT_DETACH).map_err(step("detaching the old root"))?;
    }
    nix::unistd::chdir("/").map_err(step("chdir /"))?;
    if readonly {
        let flags = MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY;
        mount(none, "/", none, flags, none).map_err(step("remounting it read-only"))?;
    }
    Ok(())
}

/// Creates the container's cgroup, moves this process into it and applies the spec's limits.
fn join_cgroup(path: &Path, resources: Option<&LinuxResources>) -> Result<()> {
    let manager = cgroup::manager(PathBuf::from(path), "sandbox")?;
    manager
        .add_task(Pid::this())
        .map_err(|e| failed("joining the container's cgroup")(e.to_string()))?;
    let none = LinuxResources::default();
    manager
        .apply(&ControllerOpt {
            resources: resources.unwrap_or(&none),
            disable_oom_killer: false,
            oom_score_adj: None,
            freezer_state: None,
        })
        .map_err(|e| AgentError::InvalidArgument(format!("linux.resources: {e}")))
}

fn seccomp(filter: Option<&oci_spec::runtime::LinuxSeccomp>) -> Result<()> {
    let Some(filter) = filter else {
        return Ok(());
    };
    match libcontainer::seccomp::initialize_seccomp(filter) {
        Ok(None) => Ok(()),
        Ok(Some(fd)) => {
            // A notify listener: refused before (spec::prepare); never leave its fd behind.
            let _ = nix::unistd::close(fd);
            Err(AgentError::InvalidArgument(
                "linux.seccomp: SCMP_ACT_NOTIFY is not supported inside a husk VM".into(),
            ))
        }
        Err(e) => Err(AgentError::InvalidArgument(format!("linux.seccomp: {e}"))),
    }
}

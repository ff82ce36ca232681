//! PID 1 duties in the guest: the early mounts, a root that containers can `pivot_root` away
//! from, and the end of the VM.

use std::path::Path;

use nix::mount::{mount, MsFlags};

use crate::error::{AgentError, Result};

/// The mounts every guest needs before anything else: (source, target, fstype, flags, data).
const MOUNTS: &[(&str, &str, &str, u64, &str)] = &[
    ("proc", "/proc", "proc", NOSUID_NODEV_NOEXEC, ""),
    ("sysfs", "/sys", "sysfs", NOSUID_NODEV_NOEXEC, ""),
    ("devtmpfs", "/dev", "devtmpfs", NOSUID, "mode=0755"),
    (
        "devpts",
        "/dev/pts",
        "devpts",
        NOSUID_NOEXEC,
        "gid=5,mode=0620,ptmxmode=0666",
    ),
    ("shm", "/dev/shm", "tmpfs", NOSUID_NODEV, "mode=1777"),
    ("tmpfs", "/run", "tmpfs", NOSUID_NODEV, "mode=0755"),
    (
        "cgroup2",
        "/sys/fs/cgroup",
        "cgroup2",
        NOSUID_NODEV_NOEXEC,
        "nsdelegate",
    ),
];

const NOSUID: u64 = libc::MS_NOSUID;
const NOSUID_NODEV: u64 = libc::MS_NOSUID | libc::MS_NODEV;
const NOSUID_NOEXEC: u64 = libc::MS_NOSUID | libc::MS_NOEXEC;
const NOSUID_NODEV_NOEXEC: u64 = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;

/// The mount table as seen by the agent, behind a trait so the order and the "already mounted"
/// handling are tested without root.
pub trait Mounter {
    /// Creates `target` (and parents).
    fn mkdir(&mut self, target: &str) -> std::io::Result<()>;
    /// mount(2).
    fn mount(
        &mut self,
        source: &str,
        target: &str,
        fstype: &str,
        flags: u64,
        data: &str,
    ) -> std::io::Result<()>;
}

/// The real mount(2).
#[derive(Debug, Default)]
pub struct SysMounter;

impl Mounter for SysMounter {
    fn mkdir(&mut self, target: &str) -> std::io::Result<()> {
        std::fs::create_dir_all(target)
    }

    fn mount(
        &mut self,
        source: &str,
        target: &str,
        fstype: &str,
        flags: u64,
        data: &str,
    ) -> std::io::Result<()> {
        mount(
            Some(source),
            target,
            Some(fstype),
            MsFlags::from_bits_truncate(flags),
            (!data.is_empty()).then_some(data),
        )
        .map_err(std::io::Error::from)
    }
}

/// Mounts /proc, /sys, /dev (+pts, shm), /run and cgroup2. A target that is already mounted
/// (EBUSY) is fine.
pub fn early_mounts(m: &mut dyn Mounter) -> Result<()> {
    for (source, target, fstype, flags, data) in MOUNTS {
        m.mkdir(target)
            .map_err(AgentError::io(format!("mkdir {target}")))?;
        match m.mount(source, target, fstype, *flags, data) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {}
            Err(e) => return Err(AgentError::io(format!("mount {fstype} on {target}"))(e)),
        }
    }
    Ok(())
}

/// statfs(2) f_type of ramfs (the kernel's rootfs when tmpfs is not used for it).
const RAMFS_MAGIC: libc::c_long = 0x858458f6;

/// The initramfs root (rootfs) cannot be pivoted away from: the kernel refuses pivot_root when
/// the current root mount has no parent. Binding the root onto a directory of itself and
/// moving that bind over `/` (what switch_root does, without copying) gives a root mount with a
/// parent, so containers can pivot_root. Must run before anything else is mounted (the bind is
/// not recursive). Returns false when it could not be done (containers then use MS_MOVE +
/// chroot, as `runc --no-pivot`).
pub fn make_root_pivotable() -> bool {
    const NEW_ROOT: &str = "/sysroot";
    let attempt = || -> nix::Result<()> {
        let statfs = nix::sys::statfs::statfs("/")?;
        let t = statfs.filesystem_type();
        if t != nix::sys::statfs::FsType(RAMFS_MAGIC) && t != nix::sys::statfs::TMPFS_MAGIC {
            return Ok(()); // not an initramfs root: nothing to do
        }
        std::fs::create_dir_all(NEW_ROOT).map_err(|_| nix::errno::Errno::EIO)?;
        mount(
            Some("/"),
            NEW_ROOT,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )?;
        nix::unistd::chdir(NEW_ROOT)?;
        mount(
            Some(NEW_ROOT),
            "/",
            None::<&str>,
            MsFlags::MS_MOVE,
            None::<&str>,
        )?;
        nix::unistd::chroot(".")?;
        nix::unistd::chdir("/")?;
        Ok(())
    };
    match attempt() {
        Ok(()) => true,
        Err(e) => {
            eprintln!("husk-agent: cannot make the root pivotable ({e}); containers use chroot");
            false
        }
    }
}

/// Ends the VM: every container is already killed; flush the disks and reset (with the guest's
/// `reboot=k`, husk-vmm reports the i8042 reset as a guest shutdown).
pub fn power_off() -> ! {
    nix::unistd::sync();
    let _ = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_AUTOBOOT);
    // reboot(2) does not return on success; if it failed, PID 1 must still never exit.
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}

/// True when running as the guest's init.
pub fn is_pid1() -> bool {
    std::process::id() == 1
}

/// Whether `path` is a mount point (its device differs from its parent's).
pub fn is_mount_point(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (
        std::fs::metadata(path),
        path.parent().map(std::fs::metadata),
    ) {
        (Ok(a), Some(Ok(b))) => a.dev() != b.dev(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Recorder {
        mounted: Vec<String>,
        busy: Vec<&'static str>,
        fail: Option<&'static str>,
    }

    impl Mounter for Recorder {
        fn mkdir(&mut self, _: &str) -> std::io::Result<()> {
            Ok(())
        }
        fn mount(
            &mut self,
            _: &str,
            target: &str,
            fstype: &str,
            _: u64,
            _: &str,
        ) -> std::io::Result<()> {
            if self.busy.contains(&target) {
                return Err(std::io::Error::from_raw_os_error(libc::EBUSY));
            }
            if self.fail == Some(target) {
                return Err(std::io::Error::from_raw_os_error(libc::ENODEV));
            }
            self.mounted.push(format!("{fstype}:{target}"));
            Ok(())
        }
    }

    #[test]
    fn mounts_come_in_dependency_order_and_busy_is_fine() {
        let mut r = Recorder {
            busy: vec!["/dev"],
            ..Default::default()
        };
        early_mounts(&mut r).unwrap();
        let pos = |t: &str| r.mounted.iter().position(|m| m.ends_with(t)).unwrap();
        assert!(pos(":/sys") < pos(":/sys/fs/cgroup"));
        assert!(pos(":/proc") < pos(":/dev/pts"));
        assert!(!r.mounted.iter().any(|m| m == "devtmpfs:/dev"));
        assert!(r.mounted.iter().any(|m| m == "cgroup2:/sys/fs/cgroup"));
    }

    #[test]
    fn a_failed_mount_names_its_target() {
        let mut r = Recorder {
            fail: Some("/sys/fs/cgroup"),
            ..Default::default()
        };
        let e = early_mounts(&mut r).unwrap_err().to_string();
        assert!(e.contains("cgroup2 on /sys/fs/cgroup"), "{e}");
    }

    #[test]
    fn proc_is_a_mount_point() {
        assert!(is_mount_point(Path::new("/proc")));
        assert!(!is_pid1());
    }
}

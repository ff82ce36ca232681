//! The sandbox's virtio-fs share, built so that the guest can neither prepare nor redirect
//! anything the host later puts there (the class of Kata's CVE-2020-2026: a guest that turns a
//! directory of the share into a symlink so that the host mounts or deletes outside it).
//!
//! - `<root>/.share`, the *staging* view: a small tmpfs of the sandbox's own
//!   (`nosuid,nodev,noexec`, [`TMPFS_OPTIONS`]), writable only through this mount, which only
//!   the shim uses: it holds each container's skeleton, `<cid>/rootfs/` and
//!   `<cid>/mounts/<n>` (a directory or an empty file), nothing else.
//! - `<root>/shared`, the *guest* view and husk-vmm's virtio-fs root: a read-only bind of the
//!   same tmpfs. The guest sees the skeleton and cannot add, remove, rename or replace any of it
//!   (EROFS), so nothing the shim later resolves there can be a symlink or a directory the guest
//!   made, and the guest cannot fill the host's `/run` through the share. A container's rootfs
//!   and its bind mounts are mounted on the skeleton's mount points in this view and are as
//!   writable as containerd and the spec make them.
//! - Every path below either view is opened from the view's directory descriptor with
//!   `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)` ([`fsat`]) and mounted through
//!   `/proc/self/fd/N`; removal walks by descriptor and never enters another filesystem, so a
//!   mount that failed to go away is reported, never emptied.

use std::ffi::OsStr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::fcntl::OFlag;
use nix::mount::{mount, MsFlags};

use crate::fsat::{self, FsAtError};
use crate::paths::SandboxPaths;
use crate::unmount::{self, UnmountError};

/// The staging tmpfs: room for skeletons only (the guest never writes it).
pub const TMPFS_OPTIONS: &str = "size=1m,nr_inodes=16384,mode=0755";

/// A share operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum ShareError {
    /// A path operation below the share failed.
    #[error("the sandbox share: {0}")]
    Path(#[from] FsAtError),
    /// Mounting failed.
    #[error("the sandbox share: mounting {what} on {target}: {source}")]
    Mount {
        /// What was mounted.
        what: String,
        /// Where.
        target: PathBuf,
        /// Why.
        #[source]
        source: nix::Error,
    },
    /// Unmounting what was below a container's directory failed.
    #[error("the sandbox share: {0}")]
    Unmount(#[from] UnmountError),
    /// Removing a container's writes from the sandbox's writable file system failed.
    #[error(transparent)]
    Writable(#[from] crate::writable::WritableError),
    /// Creating the share's directories on the host failed.
    #[error("the sandbox share: creating {path}: {source}")]
    Create {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

fn mount_err(what: &str, target: &Path) -> impl FnOnce(nix::Error) -> ShareError {
    let what = what.to_string();
    let target = target.to_path_buf();
    move |source| ShareError::Mount {
        what,
        target,
        source,
    }
}

/// What a mount point in the skeleton is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MountPoint {
    /// A directory.
    Dir,
    /// An empty regular file (for a file bind).
    File,
}

/// Makes the share of a sandbox whose state directory `paths.root()` exists: the staging
/// tmpfs and the read-only guest view on top of it.
pub fn create(paths: &SandboxPaths) -> Result<(), ShareError> {
    let (staging, view) = (paths.share_staging(), paths.shared());
    for dir in [&staging, &view] {
        std::fs::create_dir(dir).map_err(|source| ShareError::Create {
            path: dir.clone(),
            source,
        })?;
    }
    let hidden = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount(
        Some("husk-share"),
        &staging,
        Some("tmpfs"),
        hidden,
        Some(TMPFS_OPTIONS),
    )
    .map_err(mount_err("a tmpfs", &staging))?;
    mount(
        Some(&staging),
        &view,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(mount_err("the staging view", &view))?;
    mount(
        None::<&str>,
        &view,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | hidden,
        None::<&str>,
    )
    .map_err(mount_err("a read-only remount", &view))?;
    Ok(())
}

/// Creates container `cid`'s skeleton in the staging view: `rootfs/` and one mount point per
/// bind, in order.
pub fn add_container(
    paths: &SandboxPaths,
    cid: &str,
    binds: &[MountPoint],
) -> Result<(), ShareError> {
    let staging = fsat::open_path_dir(&paths.share_staging())?;
    fsat::mkdir(staging.as_fd(), OsStr::new(cid), 0o755)?;
    let dir = fsat::open_dir(staging.as_fd(), Path::new(cid))?;
    fsat::mkdir(dir.as_fd(), OsStr::new("rootfs"), 0o755)?;
    if binds.is_empty() {
        return Ok(());
    }
    fsat::mkdir(dir.as_fd(), OsStr::new("mounts"), 0o755)?;
    let mounts = fsat::open_dir(dir.as_fd(), Path::new("mounts"))?;
    for (n, kind) in binds.iter().enumerate() {
        let name = n.to_string();
        match kind {
            MountPoint::Dir => fsat::mkdir(mounts.as_fd(), OsStr::new(&name), 0o755)?,
            MountPoint::File => fsat::touch(mounts.as_fd(), OsStr::new(&name), 0o644)?,
        }
    }
    Ok(())
}

/// A mount point in the guest view, held open: mount on it through [`Target::proc_path`].
#[derive(Debug)]
pub struct Target {
    fd: OwnedFd,
    /// The mount point's path, for messages.
    pub shown: PathBuf,
}

impl Target {
    /// `/proc/self/fd/N`: the magic link mount(2) resolves to exactly this inode.
    pub fn proc_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.fd.as_raw_fd()))
    }
}

/// Opens `rel` (below the guest view: `<cid>/rootfs`, `<cid>/mounts/<n>`) as a mount target,
/// on the share's own filesystem and without following symlinks. With `on_top`, what is
/// opened is whatever is mounted there now (to remount it).
pub fn target(paths: &SandboxPaths, rel: &Path, on_top: bool) -> Result<Target, ShareError> {
    let view = fsat::open_path_dir(&paths.shared())?;
    let fd = fsat::open_beneath(view.as_fd(), rel, OFlag::O_PATH, !on_top)?;
    Ok(Target {
        fd,
        shown: paths.shared().join(rel),
    })
}

/// Unmounts everything below container `cid`'s directory in the guest view, removes its
/// skeleton from the staging view and its writes from the sandbox's writable file system, if
/// it has one ([`crate::writable`]). A missing container is fine.
pub fn remove_container(paths: &SandboxPaths, cid: &str) -> Result<(), ShareError> {
    let dir = paths.container(cid);
    if std::fs::symlink_metadata(&dir).is_ok() {
        unmount::unmount_below(&dir)?;
        let staging = fsat::open_path_dir(&paths.share_staging())?;
        fsat::remove_tree(staging.as_fd(), OsStr::new(cid))?;
    }
    crate::writable::remove_container(paths, cid)?;
    Ok(())
}

/// Whether no container has a skeleton in the share (a missing share counts as empty).
pub fn is_empty(paths: &SandboxPaths) -> bool {
    std::fs::read_dir(paths.shared())
        .map(|mut d| d.next().is_none())
        .unwrap_or(true)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use crate::unmount::unmount_and_remove;

    /// The real share: mounts, so root only (`make unit` runs it as root).
    #[test]
    #[ignore = "needs root: mounts a tmpfs and binds"]
    fn the_guest_view_is_read_only_and_mounts_land_only_in_the_share() {
        let t = tempfile::tempdir().unwrap();
        let paths = SandboxPaths::new(t.path(), "sb");
        std::fs::create_dir(paths.root()).unwrap();
        std::fs::set_permissions(paths.root(), std::fs::Permissions::from_mode(0o700)).unwrap();
        create(&paths).unwrap();
        let canary = t.path().join("canary");
        std::fs::create_dir(&canary).unwrap();
        let volume = t.path().join("volume");
        std::fs::create_dir(&volume).unwrap();
        std::fs::write(volume.join("data"), b"v").unwrap();

        // What a guest could try through the share: nothing sticks.
        let view = paths.shared();
        for attempt in [
            std::fs::create_dir(view.join("c1")),
            std::fs::write(view.join("f"), b"x"),
            std::os::unix::fs::symlink(&canary, view.join("c1")),
        ] {
            let e = attempt.unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{e}");
        }

        add_container(&paths, "c1", &[MountPoint::Dir, MountPoint::File]).unwrap();
        assert!(view.join("c1/rootfs").is_dir() && view.join("c1/mounts/1").is_file());
        assert_eq!(
            std::fs::create_dir(view.join("c1/rootfs/x"))
                .unwrap_err()
                .raw_os_error(),
            Some(libc::EROFS),
            "an unmounted mount point is read-only to the guest too"
        );
        let point = target(&paths, Path::new("c1/mounts/0"), false).unwrap();
        mount(
            Some(&volume),
            &point.proc_path(),
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .unwrap();
        assert_eq!(std::fs::read(view.join("c1/mounts/0/data")).unwrap(), b"v");
        std::fs::write(view.join("c1/mounts/0/new"), b"w").unwrap();
        assert!(
            target(&paths, Path::new("c1/mounts/0/../../../.."), false).is_err(),
            "a target outside the share"
        );

        remove_container(&paths, "c1").unwrap();
        assert!(!view.join("c1").exists());
        assert_eq!(
            std::fs::read(volume.join("new")).unwrap(),
            b"w",
            "the volume is kept"
        );
        remove_container(&paths, "c1").unwrap();
        unmount_and_remove(paths.root()).unwrap();
        assert!(!paths.root().exists());
        assert!(canary.exists() && volume.join("data").exists());
    }
}

//! Host-side filesystems of a container, all inside the sandbox's virtio-fs share
//! ([`crate::share`]): containerd's rootfs mounts (overlay or bind from the snapshotter) at
//! `<shared>/<cid>/rootfs`, and the spec's host bind mounts at `<shared>/<cid>/mounts/<n>`
//! (read-only on the host too when the spec says so). Each mount point is created by the shim
//! in the share's staging view, opened in the guest view without following symlinks, and
//! mounted on through its descriptor.
//!
//! The rootfs stays writable on the host even when the spec says `root.readonly`: the guest's
//! runtime applies that after it has created the mount points the spec needs (CRI's pause
//! container has a read-only root and bind mounts onto files such as `/etc/resolv.conf` that
//! its image lacks), exactly as runc does on the host. The container rootfs is the guest's to
//! write in any case: it is the pod's own snapshot.

use std::path::{Path, PathBuf};

use containerd_shim_protos::api::Mount;
use nix::mount::{mount, MsFlags};

use crate::paths::SandboxPaths;
use crate::share::{self, MountPoint, ShareError};
use crate::spec::HostBind;
use crate::writable::{self, WritableError};

/// A mount that failed.
#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    /// Mounting failed.
    #[error("mounting {what} on {target}: {message}")]
    Mount {
        /// What was mounted.
        what: String,
        /// Where.
        target: PathBuf,
        /// Why.
        message: String,
    },
    /// A host bind source is neither a file nor a directory.
    #[error("bind mount source {0}: husk shares only files and directories with the VM")]
    BindKind(PathBuf),
    /// A host bind source cannot be read.
    #[error("bind mount source {path}: {source}")]
    BindSource {
        /// The source.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The share refused a mount point.
    #[error(transparent)]
    Share(#[from] ShareError),
    /// The sandbox's writable-layer limit cannot take this root file system.
    #[error(transparent)]
    Writable(#[from] WritableError),
}

fn bind(
    source: &Path,
    target: &share::Target,
    flags: MsFlags,
    what: &str,
) -> Result<(), RootfsError> {
    mount(
        Some(source),
        &target.proc_path(),
        None::<&str>,
        flags,
        None::<&str>,
    )
    .map_err(|e| RootfsError::Mount {
        what: what.to_string(),
        target: target.shown.clone(),
        message: e.to_string(),
    })
}

/// Mounts container `cid`'s filesystems into the share: containerd's rootfs (or, when the list
/// is empty, the spec's `root.path`) and each host bind. On failure the caller removes the
/// container from the share ([`share::remove_container`]).
pub fn mount_container(
    paths: &SandboxPaths,
    cid: &str,
    rootfs: &[Mount],
    root_path: Option<&Path>,
    binds: &[HostBind],
) -> Result<(), RootfsError> {
    let kinds = binds
        .iter()
        .map(|b| match std::fs::metadata(&b.source) {
            Ok(m) if m.is_dir() => Ok(MountPoint::Dir),
            Ok(m) if m.is_file() => Ok(MountPoint::File),
            Ok(_) => Err(RootfsError::BindKind(b.source.clone())),
            Err(source) => Err(RootfsError::BindSource {
                path: b.source.clone(),
                source,
            }),
        })
        .collect::<Result<Vec<_>, _>>()?;
    // With a writable-layer limit, the overlay's upper directory moves onto the sandbox's
    // limited file system (or the container is refused, naming the setting).
    let rootfs = writable::redirect(paths, cid, rootfs)?;
    share::add_container(paths, cid, &kinds)?;
    let target = share::target(paths, &Path::new(cid).join("rootfs"), false)?;
    mount_rootfs(&rootfs, root_path, &target)?;
    for (n, b) in binds.iter().enumerate() {
        let rel = Path::new(cid).join("mounts").join(n.to_string());
        let mut flags = MsFlags::MS_BIND;
        if b.recursive {
            flags |= MsFlags::MS_REC;
        }
        let t = share::target(paths, &rel, false)?;
        bind(&b.source, &t, flags, &b.source.display().to_string())?;
        if b.readonly {
            // The bind now on top of the mount point, not the mount point itself.
            let on_top = share::target(paths, &rel, true)?;
            let ro = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
            bind(Path::new(""), &on_top, ro, "a read-only remount")?;
        }
    }
    Ok(())
}

/// Mounts containerd's rootfs (or the spec's `root.path`) on `target`. Runs the mounts on a
/// thread of its own: the crate's overlay helper may `chdir` (after `unshare(CLONE_FS)`) to
/// shorten long lowerdir options, which must not touch the shim's cwd.
fn mount_rootfs(
    rootfs: &[Mount],
    root_path: Option<&Path>,
    target: &share::Target,
) -> Result<(), RootfsError> {
    let mounts = rootfs.to_vec();
    let root_path = root_path.map(Path::to_path_buf);
    let (tgt, shown) = (target.proc_path(), target.shown.clone());
    let failed = |what: String, message: String| RootfsError::Mount {
        what,
        target: shown.clone(),
        message,
    };
    std::thread::scope(|s| {
        s.spawn(|| -> Result<(), RootfsError> {
            if mounts.is_empty() {
                let src = root_path.ok_or_else(|| {
                    failed(
                        "the rootfs".into(),
                        "containerd sent no rootfs mounts and the spec has no root.path".into(),
                    )
                })?;
                let flags = MsFlags::MS_BIND | MsFlags::MS_REC;
                return mount(Some(&src), &tgt, None::<&str>, flags, None::<&str>)
                    .map_err(|e| failed("root.path".into(), e.to_string()));
            }
            for m in &mounts {
                containerd_shim::mount::mount_rootfs(
                    Some(m.type_.as_str()).filter(|t| !t.is_empty()),
                    Some(m.source.as_str()).filter(|s| !s.is_empty()),
                    &m.options,
                    &tgt,
                )
                .map_err(|e| failed(format!("{} {}", m.type_, m.source), e.to_string()))?;
            }
            Ok(())
        })
        .join()
        .unwrap_or_else(|_| {
            Err(failed(
                "the rootfs".into(),
                "the mount thread panicked".into(),
            ))
        })
    })
}

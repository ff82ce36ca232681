//! Host-side filesystems of a container, all inside the sandbox's virtio-fs share:
//! containerd's rootfs mounts (overlay or bind from the snapshotter) at
//! `<shared>/<cid>/rootfs`, and the spec's host bind mounts at `<shared>/<cid>/mounts/<n>`
//! (read-only on the host too when the spec says so).
//!
//! The rootfs stays writable on the host even when the spec says `root.readonly`: the guest's
//! runtime applies that after it has created the mount points the spec needs (CRI's pause
//! container has a read-only root and bind mounts onto files such as `/etc/resolv.conf` that
//! its image lacks), exactly as runc does on the host. The container rootfs is the guest's to
//! write in any case: it is the pod's own snapshot.
//!
//! Unmounting never follows symlinks and never deletes through a mount: mount points come
//! from `/proc/self/mountinfo` (canonical paths), are detached deepest first with
//! `MNT_DETACH | UMOUNT_NOFOLLOW`, and a directory is only removed once nothing is mounted
//! below it, by a walk that refuses to cross into another filesystem.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use containerd_shim_protos::api::Mount;
use nix::mount::{mount, umount2, MntFlags, MsFlags};

use crate::spec::HostBind;

/// A mount or unmount that failed.
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
    /// Unmounting failed.
    #[error("unmounting {target}: {source}")]
    Unmount {
        /// The mount point.
        target: PathBuf,
        /// Why.
        #[source]
        source: nix::Error,
    },
    /// Something is still mounted below a directory the shim wanted to remove.
    #[error("{0} still has mounts below it; not removing it")]
    StillMounted(PathBuf),
    /// A host I/O error.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> RootfsError {
    let context = context.into();
    move |source| RootfsError::Io { context, source }
}

fn nix_mount(source: &Path, target: &Path, flags: MsFlags, what: &str) -> Result<(), RootfsError> {
    mount(Some(source), target, None::<&str>, flags, None::<&str>).map_err(|e| RootfsError::Mount {
        what: what.to_string(),
        target: target.to_path_buf(),
        message: e.to_string(),
    })
}

/// Mounts containerd's rootfs (or, when the list is empty, the spec's `root.path`) on `target`.
/// Runs the mounts on a thread of its own: the crate's overlay helper may `chdir` (after
/// `unshare(CLONE_FS)`) to shorten long lowerdir options, which must not touch the shim's cwd.
pub fn mount_rootfs(
    rootfs: &[Mount],
    root_path: Option<&Path>,
    target: &Path,
) -> Result<(), RootfsError> {
    std::fs::create_dir_all(target).map_err(io(format!("creating {}", target.display())))?;
    let mounts = rootfs.to_vec();
    let root_path = root_path.map(Path::to_path_buf);
    let tgt = target.to_path_buf();
    let result = std::thread::spawn(move || -> Result<(), RootfsError> {
        if mounts.is_empty() {
            let src = root_path.ok_or_else(|| RootfsError::Mount {
                what: "the rootfs".into(),
                target: tgt.clone(),
                message: "containerd sent no rootfs mounts and the spec has no root.path".into(),
            })?;
            nix_mount(&src, &tgt, MsFlags::MS_BIND | MsFlags::MS_REC, "root.path")?;
        }
        for m in &mounts {
            containerd_shim::mount::mount_rootfs(
                Some(m.type_.as_str()).filter(|t| !t.is_empty()),
                Some(m.source.as_str()).filter(|s| !s.is_empty()),
                &m.options,
                &tgt,
            )
            .map_err(|e| RootfsError::Mount {
                what: format!("{} {}", m.type_, m.source),
                target: tgt.clone(),
                message: e.to_string(),
            })?;
        }
        Ok(())
    })
    .join()
    .unwrap_or_else(|_| {
        Err(RootfsError::Mount {
            what: "the rootfs".into(),
            target: target.to_path_buf(),
            message: "the mount thread panicked".into(),
        })
    });
    result
}

/// Bind-mounts each host source at `target(n)` (file or directory, read-only if asked).
pub fn share_binds(
    binds: &[HostBind],
    target: impl Fn(usize) -> PathBuf,
) -> Result<(), RootfsError> {
    for (n, b) in binds.iter().enumerate() {
        let t = target(n);
        let meta = std::fs::metadata(&b.source)
            .map_err(io(format!("bind mount source {}", b.source.display())))?;
        if let Some(parent) = t.parent() {
            std::fs::create_dir_all(parent)
                .map_err(io(format!("creating {}", parent.display())))?;
        }
        if meta.is_dir() {
            std::fs::create_dir_all(&t).map_err(io(format!("creating {}", t.display())))?;
        } else if meta.is_file() {
            std::fs::write(&t, b"").map_err(io(format!("creating {}", t.display())))?;
        } else {
            return Err(RootfsError::BindKind(b.source.clone()));
        }
        let mut flags = MsFlags::MS_BIND;
        if b.recursive {
            flags |= MsFlags::MS_REC;
        }
        nix_mount(&b.source, &t, flags, &b.source.display().to_string())?;
        if b.readonly {
            nix_mount(
                &t,
                &t,
                MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
                "a read-only remount",
            )?;
        }
    }
    Ok(())
}

/// Decodes mountinfo's octal escapes (`\040` for a space, ...).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() {
            if let Ok(v) = u8::from_str_radix(&field[i + 1..i + 4], 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Mount points at or below `dir`, deepest (latest) first, from mountinfo text.
pub fn mounts_below(mountinfo: &str, dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape(p)))
        .filter(|p| p.starts_with(dir))
        .collect();
    // Later lines are mounted on top of earlier ones; longer paths are below shorter ones.
    found.reverse();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found
}

fn read_mountinfo() -> Result<String, RootfsError> {
    std::fs::read_to_string("/proc/self/mountinfo").map_err(io("reading /proc/self/mountinfo"))
}

/// Detaches every mount at or below `dir`. Returns how many were detached.
pub fn unmount_below(dir: &Path) -> Result<usize, RootfsError> {
    let mut count = 0;
    // Stacked mounts (a read-only bind on an overlay) need one detach each: go round until
    // mountinfo shows nothing left, bounded.
    for _ in 0..8 {
        let targets = mounts_below(&read_mountinfo()?, dir);
        if targets.is_empty() {
            return Ok(count);
        }
        for t in targets {
            match umount2(&t, MntFlags::MNT_DETACH | MntFlags::UMOUNT_NOFOLLOW) {
                Ok(()) => count += 1,
                Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => {}
                Err(source) => return Err(RootfsError::Unmount { target: t, source }),
            }
        }
    }
    if mounts_below(&read_mountinfo()?, dir).is_empty() {
        Ok(count)
    } else {
        Err(RootfsError::StillMounted(dir.to_path_buf()))
    }
}

/// Removes `dir` recursively without following symlinks or crossing into another filesystem.
fn remove_same_fs(dir: &Path, dev: u64) -> Result<(), RootfsError> {
    let meta = match std::fs::symlink_metadata(dir) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io(format!("reading {}", dir.display()))(e)),
    };
    if !meta.is_dir() {
        return std::fs::remove_file(dir).map_err(io(format!("removing {}", dir.display())));
    }
    if meta.dev() != dev {
        return Err(RootfsError::StillMounted(dir.to_path_buf()));
    }
    for entry in std::fs::read_dir(dir).map_err(io(format!("listing {}", dir.display())))? {
        let entry = entry.map_err(io(format!("listing {}", dir.display())))?;
        remove_same_fs(&entry.path(), dev)?;
    }
    std::fs::remove_dir(dir).map_err(io(format!("removing {}", dir.display())))
}

/// Unmounts everything below `dir` and removes it. Missing `dir` is fine (idempotent).
pub fn unmount_and_remove(dir: &Path) -> Result<(), RootfsError> {
    if std::fs::symlink_metadata(dir).is_err() {
        return Ok(());
    }
    unmount_below(dir)?;
    let dev = match dir.parent().map(std::fs::metadata) {
        Some(Ok(m)) => m.dev(),
        _ => std::fs::symlink_metadata(dir)
            .map_err(io(format!("reading {}", dir.display())))?
            .dev(),
    };
    remove_same_fs(dir, dev)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_is_parsed_deepest_first_with_escapes() {
        let text = "\
22 1 0:21 / /run rw - tmpfs tmpfs rw
30 22 0:40 / /run/husk/sb/shared/c1/rootfs rw - overlay overlay rw,lowerdir=/a
31 30 0:40 / /run/husk/sb/shared/c1/rootfs rw - overlay overlay ro
32 22 8:1 /srv /run/husk/sb/shared/c1/mounts/0 rw - ext4 /dev/vda rw
33 22 8:1 /x /run/husk/sb/shared/c2/my\\040dir rw - ext4 /dev/vda rw
34 22 8:1 /x /run/husk/sb2/shared rw - ext4 /dev/vda rw
";
        let m = mounts_below(text, Path::new("/run/husk/sb/shared/c1"));
        assert_eq!(
            m,
            vec![
                PathBuf::from("/run/husk/sb/shared/c1/mounts/0"),
                PathBuf::from("/run/husk/sb/shared/c1/rootfs"),
                PathBuf::from("/run/husk/sb/shared/c1/rootfs"),
            ]
        );
        let all = mounts_below(text, Path::new("/run/husk/sb"));
        assert_eq!(all.len(), 4);
        assert!(all.contains(&PathBuf::from("/run/husk/sb/shared/c2/my dir")));
        assert!(!all.contains(&PathBuf::from("/run/husk/sb2/shared")));
    }

    #[test]
    fn removal_is_idempotent_and_keeps_symlink_targets() {
        let dir = tempfile::tempdir().unwrap();
        let keep = dir.path().join("keep");
        std::fs::create_dir(&keep).unwrap();
        std::fs::write(keep.join("precious"), b"x").unwrap();
        let gone = dir.path().join("gone");
        std::fs::create_dir_all(gone.join("a/b")).unwrap();
        std::os::unix::fs::symlink(&keep, gone.join("a/link")).unwrap();
        unmount_and_remove(&gone).unwrap();
        assert!(!gone.exists());
        assert!(keep.join("precious").exists());
        unmount_and_remove(&gone).unwrap();
    }
}

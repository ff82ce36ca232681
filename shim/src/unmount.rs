//! Unmounting and removing what husk mounted on the host. Mount points come from
//! `/proc/self/mountinfo` (canonical paths, never a guest-made link), are detached deepest
//! first with `MNT_DETACH | UMOUNT_NOFOLLOW`, and a directory is only removed once nothing is
//! mounted below it, by a descriptor walk ([`crate::fsat::remove_tree`]) that never follows a
//! symlink and refuses to enter another filesystem: a volume that failed to unmount is
//! reported, never emptied.

use std::ffi::OsStr;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use nix::mount::{umount2, MntFlags};

use crate::fsat::{self, FsAtError};

/// An unmount or removal that failed.
#[derive(Debug, thiserror::Error)]
pub enum UnmountError {
    /// Unmounting failed.
    #[error("unmounting {target}: {source}")]
    Unmount {
        /// The mount point.
        target: PathBuf,
        /// Why.
        #[source]
        source: nix::Error,
    },
    /// Something is still mounted below a directory to remove.
    #[error("{0} still has mounts below it; not removing it")]
    StillMounted(PathBuf),
    /// mountinfo could not be read.
    #[error("reading /proc/self/mountinfo: {0}")]
    Mountinfo(#[source] std::io::Error),
    /// Removing the directory failed.
    #[error("removing {dir}: {source}")]
    Remove {
        /// The directory.
        dir: PathBuf,
        /// Why.
        #[source]
        source: FsAtError,
    },
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

fn read_mountinfo() -> Result<String, UnmountError> {
    // The host kernel's own account of the shim's mounts: the guest cannot add to it.
    std::fs::read_to_string("/proc/self/mountinfo").map_err(UnmountError::Mountinfo)
}

/// Detaches every mount at or below `dir`. Returns how many were detached.
pub fn unmount_below(dir: &Path) -> Result<usize, UnmountError> {
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
                Err(source) => return Err(UnmountError::Unmount { target: t, source }),
            }
        }
    }
    if mounts_below(&read_mountinfo()?, dir).is_empty() {
        Ok(count)
    } else {
        Err(UnmountError::StillMounted(dir.to_path_buf()))
    }
}

/// Unmounts everything below `dir` and removes it. Missing `dir` is fine (idempotent).
pub fn unmount_and_remove(dir: &Path) -> Result<(), UnmountError> {
    if std::fs::symlink_metadata(dir).is_err() {
        return Ok(());
    }
    unmount_below(dir)?;
    let remove = |source| UnmountError::Remove {
        dir: dir.to_path_buf(),
        source,
    };
    let (Some(parent), Some(name)) = (dir.parent(), dir.file_name()) else {
        return Err(remove(FsAtError::Sys {
            op: "removing",
            path: dir.to_path_buf(),
            source: nix::Error::EINVAL,
        }));
    };
    let parent = fsat::open_path_dir(parent).map_err(remove)?;
    fsat::remove_tree(parent.as_fd(), OsStr::new(name)).map_err(remove)
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

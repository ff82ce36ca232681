//! Path operations relative to a directory descriptor that never follow a symlink and never
//! leave the tree they start in: `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`, `*at`
//! calls with `O_NOFOLLOW`, and a removal walk that holds each directory open while it empties
//! it and refuses to enter another filesystem. Nothing here re-resolves a full path, so an
//! entry swapped for a symlink between two steps is never followed.

use std::ffi::OsStr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::dir::Dir;
use nix::fcntl::{openat2, AtFlags, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{fstat, fstatat, mkdirat, Mode, SFlag};
use nix::unistd::{unlinkat, UnlinkatFlags};

/// How deep a removal walk goes before it gives up (husk's own trees are at most 4 deep).
const MAX_DEPTH: usize = 64;

/// A path operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum FsAtError {
    /// A system call failed on a path.
    #[error("{op} {path}: {source}")]
    Sys {
        /// The operation.
        op: &'static str,
        /// The path (relative to the tree's root where it is one).
        path: PathBuf,
        /// Why.
        #[source]
        source: nix::Error,
    },
    /// A directory to remove lies on another filesystem (a mount that failed to go away).
    #[error("{0} is on another filesystem (still mounted?); not removing it")]
    OtherFilesystem(PathBuf),
    /// The tree is deeper than [`MAX_DEPTH`].
    #[error("{0} is nested too deeply to remove")]
    TooDeep(PathBuf),
    /// A name that is not one entry of its directory (`/`, `.` or `..` in it).
    #[error("{0:?} is not a single directory entry")]
    NotAnEntry(PathBuf),
}

/// `name` as one entry of a directory: never a path that could leave it.
fn entry(name: &OsStr) -> Result<&Path, FsAtError> {
    let b = name.as_bytes();
    if b.is_empty() || b == b"." || b == b".." || b.contains(&b'/') {
        return Err(FsAtError::NotAnEntry(PathBuf::from(name)));
    }
    Ok(Path::new(name))
}

fn sys(op: &'static str, path: &Path) -> impl FnOnce(nix::Error) -> FsAtError {
    let path = path.to_path_buf();
    move |source| FsAtError::Sys { op, path, source }
}

/// Opens `rel` beneath `dir` without following any symlink. With `same_fs`, the walk may not
/// cross a mount point either (`RESOLVE_NO_XDEV`); without it, the result may be the root of
/// a mount on top of `rel` (to remount it).
pub fn open_beneath(
    dir: BorrowedFd<'_>,
    rel: &Path,
    flags: OFlag,
    same_fs: bool,
) -> Result<OwnedFd, FsAtError> {
    let mut resolve = ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS;
    if same_fs {
        resolve |= ResolveFlag::RESOLVE_NO_XDEV;
    }
    let how = OpenHow::new()
        .flags(flags | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW)
        .resolve(resolve);
    let fd = openat2(dir.as_raw_fd(), rel, how).map_err(sys("opening", rel))?;
    // SAFETY: openat2 returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Opens the directory at host path `path` (its last component must not be a symlink): the
/// starting point of a walk, for trees whose parents the guest cannot reach.
pub fn open_path_dir(path: &Path) -> Result<OwnedFd, FsAtError> {
    let flags = OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let fd = nix::fcntl::open(path, flags, Mode::empty()).map_err(sys("opening", path))?;
    // SAFETY: open returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Opens directory `rel` beneath `dir` (same filesystem, no symlinks).
pub fn open_dir(dir: BorrowedFd<'_>, rel: &Path) -> Result<OwnedFd, FsAtError> {
    open_beneath(dir, rel, OFlag::O_DIRECTORY | OFlag::O_RDONLY, true)
}

/// Creates directory `name` in `dir` (an existing one is fine if it is a real directory).
pub fn mkdir(dir: BorrowedFd<'_>, name: &OsStr, mode: u32) -> Result<(), FsAtError> {
    let path = entry(name)?;
    match mkdirat(Some(dir.as_raw_fd()), path, Mode::from_bits_truncate(mode)) {
        Ok(()) | Err(nix::Error::EEXIST) => {}
        Err(e) => return Err(sys("creating directory", path)(e)),
    }
    let st = fstatat(Some(dir.as_raw_fd()), path, AtFlags::AT_SYMLINK_NOFOLLOW)
        .map_err(sys("reading", path))?;
    if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT != SFlag::S_IFDIR {
        return Err(sys("creating directory", path)(nix::Error::ENOTDIR));
    }
    Ok(())
}

/// Creates the empty regular file `name` in `dir` (a mount point for a file bind).
pub fn touch(dir: BorrowedFd<'_>, name: &OsStr, mode: u32) -> Result<(), FsAtError> {
    let path = entry(name)?;
    let flags = OFlag::O_CREAT | OFlag::O_WRONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let fd = nix::fcntl::openat(
        Some(dir.as_raw_fd()),
        path,
        flags,
        Mode::from_bits_truncate(mode),
    )
    .map_err(sys("creating", path))?;
    // SAFETY: openat returned a new descriptor that nothing else owns; dropping closes it.
    drop(unsafe { OwnedFd::from_raw_fd(fd) });
    Ok(())
}

/// Removes entry `name` of `parent` and everything below it, by descriptor, staying on the
/// filesystem `parent` is on. A missing entry is fine.
pub fn remove_tree(parent: BorrowedFd<'_>, name: &OsStr) -> Result<(), FsAtError> {
    entry(name)?;
    let dev = fstat(parent.as_raw_fd())
        .map_err(sys("reading", Path::new(".")))?
        .st_dev;
    remove_entry(parent, name, dev, Path::new(name), 0)
}

fn remove_entry(
    parent: BorrowedFd<'_>,
    name: &OsStr,
    dev: u64,
    shown: &Path,
    depth: usize,
) -> Result<(), FsAtError> {
    let st = match fstatat(
        Some(parent.as_raw_fd()),
        Path::new(name),
        AtFlags::AT_SYMLINK_NOFOLLOW,
    ) {
        Ok(st) => st,
        Err(nix::Error::ENOENT) => return Ok(()),
        Err(e) => return Err(sys("reading", shown)(e)),
    };
    if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT != SFlag::S_IFDIR {
        return unlink(parent, name, UnlinkatFlags::NoRemoveDir, shown);
    }
    if st.st_dev != dev {
        return Err(FsAtError::OtherFilesystem(shown.to_path_buf()));
    }
    if depth >= MAX_DEPTH {
        return Err(FsAtError::TooDeep(shown.to_path_buf()));
    }
    let fd = open_dir(parent, Path::new(name)).map_err(|e| match e {
        FsAtError::Sys {
            source: nix::Error::EXDEV,
            ..
        } => FsAtError::OtherFilesystem(shown.to_path_buf()),
        e => e,
    })?;
    let mut names = Vec::new();
    {
        let listing = fd
            .try_clone()
            .map_err(|e| sys("listing", shown)(io_errno(&e)))?;
        let mut d = Dir::from_fd(listing.into_raw_fd()).map_err(sys("listing", shown))?;
        for entry in d.iter() {
            let entry = entry.map_err(sys("listing", shown))?;
            let n = entry.file_name().to_bytes();
            if n != b"." && n != b".." {
                names.push(OsStr::from_bytes(n).to_os_string());
            }
        }
    }
    for n in names {
        remove_entry(fd.as_fd(), &n, dev, &shown.join(&n), depth + 1)?;
    }
    unlink(parent, name, UnlinkatFlags::RemoveDir, shown)
}

fn io_errno(e: &std::io::Error) -> nix::Error {
    nix::Error::from_raw(e.raw_os_error().unwrap_or(libc::EIO))
}

fn unlink(
    parent: BorrowedFd<'_>,
    name: &OsStr,
    how: UnlinkatFlags,
    shown: &Path,
) -> Result<(), FsAtError> {
    match unlinkat(Some(parent.as_raw_fd()), Path::new(name), how) {
        Ok(()) | Err(nix::Error::ENOENT) => Ok(()),
        Err(nix::Error::EBUSY) => Err(FsAtError::OtherFilesystem(shown.to_path_buf())),
        Err(e) => Err(sys("removing", shown)(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir_fd(p: &Path) -> OwnedFd {
        std::fs::File::open(p).unwrap().into()
    }

    #[test]
    fn opening_refuses_symlinks_and_escapes() {
        let t = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::create_dir(t.path().join("d")).unwrap();
        std::os::unix::fs::symlink(outside.path(), t.path().join("link")).unwrap();
        std::os::unix::fs::symlink("d", t.path().join("rel")).unwrap();
        let root = dir_fd(t.path());
        assert!(open_dir(root.as_fd(), Path::new("d")).is_ok());
        for bad in ["link", "rel", "rel/x", "../x", "/etc", "d/../../x"] {
            let e = open_dir(root.as_fd(), Path::new(bad)).unwrap_err();
            assert!(matches!(e, FsAtError::Sys { .. }), "{bad}: {e}");
        }
    }

    #[test]
    fn mkdir_and_touch_never_reuse_a_symlink() {
        let t = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), t.path().join("rootfs")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("f"), t.path().join("file")).unwrap();
        let root = dir_fd(t.path());
        assert!(mkdir(root.as_fd(), OsStr::new("rootfs"), 0o755).is_err());
        assert!(touch(root.as_fd(), OsStr::new("file"), 0o644).is_err());
        assert!(
            !outside.path().join("f").exists(),
            "touch followed a symlink"
        );
        mkdir(root.as_fd(), OsStr::new("new"), 0o755).unwrap();
        mkdir(root.as_fd(), OsStr::new("new"), 0o755).unwrap();
        touch(root.as_fd(), OsStr::new("f"), 0o644).unwrap();
        assert!(t.path().join("new").is_dir() && t.path().join("f").is_file());
    }

    #[test]
    fn removal_keeps_symlink_targets_and_is_idempotent() {
        let t = tempfile::tempdir().unwrap();
        let keep = tempfile::tempdir().unwrap();
        std::fs::write(keep.path().join("precious"), b"x").unwrap();
        let gone = t.path().join("gone");
        std::fs::create_dir_all(gone.join("a/b")).unwrap();
        std::fs::write(gone.join("a/b/f"), b"y").unwrap();
        std::os::unix::fs::symlink(keep.path(), gone.join("a/link")).unwrap();
        let root = dir_fd(t.path());
        remove_tree(root.as_fd(), OsStr::new("gone")).unwrap();
        assert!(!gone.exists());
        assert!(keep.path().join("precious").exists());
        remove_tree(root.as_fd(), OsStr::new("gone")).unwrap();
    }

    #[test]
    fn names_that_are_not_one_entry_are_refused() {
        let t = tempfile::tempdir().unwrap();
        let root = dir_fd(t.path());
        for bad in ["", ".", "..", "../x", "a/b", "/etc"] {
            let name = OsStr::new(bad);
            for e in [
                mkdir(root.as_fd(), name, 0o755).unwrap_err(),
                touch(root.as_fd(), name, 0o644).unwrap_err(),
                remove_tree(root.as_fd(), name).unwrap_err(),
            ] {
                assert!(matches!(e, FsAtError::NotAnEntry(_)), "{bad:?}: {e}");
            }
        }
    }

    #[test]
    fn removal_depth_is_bounded() {
        let t = tempfile::tempdir().unwrap();
        let mut p = t.path().join("deep");
        for _ in 0..(MAX_DEPTH + 2) {
            p.push("d");
        }
        std::fs::create_dir_all(&p).unwrap();
        let root = dir_fd(t.path());
        let e = remove_tree(root.as_fd(), OsStr::new("deep")).unwrap_err();
        assert!(matches!(e, FsAtError::TooDeep(_)), "{e}");
    }
}

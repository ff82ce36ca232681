//! A size limit on what a pod's containers write to their root file systems
//! (`writable_limit_mib` in the husk config).
//!
//! Without a limit (0, the default) a container's writes land, through virtio-fs, in the upper
//! directory of its containerd overlay snapshot on the host's disk, as under runc: a guest can
//! fill that disk until kubelet's eviction notices. With a limit, the sandbox gets a file system
//! of that size of its own:
//!
//! - an ext4 made by `mkfs.ext4` in a sparse file under `writable_dir` (on a disk: `/run` is
//!   memory), bound to a loop device that clears itself ([`loopdev`]) and mounted at
//!   `<state>/.writable`, outside the share, so the guest never sees it except through the
//!   overlays below. The file is unlinked as soon as it is mounted: nothing is left to clean up
//!   but the mount, which sandbox teardown (or `shim delete` after a killed shim) unmounts with
//!   the rest of the state directory, and the loop device and the space go with it.
//! - each container's overlay gets `upperdir=<.writable>/<cid>/upper` and
//!   `workdir=<.writable>/<cid>/work` instead of the snapshot's ([`redirect`]); the new upper
//!   directory takes the snapshot upper's owner and mode (containerd sets them for user
//!   namespaces). A container that fills the file system gets `ENOSPC` in the guest; the host's
//!   disk loses at most the limit. Deleting the container removes its directory there
//!   ([`remove_container`]), by descriptor, after its overlay is unmounted.
//!
//! Refused with an error that names the setting: a root file system that is not one overlay
//! mount (a bind snapshotter, the spec's `root.path`), since its writes cannot be put under the
//! limit; and a snapshot whose upper directory already holds files, which the limited file
//! system would hide. What it costs: containerd's snapshot of a running husk container stays
//! empty, so snapshot usage (CRI's writable-layer stats, kubelet's per-container
//! ephemeral-storage accounting) does not see the container's writes; the limit stands in for
//! them. Volumes are not counted: kubelet manages their size.

mod loopdev;

use std::ffi::OsStr;
use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use containerd_shim_protos::api::Mount;
use nix::mount::{mount, MsFlags};
use nix::sys::stat::{fchmod, Mode};
use nix::unistd::{fchown, Gid, Uid};

use crate::fsat::{self, FsAtError};
use crate::paths::SandboxPaths;

const MIB: u64 = 1 << 20;

/// Why a sandbox's writable file system could not be made or used.
#[derive(Debug, thiserror::Error)]
pub enum WritableError {
    /// A host operation failed.
    #[error("writable_limit_mib: {what}: {source}")]
    Host {
        /// What was being done.
        what: String,
        /// Why it failed.
        #[source]
        source: io::Error,
    },
    /// mkfs.ext4 failed.
    #[error("writable_limit_mib: mkfs.ext4 {image}: {message}")]
    Mkfs {
        /// The backing file.
        image: PathBuf,
        /// Its exit and stderr.
        message: String,
    },
    /// Mounting the file system failed.
    #[error("writable_limit_mib: mounting {device} on {target}: {source}")]
    Mount {
        /// The loop device.
        device: PathBuf,
        /// The mount point.
        target: PathBuf,
        /// Why.
        #[source]
        source: nix::Error,
    },
    /// The container's root file system cannot be put under the limit.
    #[error(
        "writable_limit_mib is set, but container {cid}'s root file system is {what}, not one \
         overlay mount with an upper directory: husk cannot put its writes under the limit \
         (use an overlay snapshotter, or set writable_limit_mib = 0)"
    )]
    NotOverlay {
        /// The container.
        cid: String,
        /// What it is.
        what: String,
    },
    /// The snapshot already holds writes the limited file system would hide.
    #[error(
        "writable_limit_mib is set, but container {cid}'s snapshot upper directory {upper} is \
         not empty: husk cannot move what is already written there under the limit"
    )]
    UpperNotEmpty {
        /// The container.
        cid: String,
        /// The snapshot's upper directory.
        upper: PathBuf,
    },
    /// `<state>/.writable` exists but nothing is mounted there.
    #[error("writable_limit_mib: {0} is not mounted")]
    NotMounted(PathBuf),
    /// A path operation in the writable file system failed.
    #[error("writable_limit_mib: {0}")]
    Path(#[from] FsAtError),
}

fn host(what: impl Into<String>) -> impl FnOnce(io::Error) -> WritableError {
    let what = what.into();
    move |source| WritableError::Host { what, source }
}

/// Makes and mounts the sandbox's writable file system of `limit_mib` MiB at
/// `paths.writable()`, its backing file in `dir` (created if missing). The backing file is
/// unlinked before this returns, whether or not the mount succeeded.
pub fn create(paths: &SandboxPaths, dir: &Path, limit_mib: u64) -> Result<(), WritableError> {
    std::fs::create_dir_all(dir).map_err(host(format!("creating {}", dir.display())))?;
    let id = paths.root().file_name().unwrap_or_default();
    let image = dir.join(format!("{}.img", id.to_string_lossy()));
    // A file of that name is a leftover of a create that died half-way: its sandbox is gone.
    let _ = std::fs::remove_file(&image);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
        .open(&image)
        .map_err(host(format!("creating {}", image.display())))?;
    let made = (|| {
        file.set_len(limit_mib * MIB)
            .map_err(host(format!("sizing {}", image.display())))?;
        mkfs(&image)?;
        let device = loopdev::attach(&file).map_err(host(image.display().to_string()))?;
        let target = paths.writable();
        std::fs::create_dir(&target).map_err(host(format!("creating {}", target.display())))?;
        mount(
            Some(&device.path),
            &target,
            Some("ext4"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            None::<&str>,
        )
        .map_err(|source| WritableError::Mount {
            device: device.path.clone(),
            target: target.clone(),
            source,
        })
    })();
    let _ = std::fs::remove_file(&image);
    made
}

/// The `mkfs.ext4` to run: sbin first (containerd's `PATH` may lack it), then `PATH`.
fn mkfs_binary() -> PathBuf {
    ["/usr/sbin/mkfs.ext4", "/sbin/mkfs.ext4"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("mkfs.ext4"))
}

fn mkfs(image: &Path) -> Result<(), WritableError> {
    // No journal (the contents die with the pod) and lazy inode tables: a quick mkfs of a
    // sparse file. No reserved blocks: the limit is the containers' to use.
    let out = Command::new(mkfs_binary())
        .args(["-q", "-F", "-m", "0", "-O", "^has_journal"])
        .args(["-E", "lazy_itable_init=1,nodiscard", "-L", "husk-writable"])
        .arg(image)
        .output()
        .map_err(host("running mkfs.ext4"))?;
    if out.status.success() {
        return Ok(());
    }
    Err(WritableError::Mkfs {
        image: image.to_path_buf(),
        message: format!(
            "{}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ),
    })
}

/// Whether the sandbox has a writable file system; an error if its mount point exists but
/// nothing is mounted there (writes would land in `/run`).
fn enabled(paths: &SandboxPaths) -> Result<bool, WritableError> {
    let target = paths.writable();
    let Ok(st) = std::fs::symlink_metadata(&target) else {
        return Ok(false);
    };
    let root = std::fs::metadata(paths.root())
        .map_err(host(format!("reading {}", paths.root().display())))?;
    if st.dev() == root.dev() {
        return Err(WritableError::NotMounted(target));
    }
    Ok(true)
}

/// Container `cid`'s root file system mounts with its writes put on the sandbox's writable
/// file system; `rootfs` unchanged when the sandbox has none, or when the overlay has no upper
/// directory (a read-only view: nothing to write).
pub fn redirect(
    paths: &SandboxPaths,
    cid: &str,
    rootfs: &[Mount],
) -> Result<Vec<Mount>, WritableError> {
    if !enabled(paths)? {
        return Ok(rootfs.to_vec());
    }
    let not_overlay = |what: String| WritableError::NotOverlay {
        cid: cid.to_string(),
        what,
    };
    let m = match rootfs {
        [m] if m.type_ == "overlay" => m,
        [] => {
            return Err(not_overlay(
                "the spec's root.path (no rootfs mounts)".into(),
            ))
        }
        [m] => return Err(not_overlay(format!("a {:?} mount", m.type_))),
        more => return Err(not_overlay(format!("{} mounts", more.len()))),
    };
    let Some(upper) = option(&m.options, "upperdir") else {
        return Ok(rootfs.to_vec());
    };
    let upper = PathBuf::from(upper);
    let mut entries =
        std::fs::read_dir(&upper).map_err(host(format!("reading {}", upper.display())))?;
    if entries.next().is_some() {
        return Err(WritableError::UpperNotEmpty {
            cid: cid.to_string(),
            upper,
        });
    }
    let st = std::fs::metadata(&upper).map_err(host(format!("reading {}", upper.display())))?;
    let store = fsat::open_path_dir(&paths.writable())?;
    fsat::mkdir(store.as_fd(), OsStr::new(cid), 0o700)?;
    let dir = fsat::open_dir(store.as_fd(), Path::new(cid))?;
    fsat::mkdir(dir.as_fd(), OsStr::new("upper"), 0o755)?;
    fsat::mkdir(dir.as_fd(), OsStr::new("work"), 0o700)?;
    // The overlay's root directory is the upper one: it keeps the snapshot's owner and mode.
    let shown = paths.writable().join(cid).join("upper");
    let upper_fd = fsat::open_dir(dir.as_fd(), Path::new("upper"))?;
    let raw = upper_fd.as_raw_fd();
    fchown(
        raw,
        Some(Uid::from_raw(st.uid())),
        Some(Gid::from_raw(st.gid())),
    )
    .map_err(|e| host(format!("setting the owner of {}", shown.display()))(e.into()))?;
    fchmod(raw, Mode::from_bits_truncate(st.mode() & 0o7777))
        .map_err(|e| host(format!("setting the mode of {}", shown.display()))(e.into()))?;
    let base = paths.writable().join(cid);
    let mut m = m.clone();
    m.options = with_dirs(&m.options, &base.join("upper"), &base.join("work"));
    Ok(vec![m])
}

/// The value of `key=` in mount options.
fn option<'a>(options: &'a [String], key: &str) -> Option<&'a str> {
    options
        .iter()
        .find_map(|o| o.strip_prefix(key)?.strip_prefix('='))
}

/// `options` with `upperdir` and `workdir` replaced by `upper` and `work`.
fn with_dirs(options: &[String], upper: &Path, work: &Path) -> Vec<String> {
    let mut out: Vec<String> = options
        .iter()
        .filter(|o| option(std::slice::from_ref(o), "upperdir").is_none())
        .filter(|o| option(std::slice::from_ref(o), "workdir").is_none())
        .cloned()
        .collect();
    out.push(format!("upperdir={}", upper.display()));
    out.push(format!("workdir={}", work.display()));
    out
}

/// Below this much free space the sandbox's writable file system counts as full.
const FULL_BELOW: u64 = MIB;

/// Words for an error when the sandbox's writable file system is (nearly) full, so that a
/// container that failed to start (its runtime could not make a mount point, say) says why.
pub fn full_hint(paths: &SandboxPaths) -> Option<String> {
    if !enabled(paths).unwrap_or(false) {
        return None;
    }
    let st = nix::sys::statvfs::statvfs(&paths.writable()).ok()?;
    let free = st.blocks_available() * st.fragment_size();
    let size = st.blocks() * st.fragment_size();
    (free < FULL_BELOW).then(|| {
        format!(
            "the pod's writable layers are full: {free} of {} MiB free (writable_limit_mib)",
            size / MIB
        )
    })
}

/// Removes container `cid`'s writes from the sandbox's writable file system (after its overlay
/// was unmounted). Nothing to do without one, or for a container that has none.
pub fn remove_container(paths: &SandboxPaths, cid: &str) -> Result<(), WritableError> {
    if !enabled(paths)? {
        return Ok(());
    }
    let store = fsat::open_path_dir(&paths.writable())?;
    fsat::remove_tree(store.as_fd(), OsStr::new(cid))?;
    Ok(())
}

#[cfg(test)]
mod tests;

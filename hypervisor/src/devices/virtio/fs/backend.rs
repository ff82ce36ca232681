//! The FUSE server behind a share: fuse-backend-rs's `PassthroughFs` over one host directory,
//! served directly (no `Vfs` layer: one device serves exactly one directory, so there is
//! nothing to multiplex and one layer less that sees guest input).
//!
//! Configuration, and why:
//! - **Escape safety.** Every name is opened relative to its parent's `O_PATH` descriptor with
//!   `O_NOFOLLOW`, and names containing `/` are refused, so a path walk never leaves the tree and
//!   never follows a symlink on the host: a symlink is an inode of its own whose target only the
//!   guest resolves (in the guest). Opening a symlink or device inode for I/O is refused
//!   (`EBADF`). `..` looked up at the share root resolves to the root itself. Inodes are held as
//!   `O_PATH` descriptors, not file handles (`inode_file_handles: false`), so
//!   `open_by_handle_at` is never called and the guest has no handle to forge; a node id the
//!   guest never looked up is `EBADF`. Extended attributes are off (`xattr: false`, as
//!   virtiofsd's default), so the guest cannot set `trusted.*` or `security.*` attributes on
//!   host files. The worker thread holds only the file server's capabilities
//!   ([`confine_worker_thread`], [`crate::caps`]), no `CAP_MKNOD`, so the guest can make FIFOs
//!   and sockets in the share but no device nodes that a host process might later open. The unit tests in [`super::handler`] try each of these.
//! - **Mounts made under the share later.** Lookups walk with `openat`, which enters whatever
//!   is mounted on a directory at that moment, and an inode's identity is
//!   `(st_ino, st_dev, mount id)` (fuse-backend-rs's synchronous passthrough always takes the
//!   mount id from `statx`), so a directory that becomes a mount point is a new inode with a
//!   new node id: the guest's next lookup (after the entry timeout) drops its cached dentry and
//!   sees the mounted tree. Node ids are allocated by the server (`use_host_ino: false`), which
//!   has no limit on the number of distinct (device, mount) pairs; the host-inode mode fails
//!   after 255 of them, and a pod can have more mounts than that.
//! - **Cache policy** from [`FsCache`]: `never` = no caching (direct I/O, zero timeouts, host
//!   changes visible at once); `auto` = close-to-open data caching and 1 s name/attribute
//!   timeouts (host changes visible within a second, the default); `always` = keep the page
//!   cache across opens and 86400 s timeouts (for trees the host does not change). No
//!   writeback caching: the host changes these trees behind the guest's back.
//! - **Status flags fixed at open** ([`PinnedFlags`]): READ and WRITE never let the guest's
//!   flags reach the host descriptor through `fcntl(F_SETFL)`, where a failure made
//!   fuse-backend-rs 0.14.0 close a descriptor twice.

use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use fuse_backend_rs::api::server::Server;
use fuse_backend_rs::passthrough::{CachePolicy, Config, PassthroughFs};
use husk_protocol::vm_config::FsCache;

use super::pinned_flags::PinnedFlags;

/// The FUSE server of one share.
pub type FsServer = Server<Arc<PinnedFlags>>;

/// Name and attribute timeout of a cache policy.
pub fn timeout(cache: FsCache) -> Duration {
    match cache {
        FsCache::Never => Duration::ZERO,
        FsCache::Auto => Duration::from_secs(1),
        FsCache::Always => Duration::from_secs(86_400),
    }
}

/// The passthrough configuration for the (canonical, UTF-8) directory `root`.
pub fn passthrough_config(root: &str, cache: FsCache) -> Config {
    let t = timeout(cache);
    Config {
        root_dir: root.to_string(),
        cache_policy: match cache {
            FsCache::Never => CachePolicy::Never,
            FsCache::Auto => CachePolicy::Auto,
            FsCache::Always => CachePolicy::Always,
        },
        entry_timeout: t,
        attr_timeout: t,
        dir_entry_timeout: None,
        dir_attr_timeout: None,
        // Served without a Vfs: the passthrough imports its root at FUSE INIT (in the worker
        // thread) and validates names itself.
        do_import: true,
        writeback: false,
        xattr: false,
        inode_file_handles: false,
        use_host_ino: false,
        no_open: false,
        no_opendir: false,
        no_readdir: false,
        killpriv_v2: false,
        seal_size: false,
        enable_mntid: true,
        dax_file_size: None,
        allow_direct_io: true,
    }
}

/// A fresh server for `root` (nothing is opened under it until the guest's FUSE INIT).
pub fn new_server(root: &Path, cache: FsCache) -> io::Result<FsServer> {
    let root = root
        .to_str()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path is not UTF-8"))?;
    let fs = PassthroughFs::<()>::new(passthrough_config(root, cache))?;
    Ok(Server::new(Arc::new(PinnedFlags::new(fs))))
}

/// Prepares the thread that runs the server; every call into the server happens on the
/// device's worker thread, which calls this first.
///
/// - Its own umask, root and working directory ([`private_fs`]).
/// - The file server's capabilities and no others ([`crate::caps::raise_file_server`]): the
///   worker is the one thread of husk-vmm that acts with capabilities, to serve the guest's
///   users' files as those users; without `CAP_MKNOD`, guest MKNOD requests for character and
///   block devices fail with `EPERM`.
pub fn confine_worker_thread() -> io::Result<()> {
    private_fs()?;
    crate::caps::raise_file_server()
}

/// Gives the calling thread its own umask, root and working directory (`unshare(CLONE_FS)`):
/// the passthrough file system sets the umask to 0 when it imports its root (the guest's own
/// umask arrives with each create request and is applied by the server). The umask belongs to
/// the process's shared fs attributes, so without this the whole VMM would create its sockets
/// and files with mode bits nobody asked for.
pub fn private_fs() -> io::Result<()> {
    // SAFETY: unshare(2) with CLONE_FS only copies this thread's fs_struct; no memory is passed.
    if unsafe { libc::unshare(libc::CLONE_FS) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_policies_map_to_timeouts_and_policies() {
        for (cache, secs, policy) in [
            (FsCache::Never, 0, CachePolicy::Never),
            (FsCache::Auto, 1, CachePolicy::Auto),
            (FsCache::Always, 86_400, CachePolicy::Always),
        ] {
            let c = passthrough_config("/srv", cache);
            assert_eq!(c.entry_timeout, Duration::from_secs(secs));
            assert_eq!(c.attr_timeout, Duration::from_secs(secs));
            assert_eq!(c.cache_policy, policy);
        }
    }

    #[test]
    fn the_configuration_keeps_the_guest_inside_and_follows_later_mounts() {
        let c = passthrough_config("/srv", FsCache::Auto);
        assert_eq!(c.root_dir, "/srv");
        assert!(!c.inode_file_handles, "no open_by_handle_at");
        assert!(!c.xattr, "no host xattrs");
        assert!(!c.use_host_ino, "no 255 (dev, mount) limit");
        assert!(!c.writeback, "the host changes the tree too");
        assert!(c.do_import, "served without a Vfs");
        assert_eq!(c.dax_file_size, None, "no DAX");
    }
}

//! The file system a share serves: fuse-backend-rs's `PassthroughFs` with every open handle's
//! host file status flags pinned to the ones it was opened with.
//!
//! **Why.** For READ and WRITE the passthrough compares the request's `flags` (which the guest
//! chooses) with the flags the handle was opened with and, when they differ, applies them to
//! the host descriptor with `fcntl(F_SETFL)`. When that fcntl fails (`O_DIRECT` on tmpfs or a
//! directory, `O_NOATIME` on a file the caller does not own, clearing `O_APPEND` on an
//! append-only file), fuse-backend-rs 0.14.0 returns early through a path that drops a `File`
//! made from the handle's *borrowed* descriptor: the descriptor is closed while the handle still
//! holds its number, and the handle's RELEASE closes that number again, by then possibly another
//! of husk-vmm's descriptors (a vsock socket, an eventfd, the VM). `make fuzz` found it
//! (`fuse_request`: OPENDIR, then READ on that handle with `O_DIRECT`).
//!
//! **What this does.** [`PinnedFlags`] remembers, per handle, the flags of the OPEN, CREATE or
//! OPENDIR that made it, and gives exactly those to the passthrough's `read` and `write`, so the
//! passthrough never calls that fcntl. A READ or WRITE on a handle it does not know is `EBADF`
//! before the passthrough sees it. Every other request is passed through unchanged; the DAX
//! requests (SETUPMAPPING, REMOVEMAPPING) are not offered (the device has no DAX window), so
//! they stay `ENOSYS`.
//!
//! **What the guest gives up.** A later `fcntl(F_SETFL)` inside the guest (`O_APPEND`,
//! `O_DIRECT`, `O_NOATIME`, `O_NONBLOCK`) changes the guest's own file but no longer the host
//! descriptor behind it. The guest kernel still computes append offsets and decides its own page
//! caching; only the host page cache and host-side append semantics under concurrent host
//! writers differ from what those flags would give. virtiofsd, for comparison, reopens rather
//! than changing flags in place.

use std::collections::HashMap;
use std::ffi::CStr;
use std::io;
use std::sync::Mutex;
use std::time::Duration;

use fuse_backend_rs::abi::fuse_abi::{
    stat64, statvfs64, CreateIn, FsOptions, OpenOptions, SetattrValid,
};
use fuse_backend_rs::api::filesystem::{
    Context, DirEntry, Entry, FileSystem, GetxattrReply, ListxattrReply, ZeroCopyReader,
    ZeroCopyWriter,
};
use fuse_backend_rs::passthrough::PassthroughFs;

/// A passthrough file system whose handles keep the status flags they were opened with.
pub struct PinnedFlags {
    fs: PassthroughFs<()>,
    /// Open handle → the flags it was opened with.
    open: Mutex<HashMap<u64, u32>>,
}

impl std::fmt::Debug for PinnedFlags {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PinnedFlags")
            .field("open_handles", &self.handles().len())
            .finish_non_exhaustive()
    }
}

impl PinnedFlags {
    /// Wraps `fs`.
    pub fn new(fs: PassthroughFs<()>) -> Self {
        PinnedFlags {
            fs,
            open: Mutex::new(HashMap::new()),
        }
    }

    fn handles(&self) -> std::sync::MutexGuard<'_, HashMap<u64, u32>> {
        // A panic while the lock was held leaves a map that is still consistent.
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn opened(&self, handle: Option<u64>, flags: u32) {
        if let Some(h) = handle {
            self.handles().insert(h, flags);
        }
    }

    /// The flags `handle` was opened with; `EBADF` for a handle this server never gave out.
    fn flags_of(&self, handle: u64) -> io::Result<u32> {
        self.handles()
            .get(&handle)
            .copied()
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EBADF))
    }

    /// Handles open now (for tests and diagnostics).
    pub fn open_handles(&self) -> usize {
        self.handles().len()
    }
}

impl FileSystem for PinnedFlags {
    type Inode = u64;
    type Handle = u64;

    fn init(&self, capable: FsOptions) -> io::Result<FsOptions> {
        self.handles().clear();
        self.fs.init(capable)
    }

    fn destroy(&self) {
        self.fs.destroy();
        self.handles().clear();
    }

    fn statfs(&self, ctx: &Context, inode: u64) -> io::Result<statvfs64> {
        self.fs.statfs(ctx, inode)
    }

    fn lookup(&self, ctx: &Context, parent: u64, name: &CStr) -> io::Result<Entry> {
        self.fs.lookup(ctx, parent, name)
    }

    fn forget(&self, ctx: &Context, inode: u64, count: u64) {
        self.fs.forget(ctx, inode, count)
    }

    fn batch_forget(&self, ctx: &Context, requests: Vec<(u64, u64)>) {
        self.fs.batch_forget(ctx, requests)
    }

    fn opendir(
        &self,
        ctx: &Context,
        inode: u64,
        flags: u32,
    ) -> io::Result<(Option<u64>, OpenOptions)> {
        let (handle, opts) = self.fs.opendir(ctx, inode, flags)?;
        self.opened(handle, flags);
        Ok((handle, opts))
    }

    fn releasedir(&self, ctx: &Context, inode: u64, flags: u32, handle: u64) -> io::Result<()> {
        // Forgotten only when the server let go of it: a release naming the wrong inode
        // fails and leaves the handle open, with its flags.
        self.fs.releasedir(ctx, inode, flags, handle)?;
        self.handles().remove(&handle);
        Ok(())
    }

    fn mkdir(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        mode: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        self.fs.mkdir(ctx, parent, name, mode, umask)
    }

    fn rmdir(&self, ctx: &Context, parent: u64, name: &CStr) -> io::Result<()> {
        self.fs.rmdir(ctx, parent, name)
    }

    fn readdir(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry) -> io::Result<usize>,
    ) -> io::Result<()> {
        self.fs.readdir(ctx, inode, handle, size, offset, add_entry)
    }

    fn readdirplus(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry, Entry) -> io::Result<usize>,
    ) -> io::Result<()> {
        self.fs
            .readdirplus(ctx, inode, handle, size, offset, add_entry)
    }

    fn open(
        &self,
        ctx: &Context,
        inode: u64,
        flags: u32,
        fuse_flags: u32,
    ) -> io::Result<(Option<u64>, OpenOptions, Option<u32>)> {
        let (handle, opts, passthrough) = self.fs.open(ctx, inode, flags, fuse_flags)?;
        self.opened(handle, flags);
        Ok((handle, opts, passthrough))
    }

    #[allow(clippy::too_many_arguments)]
    fn release(
        &self,
        ctx: &Context,
        inode: u64,
        flags: u32,
        handle: u64,
        flush: bool,
        flock_release: bool,
        lock_owner: Option<u64>,
    ) -> io::Result<()> {
        self.fs
            .release(ctx, inode, flags, handle, flush, flock_release, lock_owner)?;
        self.handles().remove(&handle);
        Ok(())
    }

    fn create(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        args: CreateIn,
    ) -> io::Result<(Entry, Option<u64>, OpenOptions, Option<u32>)> {
        let flags = args.flags;
        let (entry, handle, opts, passthrough) = self.fs.create(ctx, parent, name, args)?;
        self.opened(handle, flags);
        Ok((entry, handle, opts, passthrough))
    }

    fn unlink(&self, ctx: &Context, parent: u64, name: &CStr) -> io::Result<()> {
        self.fs.unlink(ctx, parent, name)
    }

    fn read(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        w: &mut dyn ZeroCopyWriter,
        size: u32,
        offset: u64,
        lock_owner: Option<u64>,
        _flags: u32,
    ) -> io::Result<usize> {
        let flags = self.flags_of(handle)?;
        self.fs
            .read(ctx, inode, handle, w, size, offset, lock_owner, flags)
    }

    #[allow(clippy::too_many_arguments)]
    fn write(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        r: &mut dyn ZeroCopyReader,
        size: u32,
        offset: u64,
        lock_owner: Option<u64>,
        delayed_write: bool,
        _flags: u32,
        fuse_flags: u32,
    ) -> io::Result<usize> {
        let flags = self.flags_of(handle)?;
        self.fs.write(
            ctx,
            inode,
            handle,
            r,
            size,
            offset,
            lock_owner,
            delayed_write,
            flags,
            fuse_flags,
        )
    }

    fn getattr(
        &self,
        ctx: &Context,
        inode: u64,
        handle: Option<u64>,
    ) -> io::Result<(stat64, Duration)> {
        self.fs.getattr(ctx, inode, handle)
    }

    fn setattr(
        &self,
        ctx: &Context,
        inode: u64,
        attr: stat64,
        handle: Option<u64>,
        valid: SetattrValid,
    ) -> io::Result<(stat64, Duration)> {
        self.fs.setattr(ctx, inode, attr, handle, valid)
    }

    fn rename(
        &self,
        ctx: &Context,
        olddir: u64,
        oldname: &CStr,
        newdir: u64,
        newname: &CStr,
        flags: u32,
    ) -> io::Result<()> {
        self.fs.rename(ctx, olddir, oldname, newdir, newname, flags)
    }

    fn mknod(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        mode: u32,
        rdev: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        self.fs.mknod(ctx, parent, name, mode, rdev, umask)
    }

    fn link(&self, ctx: &Context, inode: u64, newparent: u64, newname: &CStr) -> io::Result<Entry> {
        self.fs.link(ctx, inode, newparent, newname)
    }

    fn symlink(
        &self,
        ctx: &Context,
        linkname: &CStr,
        parent: u64,
        name: &CStr,
    ) -> io::Result<Entry> {
        self.fs.symlink(ctx, linkname, parent, name)
    }

    fn readlink(&self, ctx: &Context, inode: u64) -> io::Result<Vec<u8>> {
        self.fs.readlink(ctx, inode)
    }

    fn flush(&self, ctx: &Context, inode: u64, handle: u64, lock_owner: u64) -> io::Result<()> {
        self.fs.flush(ctx, inode, handle, lock_owner)
    }

    fn fsync(&self, ctx: &Context, inode: u64, datasync: bool, handle: u64) -> io::Result<()> {
        self.fs.fsync(ctx, inode, datasync, handle)
    }

    fn fsyncdir(&self, ctx: &Context, inode: u64, datasync: bool, handle: u64) -> io::Result<()> {
        self.fs.fsyncdir(ctx, inode, datasync, handle)
    }

    fn access(&self, ctx: &Context, inode: u64, mask: u32) -> io::Result<()> {
        self.fs.access(ctx, inode, mask)
    }

    fn setxattr(
        &self,
        ctx: &Context,
        inode: u64,
        name: &CStr,
        value: &[u8],
        flags: u32,
    ) -> io::Result<()> {
        self.fs.setxattr(ctx, inode, name, value, flags)
    }

    fn getxattr(
        &self,
        ctx: &Context,
        inode: u64,
        name: &CStr,
        size: u32,
    ) -> io::Result<GetxattrReply> {
        self.fs.getxattr(ctx, inode, name, size)
    }

    fn listxattr(&self, ctx: &Context, inode: u64, size: u32) -> io::Result<ListxattrReply> {
        self.fs.listxattr(ctx, inode, size)
    }

    fn removexattr(&self, ctx: &Context, inode: u64, name: &CStr) -> io::Result<()> {
        self.fs.removexattr(ctx, inode, name)
    }

    fn fallocate(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        mode: u32,
        offset: u64,
        length: u64,
    ) -> io::Result<()> {
        self.fs.fallocate(ctx, inode, handle, mode, offset, length)
    }

    fn lseek(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        offset: u64,
        whence: u32,
    ) -> io::Result<u64> {
        self.fs.lseek(ctx, inode, handle, offset, whence)
    }
}

//! Mounts the host makes under the share after the guest mounted it (the shim mounts each
//! container's rootfs there while the VM runs) are entered by the next lookup.
//!
//! The test mounts a tmpfs and a bind mount, so it runs in a private mount namespace of its own
//! thread; without the privilege for that it says so and returns.

use std::ffi::CString;

use super::*;

/// Moves this thread into a private mount namespace (mounts here reach nothing else).
fn private_mount_namespace() -> std::io::Result<()> {
    // SAFETY: unshare(2) with namespace flags only; no memory is passed.
    if unsafe { libc::unshare(libc::CLONE_NEWNS | libc::CLONE_FS) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let root = CString::new("/").unwrap();
    // SAFETY: a valid path string; null source, type and data are allowed for a propagation
    // change.
    let rc = unsafe {
        libc::mount(
            std::ptr::null(),
            root.as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn mount(source: &Path, target: &Path, fstype: &str, flags: libc::c_ulong) {
    let s = CString::new(source.as_os_str().as_encoded_bytes()).unwrap();
    let t = CString::new(target.as_os_str().as_encoded_bytes()).unwrap();
    let f = CString::new(fstype).unwrap();
    // SAFETY: valid NUL-terminated strings that outlive the call; no data.
    let rc = unsafe { libc::mount(s.as_ptr(), t.as_ptr(), f.as_ptr(), flags, std::ptr::null()) };
    assert_eq!(
        rc,
        0,
        "mount {}: {}",
        target.display(),
        std::io::Error::last_os_error()
    );
}

fn unmount(target: &Path) {
    let t = CString::new(target.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid path string.
    unsafe { libc::umount2(t.as_ptr(), libc::MNT_DETACH) };
}

fn read_file(r: &mut Rig, parent: u64, n: &str) -> Vec<u8> {
    let e = r
        .lookup(parent, n)
        .unwrap_or_else(|e| panic!("lookup {n}: errno {e}"));
    let fh = r.open(e.nodeid, libc::O_RDONLY).unwrap();
    r.read(e.nodeid, fh, 4096).unwrap()
}

#[test]
fn tmpfs_and_bind_mounts_made_after_init_are_visible() {
    if let Err(e) = private_mount_namespace() {
        eprintln!("skipped: no private mount namespace here ({e})");
        return;
    }
    let dir = share();
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("from-bind"), b"bound in").unwrap();
    let late = dir.path().join("late");
    let bound = dir.path().join("bound");
    std::fs::create_dir(&late).unwrap();
    std::fs::create_dir(&bound).unwrap();
    let mem = memory();
    let mut r = Rig::new_keeping_capabilities(&mem, dir.path(), FsCache::Auto);
    r.init();
    let before = r.lookup(1, "late").unwrap();
    assert_eq!(r.lookup(before.nodeid, "inside").unwrap_err(), libc::ENOENT);

    mount(Path::new("husk-test"), &late, "tmpfs", 0);
    std::fs::write(late.join("inside"), b"in the tmpfs").unwrap();
    mount(outside.path(), &bound, "", libc::MS_BIND);

    // The mount point is a new inode (other device and mount id): the guest's revalidation
    // sees a new node id, drops its dentry and looks again.
    let after = r.lookup(1, "late").unwrap();
    assert_ne!(after.nodeid, before.nodeid);
    assert_eq!(read_file(&mut r, after.nodeid, "inside"), b"in the tmpfs");
    assert_eq!(
        r.lookup(after.nodeid, "..").unwrap().nodeid,
        1,
        "`..` leaves the mount upwards"
    );
    let b = r.lookup(1, "bound").unwrap();
    assert_eq!(read_file(&mut r, b.nodeid, "from-bind"), b"bound in");
    // The node id the guest still holds is the covered directory, as on any Linux.
    assert_eq!(r.lookup(before.nodeid, "inside").unwrap_err(), libc::ENOENT);

    unmount(&bound);
    unmount(&late);
}

//! The guest's file status flags on READ and WRITE never reach the host descriptor
//! ([`PinnedFlags`](crate::devices::virtio::fs::pinned_flags::PinnedFlags)): a flag the host
//! refuses leaves the handle open and working, and a handle the server never gave out is
//! `EBADF`.

use super::*;

fn opendir(r: &mut Rig, node: u64) -> u64 {
    let args = OpenIn {
        flags: (libc::O_RDONLY | libc::O_DIRECTORY) as u32,
        fuse_flags: 0,
    };
    let reply = r.call(Opcode::Opendir, node, args.as_slice());
    assert_eq!(reply.errno(), 0, "OPENDIR");
    reply.out::<OpenOut>().fh
}

fn read_with(r: &mut Rig, opcode: Opcode, node: u64, fh: u64, flags: i32) -> Reply {
    let args = ReadIn {
        fh,
        offset: 0,
        size: 4096,
        flags: flags as u32,
        ..Default::default()
    };
    r.call(opcode, node, args.as_slice())
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// What `make fuzz` found: OPENDIR, then READ on that handle with `O_DIRECT`. The host refuses
/// `O_DIRECT` on a directory; fuse-backend-rs 0.14.0 then closed the handle's descriptor and
/// its RELEASEDIR closed the same number again.
#[test]
fn a_flag_the_host_refuses_leaves_the_handle_open() {
    let dir = share();
    let mem = memory();
    let mut r = Rig::new(&mem, dir.path(), FsCache::Auto);
    r.init();
    let fh = opendir(&mut r, 1);
    let direct = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_DIRECT;
    let read = read_with(&mut r, Opcode::Read, 1, fh, direct);
    assert_eq!(read.errno(), libc::EISDIR, "a directory handle is not read");
    // The handle's descriptor is still the directory's.
    let list = read_with(&mut r, Opcode::Readdir, 1, fh, 0);
    assert_eq!(list.errno(), 0, "READDIR after the refused flag");
    assert!(contains(&list.body, b"hello.txt"), "{:?}", list.body);
    let release = ReleaseIn {
        fh,
        ..Default::default()
    };
    assert_eq!(r.call(Opcode::Releasedir, 1, release.as_slice()).errno(), 0);
}

#[test]
fn reads_and_writes_use_the_flags_of_the_open() {
    let dir = share();
    let mem = memory();
    let mut r = Rig::new(&mem, dir.path(), FsCache::Auto);
    r.init();
    let node = r.lookup(1, "hello.txt").unwrap().nodeid;
    let fh = r.open(node, libc::O_RDONLY).unwrap();
    // Flags the guest could only have set with fcntl later (or made up): not applied, the
    // read is served as the open said.
    for flags in [libc::O_DIRECT, libc::O_NOATIME | libc::O_APPEND, -1] {
        let read = read_with(&mut r, Opcode::Read, node, fh, flags);
        assert_eq!(read.errno(), 0, "flags {flags:#x}");
        assert_eq!(read.body, b"hello from the host\n");
    }
}

#[test]
fn a_handle_never_given_out_is_ebadf() {
    let dir = share();
    let mem = memory();
    let mut r = Rig::new(&mem, dir.path(), FsCache::Auto);
    r.init();
    let node = r.lookup(1, "hello.txt").unwrap().nodeid;
    let fh = r.open(node, libc::O_RDONLY).unwrap();
    assert_eq!(r.read(node, fh + 1000, 16), Err(libc::EBADF));
    let release = ReleaseIn {
        fh,
        ..Default::default()
    };
    assert_eq!(r.call(Opcode::Release, node, release.as_slice()).errno(), 0);
    assert_eq!(r.read(node, fh, 16), Err(libc::EBADF), "after RELEASE");
}

#[test]
fn a_release_that_names_the_wrong_inode_keeps_the_handle_usable() {
    let dir = share();
    let mem = memory();
    let mut r = Rig::new(&mem, dir.path(), FsCache::Auto);
    r.init();
    let node = r.lookup(1, "hello.txt").unwrap().nodeid;
    let fh = r.open(node, libc::O_RDONLY).unwrap();
    let release = ReleaseIn {
        fh,
        ..Default::default()
    };
    // The server refuses to release the handle under another inode: it stays open, and so do
    // the flags it was opened with.
    assert_ne!(r.call(Opcode::Release, 1, release.as_slice()).errno(), 0);
    let read = read_with(&mut r, Opcode::Read, node, fh, 0);
    assert_eq!(read.errno(), 0, "the handle after a refused RELEASE");
    assert_eq!(read.body, b"hello from the host\n");
    assert_eq!(r.call(Opcode::Release, node, release.as_slice()).errno(), 0);
}

//! A guest trying to reach host files outside its share: `..` at the root, names with `/`,
//! symlinks (host-made and guest-made), node ids and file handles it was never given. Each
//! attempt is refused or stays inside the share.

use std::os::unix::fs::MetadataExt;

use super::*;

fn is_symlink(attr: &Attr) -> bool {
    attr.mode & libc::S_IFMT == libc::S_IFLNK
}

#[test]
fn dotdot_at_the_root_is_the_root_and_slashes_are_refused() {
    let dir = share();
    let mem = memory();
    let mut r = Rig::new(&mem, dir.path(), FsCache::Auto);
    r.init();
    let root_ino = std::fs::metadata(dir.path()).unwrap().ino();
    let up = r.lookup(1, "..").unwrap();
    assert_eq!(up.nodeid, 1, "`..` of the root is the root");
    assert_eq!(up.attr.ino, root_ino);
    let sub = r.lookup(1, "sub").unwrap();
    let back = r.lookup(sub.nodeid, "..").unwrap();
    assert_eq!(back.nodeid, 1, "`..` of a directory is its parent, inside");
    for bad in ["../hello.txt", "/etc", "sub/..", "../.."] {
        assert_eq!(r.lookup(1, bad).unwrap_err(), libc::EINVAL, "{bad}");
        assert_eq!(
            r.lookup(sub.nodeid, bad).unwrap_err(),
            libc::EINVAL,
            "{bad}"
        );
    }
    // Creating names that would land elsewhere.
    let mkdir = |n: &str| {
        join(&[
            MkdirIn {
                mode: 0o755,
                umask: 0,
            }
            .as_slice(),
            &name(n),
        ])
    };
    for bad in ["..", ".", "../escape", "a/b"] {
        let reply = r.call(Opcode::Mkdir, 1, &mkdir(bad));
        assert_eq!(reply.errno(), libc::EINVAL, "mkdir {bad}");
    }
    let parent = dir.path().parent().unwrap();
    assert!(!parent.join("escape").exists());
}

#[test]
fn symlinks_are_never_followed_on_the_host() {
    let dir = share();
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret"), b"host secret").unwrap();
    std::os::unix::fs::symlink(outside.path(), dir.path().join("out")).unwrap();
    std::os::unix::fs::symlink(outside.path().join("secret"), dir.path().join("pw")).unwrap();
    let mem = memory();
    let mut r = Rig::new(&mem, dir.path(), FsCache::Auto);
    r.init();

    // A symlink to a directory outside is a symlink, not a way in.
    let out = r.lookup(1, "out").unwrap();
    assert!(is_symlink(&out.attr), "{:o}", out.attr.mode);
    assert_eq!(r.lookup(out.nodeid, "secret").unwrap_err(), libc::ENOTDIR);
    let opendir = OpenIn {
        flags: libc::O_RDONLY as u32,
        fuse_flags: 0,
    };
    let reply = r.call(Opcode::Opendir, out.nodeid, opendir.as_slice());
    assert_ne!(reply.errno(), 0, "opendir through a symlink");

    // A symlink to a file outside cannot be opened; its target text goes to the guest, which
    // resolves it in its own tree.
    let pw = r.lookup(1, "pw").unwrap();
    assert!(is_symlink(&pw.attr));
    assert_eq!(r.open(pw.nodeid, libc::O_RDONLY).unwrap_err(), libc::EBADF);
    assert_eq!(r.open(pw.nodeid, libc::O_RDWR).unwrap_err(), libc::EBADF);
    let link = r.call(Opcode::Readlink, pw.nodeid, &[]);
    assert_eq!(
        link.body,
        outside.path().join("secret").as_os_str().as_encoded_bytes()
    );

    // A symlink the guest makes, then opens or creates through.
    let target = outside.path().join("secret");
    let args = join(&[&name("evil"), &name(target.to_str().unwrap())]);
    let evil: EntryOut = r.call(Opcode::Symlink, 1, &args).out();
    assert_eq!(
        r.open(evil.nodeid, libc::O_WRONLY).unwrap_err(),
        libc::EBADF
    );
    let create = CreateIn {
        flags: (libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC) as u32,
        mode: libc::S_IFREG | 0o644,
        umask: 0,
        fuse_flags: 0,
    };
    let reply = r.call(
        Opcode::Create,
        1,
        &join(&[create.as_slice(), &name("evil")]),
    );
    assert_ne!(reply.errno(), 0, "create through a symlink");
    assert_eq!(
        std::fs::read(outside.path().join("secret")).unwrap(),
        b"host secret",
        "the file outside is untouched"
    );
}

#[test]
fn node_ids_and_file_handles_cannot_be_forged() {
    let dir = share();
    let mem = memory();
    let mut r = Rig::new(&mem, dir.path(), FsCache::Auto);
    r.init();
    for node in [0, 2, 12345, u64::MAX] {
        assert_eq!(r.getattr(node).unwrap_err(), libc::EBADF, "node {node}");
    }
    let file = r.lookup(1, "hello.txt").unwrap();
    let fh = r.open(file.nodeid, libc::O_RDONLY).unwrap();
    assert_eq!(r.read(file.nodeid, fh + 100, 16).unwrap_err(), libc::EBADF);
    // A handle of another inode.
    let sub = r.lookup(1, "sub").unwrap();
    assert_eq!(r.read(sub.nodeid, fh, 16).unwrap_err(), libc::EBADF);
    assert_eq!(r.read(file.nodeid, fh, 5).unwrap(), b"hello");
}

#[test]
fn no_device_nodes_but_fifos_are_fine() {
    let dir = share();
    let mem = memory();
    let mut r = Rig::new(&mem, dir.path(), FsCache::Auto);
    r.init();
    let mknod = |mode: u32, rdev: u32, n: &str| {
        let args = fuse_backend_rs::abi::fuse_abi::MknodIn {
            mode,
            rdev,
            umask: 0,
            padding: 0,
        };
        join(&[args.as_slice(), &name(n)])
    };
    // /dev/sda's numbers (8, 0), and /dev/mem's (1, 1).
    for (mode, rdev, n) in [
        (libc::S_IFBLK, 8 << 8, "disk"),
        (libc::S_IFCHR, (1 << 8) | 1, "mem"),
    ] {
        let reply = r.call(Opcode::Mknod, 1, &mknod(mode | 0o600, rdev, n));
        assert_eq!(reply.errno(), libc::EPERM, "{n}");
        assert!(
            std::fs::symlink_metadata(dir.path().join(n)).is_err(),
            "{n} exists"
        );
    }
    let fifo = r.call(Opcode::Mknod, 1, &mknod(libc::S_IFIFO | 0o600, 0, "pipe"));
    assert_eq!(fifo.errno(), 0);
    use std::os::unix::fs::FileTypeExt;
    let kind = std::fs::symlink_metadata(dir.path().join("pipe"))
        .unwrap()
        .file_type();
    assert!(kind.is_fifo());
}

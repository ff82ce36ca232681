//! The mount-option rewriting everywhere; the real file system (mkfs, loop device, overlay,
//! ENOSPC, teardown) as root only (`make unit` runs it).

use std::io::Write;
use std::os::unix::fs::PermissionsExt;

use super::*;
use crate::unmount::{unmount_and_remove, unmount_below};

fn overlay(dir: &Path) -> Mount {
    let mut m = Mount::new();
    m.type_ = "overlay".into();
    m.source = "overlay".into();
    m.options = vec![
        "index=off".into(),
        format!("workdir={}", dir.join("work").display()),
        format!("upperdir={}", dir.join("fs").display()),
        format!("lowerdir={}", dir.join("lower").display()),
    ];
    m
}

fn snapshot(dir: &Path) {
    for d in ["work", "fs", "lower"] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
    std::fs::write(dir.join("lower/image-file"), b"from the image").unwrap();
}

#[test]
fn upper_and_work_are_replaced_and_nothing_else() {
    let options: Vec<String> = ["index=off", "workdir=/w", "upperdir=/u", "lowerdir=/a:/b"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(option(&options, "upperdir"), Some("/u"));
    assert_eq!(option(&options, "upper"), None, "a whole key only");
    let out = with_dirs(&options, Path::new("/x/upper"), Path::new("/x/work"));
    assert_eq!(
        out,
        [
            "index=off",
            "lowerdir=/a:/b",
            "upperdir=/x/upper",
            "workdir=/x/work"
        ]
    );
}

#[test]
fn without_a_writable_file_system_the_rootfs_is_unchanged() {
    let t = tempfile::tempdir().unwrap();
    let paths = SandboxPaths::new(t.path(), "sb");
    std::fs::create_dir(paths.root()).unwrap();
    let rootfs = vec![overlay(t.path())];
    assert_eq!(redirect(&paths, "c1", &rootfs).unwrap(), rootfs);
    remove_container(&paths, "c1").unwrap();
}

#[test]
fn an_unmounted_writable_directory_is_an_error_not_a_place_to_write() {
    let t = tempfile::tempdir().unwrap();
    let paths = SandboxPaths::new(t.path(), "sb");
    std::fs::create_dir_all(paths.writable()).unwrap();
    let e = redirect(&paths, "c1", &[overlay(t.path())]).unwrap_err();
    assert!(matches!(e, WritableError::NotMounted(_)), "{e}");
}

/// The loop devices bound to a file whose path contains `needle`.
fn loops_of(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/sys/block").unwrap().flatten() {
        let backing = e.path().join("loop/backing_file");
        if let Ok(s) = std::fs::read_to_string(&backing) {
            if s.contains(needle) {
                found.push(format!("{}: {}", e.file_name().to_string_lossy(), s.trim()));
            }
        }
    }
    found
}

#[test]
#[ignore = "needs root: mkfs, a loop device and mounts"]
fn writes_past_the_limit_get_enospc_and_teardown_leaves_nothing() {
    let t = tempfile::tempdir().unwrap();
    let paths = SandboxPaths::new(&t.path().join("state"), "sb-writable");
    std::fs::create_dir_all(paths.root()).unwrap();
    std::fs::set_permissions(paths.root(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let images = t.path().join("images");
    create(&paths, &images, 32).unwrap();
    assert_eq!(
        std::fs::read_dir(&images).unwrap().count(),
        0,
        "the backing file is unlinked once mounted"
    );
    assert_eq!(loops_of("sb-writable").len(), 1, "{:?}", loops_of(""));

    // Refused: not an overlay, and an upper directory that already holds files.
    let snap = t.path().join("snap");
    snapshot(&snap);
    let mut bind = Mount::new();
    bind.type_ = "bind".into();
    bind.source = snap.join("fs").display().to_string();
    let e = redirect(&paths, "c0", &[bind]).unwrap_err();
    assert!(e.to_string().contains("writable_limit_mib"), "{e}");
    assert!(matches!(e, WritableError::NotOverlay { .. }), "{e}");
    std::fs::write(snap.join("fs/already"), b"x").unwrap();
    let e = redirect(&paths, "c0", &[overlay(&snap)]).unwrap_err();
    assert!(matches!(e, WritableError::UpperNotEmpty { .. }), "{e}");
    std::fs::remove_file(snap.join("fs/already")).unwrap();
    std::fs::set_permissions(snap.join("fs"), std::fs::Permissions::from_mode(0o751)).unwrap();

    // A container's overlay on it: its writes stop at the limit, the snapshot stays empty.
    let mounts = redirect(&paths, "c1", &[overlay(&snap)]).unwrap();
    let target = paths.root().join("rootfs-c1");
    std::fs::create_dir(&target).unwrap();
    let m = &mounts[0];
    containerd_shim::mount::mount_rootfs(Some("overlay"), Some("overlay"), &m.options, &target)
        .unwrap();
    let upper = paths.writable().join("c1/upper");
    assert_eq!(
        std::fs::metadata(&upper).unwrap().permissions().mode() & 0o7777,
        0o751,
        "the upper directory keeps the snapshot's mode"
    );
    assert_eq!(
        std::fs::read(target.join("image-file")).unwrap(),
        b"from the image"
    );
    let mut f = std::fs::File::create(target.join("fill")).unwrap();
    let chunk = vec![7u8; 1 << 20];
    let err = loop {
        if let Err(e) = f.write_all(&chunk).and_then(|_| f.sync_data()) {
            break e;
        }
    };
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
    let written = std::fs::metadata(target.join("fill")).unwrap().len();
    assert!(written <= 32 * MIB, "{written} bytes written");
    assert_eq!(std::fs::read_dir(snap.join("fs")).unwrap().count(), 0);
    drop(f);

    // A guest-made symlink in the writes is removed, never followed.
    let canary = t.path().join("canary");
    std::fs::create_dir(&canary).unwrap();
    std::fs::write(canary.join("keep"), b"k").unwrap();
    std::os::unix::fs::symlink(&canary, target.join("link")).unwrap();
    unmount_below(&target).unwrap();
    remove_container(&paths, "c1").unwrap();
    assert!(!paths.writable().join("c1").exists());
    assert!(canary.join("keep").exists());

    unmount_and_remove(paths.root()).unwrap();
    assert!(!paths.root().exists());
    // The loop device clears itself once its file system is unmounted (asynchronously).
    let mut left = loops_of("sb-writable");
    for _ in 0..100 {
        if left.is_empty() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
        left = loops_of("sb-writable");
    }
    assert!(left.is_empty(), "loop devices left: {left:?}");
}

//! A busybox container rootfs inside an image (for the in-guest agent tests): `bin/busybox`
//! (static), one symlink per applet the tests use, and the directories an OCI runtime mounts
//! over.

use std::path::Path;

use crate::tree::{Entry, ImageError, ImageTree};

/// Applets linked in `bin/`.
pub const APPLETS: &[&str] = &[
    "sh", "true", "false", "echo", "cat", "sleep", "ls", "id", "env", "head", "dd", "kill", "ps",
    "stty", "tty", "yes", "wc", "hostname", "grep", "test", "mount", "pwd",
];

/// Directories of the rootfs: (path, permissions).
const DIRS: &[(&str, u32)] = &[
    ("proc", 0o555),
    ("sys", 0o555),
    ("dev", 0o755),
    ("tmp", 0o1777),
    ("etc", 0o755),
    ("root", 0o700),
    ("run", 0o755),
];

/// Adds a busybox rootfs at `dest` (e.g. `/opt/husk/rootfs`) from the static `busybox`.
pub fn add_busybox_rootfs(
    tree: &mut ImageTree,
    busybox: &Path,
    dest: &str,
) -> Result<(), ImageError> {
    let bytes = std::fs::read(busybox).map_err(|_| ImageError::Missing(busybox.into()))?;
    if crate::elf::has_interpreter(&bytes) {
        return Err(ImageError::BadInit {
            path: busybox.into(),
            why: "busybox is dynamically linked; install busybox-static".into(),
        });
    }
    let dest = dest.trim_end_matches('/');
    tree.insert(dest, Entry::Dir { perm: 0o755 })?;
    for (dir, perm) in DIRS {
        tree.insert(&format!("{dest}/{dir}"), Entry::Dir { perm: *perm })?;
    }
    tree.insert(
        &format!("{dest}/bin/busybox"),
        Entry::HostFile {
            source: busybox.into(),
            perm: 0o755,
        },
    )?;
    for applet in APPLETS {
        tree.insert(
            &format!("{dest}/bin/{applet}"),
            Entry::Symlink {
                target: "busybox".into(),
            },
        )?;
    }
    tree.insert(
        &format!("{dest}/etc/passwd"),
        Entry::Bytes {
            data: b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n"
                .to_vec(),
            perm: 0o644,
        },
    )?;
    tree.insert(
        &format!("{dest}/etc/husk-rootfs"),
        Entry::Bytes {
            data: b"husk-test-rootfs\n".to_vec(),
            perm: 0o644,
        },
    )?;
    tree.insert(
        &format!("{dest}/etc/group"),
        Entry::Bytes {
            data: b"root:x:0:\nnogroup:x:65534:\n".to_vec(),
            perm: 0o644,
        },
    )
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn rootfs_has_busybox_applets_and_mount_points() {
        let dir = tempfile::tempdir().unwrap();
        let init = dir.path().join("init");
        std::fs::write(&init, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&init, std::fs::Permissions::from_mode(0o755)).unwrap();
        // A script stands in for a static busybox (no ELF interpreter).
        let bb = dir.path().join("busybox");
        std::fs::write(&bb, "#!/bin/sh\n").unwrap();
        let mut tree = ImageTree::for_init(&init).unwrap();
        add_busybox_rootfs(&mut tree, &bb, "/opt/husk/rootfs").unwrap();
        let paths: Vec<_> = tree.paths().collect();
        for p in [
            "opt/husk/rootfs/bin/busybox",
            "opt/husk/rootfs/bin/sh",
            "opt/husk/rootfs/proc",
            "opt/husk/rootfs/etc/passwd",
        ] {
            assert!(paths.contains(&p), "{p} missing");
        }
        let me = std::env::current_exe().unwrap();
        assert!(add_busybox_rootfs(&mut tree, &me, "/x")
            .unwrap_err()
            .to_string()
            .contains("dynamically linked"));
    }
}

//! Where a sandbox's files live on the host and in the guest (docs/DESIGN.md, "Files on the
//! host, per sandbox"). One place, so the daemon and the `delete` action agree.

use std::path::{Path, PathBuf};

/// The virtio-fs tag of the shared directory.
pub const FS_TAG: &str = "husk";
/// Where the guest mounts the shared directory.
pub const GUEST_SHARED: &str = "/run/husk/shared";
/// File in each container's bundle naming its sandbox's state directory, so the `delete`
/// action finds it whatever configuration the daemon ran with.
pub const BUNDLE_STATE_LINK: &str = "husk-state";

/// Longest Unix socket path with `_<port>` appended (sun_path is 108 bytes with the NUL).
const MAX_SOCKET_PATH: usize = 107 - "_4294967295".len();

/// The files of one sandbox under `<state_dir>/<sandbox-id>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxPaths {
    root: PathBuf,
}

impl SandboxPaths {
    /// Records the state directory in a task's bundle, so that the `delete` action finds it
    /// whatever config the daemon used (best effort: without it `delete` falls back to the
    /// configured state directory).
    pub fn record_in_bundle(&self, bundle: &Path) {
        let _ = std::fs::write(
            bundle.join(BUNDLE_STATE_LINK),
            self.root().as_os_str().as_encoded_bytes(),
        );
    }

    /// The paths of sandbox `id` under `state_dir`.
    pub fn new(state_dir: &Path, id: &str) -> Self {
        SandboxPaths {
            root: state_dir.join(id),
        }
    }

    /// From an existing state directory (as recorded in a bundle).
    pub fn from_root(root: PathBuf) -> Self {
        SandboxPaths { root }
    }

    /// Checks that the socket paths fit in sun_path.
    pub fn check_socket_lengths(&self) -> Result<(), String> {
        let longest = self
            .vsock()
            .as_os_str()
            .len()
            .max(self.control().as_os_str().len());
        if longest > MAX_SOCKET_PATH {
            return Err(format!(
                "state directory {} is too long for Unix socket paths ({} bytes, at most {}): \
                 set a shorter state_dir in the husk config",
                self.root.display(),
                longest,
                MAX_SOCKET_PATH
            ));
        }
        Ok(())
    }

    /// `<state_dir>/<sandbox-id>`.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The directory of husk-vmm's sockets (vsock, per-port vsock, control): the one
    /// directory of the sandbox that husk-vmm's jail holds.
    pub fn sockets(&self) -> PathBuf {
        self.root.join("run")
    }

    /// The VmConfig handed to husk-vmm.
    pub fn vm_config(&self) -> PathBuf {
        self.root.join("vm.json")
    }

    /// husk-vmm's hybrid vsock socket.
    pub fn vsock(&self) -> PathBuf {
        self.sockets().join("vsock")
    }

    /// Where guest-initiated connections to host port `port` arrive.
    pub fn vsock_port(&self, port: u32) -> PathBuf {
        self.sockets().join(format!("vsock_{port}"))
    }

    /// husk-vmm's control socket.
    pub fn control(&self) -> PathBuf {
        self.sockets().join("ctl")
    }

    /// husk-vmm's pid, for the `delete` action after a shim crash.
    pub fn vmm_pid(&self) -> PathBuf {
        self.root.join("vmm.pid")
    }

    /// The virtio-fs share as the guest sees it (read-only at its top: [`crate::share`]).
    pub fn shared(&self) -> PathBuf {
        self.root.join("shared")
    }

    /// Where the pod's size-limited file system for its containers' writes is mounted, when
    /// the configuration sets a limit (`crate::writable`); never inside the share.
    pub fn writable(&self) -> PathBuf {
        self.root.join(".writable")
    }

    /// The share's staging view, where only the shim creates each container's mount points.
    pub fn share_staging(&self) -> PathBuf {
        self.root.join(".share")
    }

    /// One container's directory in the share.
    pub fn container(&self, cid: &str) -> PathBuf {
        self.shared().join(cid)
    }

    /// The container's root filesystem in the share.
    pub fn rootfs(&self, cid: &str) -> PathBuf {
        self.container(cid).join("rootfs")
    }

    /// The `n`th bind mount of the container in the share.
    pub fn mount(&self, cid: &str, n: usize) -> PathBuf {
        self.container(cid).join("mounts").join(n.to_string())
    }
}

/// The guest path of a container's root filesystem.
pub fn guest_rootfs(cid: &str) -> String {
    format!("{GUEST_SHARED}/{cid}/rootfs")
}

/// The guest path of a container's `n`th bind mount.
pub fn guest_mount(cid: &str, n: usize) -> String {
    format!("{GUEST_SHARED}/{cid}/mounts/{n}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_matches_the_design() {
        let p = SandboxPaths::new(Path::new("/run/husk"), "sb1");
        assert_eq!(p.vsock(), Path::new("/run/husk/sb1/run/vsock"));
        assert_eq!(
            p.vsock_port(1026),
            Path::new("/run/husk/sb1/run/vsock_1026")
        );
        assert_eq!(p.rootfs("c1"), Path::new("/run/husk/sb1/shared/c1/rootfs"));
        assert_eq!(
            p.mount("c1", 2),
            Path::new("/run/husk/sb1/shared/c1/mounts/2")
        );
        assert_eq!(guest_rootfs("c1"), "/run/husk/shared/c1/rootfs");
        assert_eq!(guest_mount("c1", 0), "/run/husk/shared/c1/mounts/0");
        assert!(p.check_socket_lengths().is_ok());
        let long = SandboxPaths::new(Path::new("/run/husk"), &"a".repeat(76));
        assert!(long.check_socket_lengths().is_ok(), "a 76-byte id must fit");
        let too_long =
            SandboxPaths::new(Path::new(&format!("/{}", "d".repeat(40))), &"a".repeat(76));
        assert!(too_long
            .check_socket_lengths()
            .unwrap_err()
            .contains("state_dir"));
    }
}

//! The VmConfig the shim writes for husk-vmm: artifacts from the husk config, the size from
//! [`super::size`], plus the devices every husk VM has (hybrid vsock, the virtio-fs share, the
//! control socket, the console on the VMM's stdout), the balloon unless the config turns free
//! page reporting off, and the pod's NICs (`crate::network`).

use std::path::PathBuf;

use husk_protocol::{ports, FsCache, FsShare, NetConfig, VmConfig, VsockConfig};

use super::size::VmSize;
use crate::config::Artifacts;
use crate::paths::{SandboxPaths, FS_TAG};

/// The guest's vsock context id (each VM has its own device, so one value serves all).
pub const GUEST_CID: u32 = 3;
/// husk-vmm writes the guest console to this path: its own stdout, a pipe the shim reads.
pub const CONSOLE_TO_STDOUT: &str = "/proc/self/fd/1";

/// The configuration of the sandbox's VM.
pub fn vm_config(
    artifacts: &Artifacts,
    size: VmSize,
    extra_cmdline: &str,
    paths: &SandboxPaths,
    net: Vec<NetConfig>,
    vcpu_affinity: Vec<u32>,
    balloon: bool,
) -> VmConfig {
    VmConfig {
        kernel: artifacts.kernel.clone(),
        initramfs: Some(artifacts.initramfs.clone()),
        extra_cmdline: extra_cmdline.to_string(),
        vcpus: size.vcpus,
        memory_mib: size.memory_mib,
        vsock: Some(VsockConfig {
            guest_cid: GUEST_CID,
            socket: paths.vsock(),
            allowed_guest_ports: vec![ports::LOG_PORT],
        }),
        serial_log: Some(PathBuf::from(CONSOLE_TO_STDOUT)),
        control_socket: Some(paths.control()),
        fs: vec![FsShare {
            tag: FS_TAG.to_string(),
            path: paths.shared(),
            cache: FsCache::Auto,
        }],
        net,
        vcpu_affinity,
        balloon,
        snapshot_dir: None,
        restore: None,
        start_paused: false,
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::HuskConfig;

    #[test]
    fn the_vm_has_vsock_fs_console_and_control() {
        let paths = SandboxPaths::new(Path::new("/run/husk"), "sb");
        let a = HuskConfig::default().artifacts(Path::new("/p/bin"));
        let c = vm_config(
            &a,
            VmSize {
                vcpus: 2,
                memory_mib: 128,
            },
            "quiet",
            &paths,
            Vec::new(),
            Vec::new(),
            true,
        );
        c.validate().unwrap();
        assert!(c.balloon);
        assert_eq!(c.vsock.as_ref().unwrap().socket, paths.vsock());
        assert_eq!(c.vsock.as_ref().unwrap().allowed_guest_ports, [1026]);
        assert_eq!(c.fs[0].tag, "husk");
        assert_eq!(c.fs[0].path, paths.shared());
        assert_eq!(c.serial_log.as_deref(), Some(Path::new("/proc/self/fd/1")));
        assert_eq!(c.control_socket, Some(paths.control()));
    }
}

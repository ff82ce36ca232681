//! The VmConfig the shim writes for husk-vmm: artifacts and size from the husk config, the
//! size overridden per sandbox by the annotations `io.husk.vcpus` / `io.husk.memory` (MiB) of
//! the container that boots the VM, plus the devices every husk VM has (hybrid vsock, the
//! virtio-fs share, the control socket, the console on the VMM's stdout).

use std::collections::HashMap;
use std::path::PathBuf;

use husk_protocol::vm_config::{MAX_MEMORY_MIB, MAX_VCPUS, MIN_MEMORY_MIB};
use husk_protocol::{ports, FsCache, FsShare, VmConfig, VsockConfig};

use crate::config::{Artifacts, ConfigError, HuskConfig};
use crate::paths::{SandboxPaths, FS_TAG};

/// Annotation: vCPUs of the VM.
pub const ANNOTATION_VCPUS: &str = "io.husk.vcpus";
/// Annotation: guest RAM in MiB.
pub const ANNOTATION_MEMORY: &str = "io.husk.memory";
/// The guest's vsock context id (each VM has its own device, so one value serves all).
pub const GUEST_CID: u32 = 3;
/// husk-vmm writes the guest console to this path: its own stdout, a pipe the shim reads.
pub const CONSOLE_TO_STDOUT: &str = "/proc/self/fd/1";

/// How big a VM is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmSize {
    /// vCPUs.
    pub vcpus: u8,
    /// Guest RAM in MiB.
    pub memory_mib: u32,
}

fn annotation<T: std::str::FromStr + PartialOrd + std::fmt::Display + Copy>(
    annotations: &HashMap<String, String>,
    key: &str,
    unit: &str,
    range: (T, T),
) -> Result<Option<T>, ConfigError> {
    let Some(value) = annotations.get(key) else {
        return Ok(None);
    };
    let bad = |message: String| ConfigError::Annotation {
        key: key.to_string(),
        value: value.clone(),
        message,
    };
    let n: T = value.trim().parse().map_err(|_| {
        bad(format!(
            "must be a whole number of {unit} ({}..={})",
            range.0, range.1
        ))
    })?;
    if n < range.0 || n > range.1 {
        return Err(bad(format!(
            "{n} {unit} is out of range ({}..={})",
            range.0, range.1
        )));
    }
    Ok(Some(n))
}

/// The VM size: the config's defaults, then the annotations.
pub fn size(
    config: &HuskConfig,
    annotations: &HashMap<String, String>,
) -> Result<VmSize, ConfigError> {
    let default_bad = |message: String| ConfigError::Value {
        path: PathBuf::from("vcpus/memory_mib"),
        message,
    };
    if config.vcpus == 0 || config.vcpus > MAX_VCPUS {
        return Err(default_bad(format!(
            "vcpus = {} is out of range (1..={MAX_VCPUS})",
            config.vcpus
        )));
    }
    if !(MIN_MEMORY_MIB..=MAX_MEMORY_MIB).contains(&config.memory_mib) {
        return Err(default_bad(format!(
            "memory_mib = {} is out of range ({MIN_MEMORY_MIB}..={MAX_MEMORY_MIB})",
            config.memory_mib
        )));
    }
    let vcpus = annotation(annotations, ANNOTATION_VCPUS, "vCPUs", (1u8, MAX_VCPUS))?;
    let memory = annotation(
        annotations,
        ANNOTATION_MEMORY,
        "MiB",
        (MIN_MEMORY_MIB, MAX_MEMORY_MIB),
    )?;
    Ok(VmSize {
        vcpus: vcpus.unwrap_or(config.vcpus),
        memory_mib: memory.unwrap_or(config.memory_mib),
    })
}

/// The configuration of the sandbox's VM.
pub fn vm_config(
    artifacts: &Artifacts,
    size: VmSize,
    extra_cmdline: &str,
    paths: &SandboxPaths,
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
        net: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn ann(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn annotations_override_the_config() {
        let c = HuskConfig::default();
        assert_eq!(
            size(&c, &ann(&[])).unwrap(),
            VmSize {
                vcpus: 1,
                memory_mib: 256
            }
        );
        assert_eq!(
            size(
                &c,
                &ann(&[(ANNOTATION_VCPUS, "2"), (ANNOTATION_MEMORY, " 512 ")])
            )
            .unwrap(),
            VmSize {
                vcpus: 2,
                memory_mib: 512
            }
        );
    }

    #[test]
    fn bad_annotations_are_named() {
        let c = HuskConfig::default();
        let cases = [
            (ANNOTATION_VCPUS, "two", "whole number of vCPUs (1..=32)"),
            (ANNOTATION_VCPUS, "0", "0 vCPUs is out of range"),
            (ANNOTATION_VCPUS, "64", "out of range"),
            (ANNOTATION_MEMORY, "1G", "whole number of MiB"),
            (ANNOTATION_MEMORY, "16", "16 MiB is out of range (64..="),
        ];
        for (key, value, words) in cases {
            let e = size(&c, &ann(&[(key, value)])).unwrap_err().to_string();
            assert!(e.contains(key) && e.contains(words), "{key}={value}: {e}");
        }
        let bad = HuskConfig {
            memory_mib: 8,
            ..Default::default()
        };
        assert!(size(&bad, &ann(&[])).is_err());
    }

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
        );
        c.validate().unwrap();
        assert_eq!(c.vsock.as_ref().unwrap().socket, paths.vsock());
        assert_eq!(c.vsock.as_ref().unwrap().allowed_guest_ports, [1026]);
        assert_eq!(c.fs[0].tag, "husk");
        assert_eq!(c.fs[0].path, paths.shared());
        assert_eq!(c.serial_log.as_deref(), Some(Path::new("/proc/self/fd/1")));
        assert_eq!(c.control_socket, Some(paths.control()));
    }
}

//! The configuration of one micro-VM, as the shim writes it and `husk-vmm` reads it (JSON).
//!
//! Validation lives here so that both sides reject the same bad values with the same words.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Most vCPUs one VM may have (the MP table and the IOAPIC routing are built for this many).
pub const MAX_VCPUS: u8 = 32;
/// Smallest guest RAM that boots the husk kernel with its initramfs.
pub const MIN_MEMORY_MIB: u32 = 64;
/// Largest guest RAM: everything must fit below the 32-bit MMIO gap plus the high region.
pub const MAX_MEMORY_MIB: u32 = 512 * 1024;
/// Longest extra kernel command line accepted (the whole line is capped at 2048 bytes).
pub const MAX_EXTRA_CMDLINE: usize = 1024;

/// Everything `husk-vmm` needs to start one VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    /// Guest kernel: an ELF `vmlinux` or a `bzImage`.
    pub kernel: PathBuf,
    /// Optional initramfs (newc cpio, possibly gzip-compressed).
    #[serde(default)]
    pub initramfs: Option<PathBuf>,
    /// Appended to the VMM's own kernel command line.
    #[serde(default)]
    pub extra_cmdline: String,
    /// Number of vCPUs (1..=MAX_VCPUS).
    #[serde(default = "default_vcpus")]
    pub vcpus: u8,
    /// Guest RAM in MiB.
    #[serde(default = "default_memory_mib")]
    pub memory_mib: u32,
    /// Hybrid vsock; absent means the VM has no vsock device.
    #[serde(default)]
    pub vsock: Option<VsockConfig>,
    /// Where the guest's serial console goes; absent means it is discarded.
    #[serde(default)]
    pub serial_log: Option<PathBuf>,
    /// Control socket (ping, pause, resume, shutdown); absent means no control socket.
    #[serde(default)]
    pub control_socket: Option<PathBuf>,
}

/// A virtio-vsock device whose host side is a Unix socket (Firecracker's "hybrid vsock").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockConfig {
    /// The guest's context id (3 or more; 0, 1, 2 and u32::MAX are reserved).
    pub guest_cid: u32,
    /// Host Unix socket the VMM listens on for host-initiated connections.
    pub socket: PathBuf,
    /// Guest ports allowed to connect to the host (to `<socket>_<port>`); others get a reset.
    #[serde(default)]
    pub allowed_guest_ports: Vec<u32>,
}

/// Longest Unix socket path (sun_path is 108 bytes including the NUL); `_<port>` must fit too.
const MAX_SOCKET_PATH: usize = 107 - ("_4294967295".len());

fn default_vcpus() -> u8 {
    1
}

fn default_memory_mib() -> u32 {
    256
}

/// A VM configuration that cannot be used, with the field and value named.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VmConfigError {
    /// The JSON did not parse or had unknown fields.
    #[error("VM config is not valid JSON for this version: {0}")]
    Parse(String),
    /// vcpus out of range.
    #[error("vcpus = {0} is out of range (1..={MAX_VCPUS})")]
    Vcpus(u8),
    /// memory_mib out of range.
    #[error("memory_mib = {0} is out of range ({MIN_MEMORY_MIB}..={MAX_MEMORY_MIB})")]
    Memory(u32),
    /// Reserved guest CID.
    #[error("vsock guest_cid = {0} is reserved (use 3 or more, below 4294967295)")]
    GuestCid(u32),
    /// Socket path too long for sun_path once `_<port>` is appended.
    #[error("vsock socket path {0:?} is longer than {MAX_SOCKET_PATH} bytes")]
    SocketPath(PathBuf),
    /// Extra command line too long or containing a NUL.
    #[error("extra_cmdline is longer than {MAX_EXTRA_CMDLINE} bytes or contains a NUL byte")]
    Cmdline,
}

impl VmConfig {
    /// Parses and validates a JSON configuration.
    pub fn from_json(text: &str) -> Result<Self, VmConfigError> {
        let config: VmConfig =
            serde_json::from_str(text).map_err(|e| VmConfigError::Parse(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// Serialises to pretty JSON.
    pub fn to_json(&self) -> String {
        // A struct of paths, strings and integers always serialises.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// Checks every value against the limits above.
    pub fn validate(&self) -> Result<(), VmConfigError> {
        if self.vcpus == 0 || self.vcpus > MAX_VCPUS {
            return Err(VmConfigError::Vcpus(self.vcpus));
        }
        if !(MIN_MEMORY_MIB..=MAX_MEMORY_MIB).contains(&self.memory_mib) {
            return Err(VmConfigError::Memory(self.memory_mib));
        }
        if self.extra_cmdline.len() > MAX_EXTRA_CMDLINE || self.extra_cmdline.contains('\0') {
            return Err(VmConfigError::Cmdline);
        }
        if let Some(vsock) = &self.vsock {
            if vsock.guest_cid < 3 || vsock.guest_cid == u32::MAX {
                return Err(VmConfigError::GuestCid(vsock.guest_cid));
            }
            if vsock.socket.as_os_str().len() > MAX_SOCKET_PATH {
                return Err(VmConfigError::SocketPath(vsock.socket.clone()));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minimal() -> VmConfig {
        VmConfig::from_json(r#"{"kernel": "/k"}"#).expect("minimal config parses")
    }

    #[test]
    fn defaults_fill_in() {
        let c = minimal();
        assert_eq!(c.vcpus, 1);
        assert_eq!(c.memory_mib, 256);
        assert!(c.vsock.is_none());
    }

    #[test]
    fn round_trips_through_json() {
        let mut c = minimal();
        c.vsock = Some(VsockConfig {
            guest_cid: 3,
            socket: "/run/husk/v.sock".into(),
            allowed_guest_ports: vec![1025],
        });
        assert_eq!(VmConfig::from_json(&c.to_json()), Ok(c));
    }

    #[test]
    fn rejects_bad_values_by_name() {
        let cases = [
            (r#"{"kernel":"/k","vcpus":0}"#, "vcpus = 0"),
            (r#"{"kernel":"/k","vcpus":33}"#, "vcpus = 33"),
            (r#"{"kernel":"/k","memory_mib":8}"#, "memory_mib = 8"),
            (
                r#"{"kernel":"/k","vsock":{"guest_cid":2,"socket":"/s"}}"#,
                "guest_cid = 2",
            ),
            (
                r#"{"kernel":"/k","colour":"red"}"#,
                "unknown field `colour`",
            ),
        ];
        for (json, words) in cases {
            let err = VmConfig::from_json(json).expect_err(json).to_string();
            assert!(err.contains(words), "{json}: {err}");
        }
        let long = format!(
            r#"{{"kernel":"/k","vsock":{{"guest_cid":3,"socket":"/{}"}}}}"#,
            "a".repeat(100)
        );
        assert!(matches!(
            VmConfig::from_json(&long),
            Err(VmConfigError::SocketPath(_))
        ));
    }
}

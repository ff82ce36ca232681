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
    /// virtio-fs shares: host directories the guest mounts by tag (`mount -t virtiofs <tag>`).
    #[serde(default)]
    pub fs: Vec<FsShare>,
    /// virtio-net devices, each backed by a host tap device.
    #[serde(default)]
    pub net: Vec<NetConfig>,
    /// A virtio-balloon device with free page reporting: memory the guest frees goes back to
    /// the host. Absent (false): no balloon.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub balloon: bool,
    /// Host CPUs the vCPU threads are pinned to: vCPU `i` runs only on
    /// `vcpu_affinity[i % len]`. Empty (the default): the host scheduler places them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vcpu_affinity: Vec<u32>,
    /// A directory where the control socket's `snapshot` writes the paused VM (files `state`
    /// and `memory`, opened when the VM is built, so husk-vmm needs no path access in its
    /// jail). Absent: `snapshot` is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_dir: Option<PathBuf>,
    /// A snapshot directory to restore instead of booting `kernel`: the VM continues where the
    /// snapshot left it. The rest of the configuration must describe the same machine (vCPUs,
    /// memory, the same devices in the same order); sockets, taps and shares are this VM's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore: Option<PathBuf>,
    /// Start with the vCPUs paused (a `resume` on the control socket runs them).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub start_paused: bool,
}

/// Highest host CPU number `vcpu_affinity` may name (the size of the kernel's `cpu_set_t`).
pub const MAX_HOST_CPU: u32 = 1023;

/// A host directory served to the guest by an in-process virtio-fs device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FsShare {
    /// The mount tag the guest uses (1 to 36 bytes, the size of the device's tag field).
    pub tag: String,
    /// The absolute host directory to share.
    pub path: PathBuf,
    /// How long the guest may cache names and attributes.
    #[serde(default)]
    pub cache: FsCache,
}

/// virtio-fs cache policy, as virtiofsd names them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FsCache {
    /// No caching: every access goes to the host (changes on the host are seen at once).
    Never,
    /// Short timeouts (1 s): host changes show up within a second.
    #[default]
    Auto,
    /// Cache for a long time: fastest, for content the host does not change.
    Always,
}

/// A virtio-net device whose host side is an existing tap device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetConfig {
    /// The tap device's name (it must exist; at most 15 bytes).
    pub tap: String,
    /// The guest NIC's MAC address, `aa:bb:cc:dd:ee:ff`.
    pub mac: String,
    /// The MTU the device advertises (68..=65535); absent leaves the guest default.
    #[serde(default)]
    pub mtu: Option<u16>,
    /// The network namespace (a path such as `/var/run/netns/cni-...`) the tap lives in; the
    /// VMM opens the tap from a thread that joined it. Absent: the VMM's own namespace.
    #[serde(default)]
    pub netns: Option<PathBuf>,
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

/// Most guest ports one VM may allow to reach the host.
pub const MAX_ALLOWED_GUEST_PORTS: usize = 64;

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
    /// A snapshot path that is not absolute.
    #[error("{0} = {1:?} must be an absolute path")]
    SnapshotPath(&'static str, PathBuf),
    /// Reserved guest CID.
    #[error("vsock guest_cid = {0} is reserved (use 3 or more, below 4294967295)")]
    GuestCid(u32),
    /// Socket path too long for sun_path once `_<port>` is appended.
    #[error("vsock socket path {0:?} is longer than {MAX_SOCKET_PATH} bytes")]
    SocketPath(PathBuf),
    /// A guest port that cannot be used (u32::MAX is VMADDR_PORT_ANY), or too many of them.
    #[error("vsock allowed_guest_ports: {0} (at most {MAX_ALLOWED_GUEST_PORTS} ports, each below 4294967295)")]
    GuestPorts(String),
    /// Extra command line too long or containing a NUL.
    #[error("extra_cmdline is longer than {MAX_EXTRA_CMDLINE} bytes or contains a NUL byte")]
    Cmdline,
    /// A virtio-fs tag that is empty, too long or has odd characters.
    #[error("fs tag {0:?} must be 1 to {MAX_FS_TAG} bytes of letters, digits, '-', '_' or '.'")]
    FsTag(String),
    /// Two virtio-fs shares with the same tag.
    #[error("fs tag {0:?} is used twice")]
    FsTagTwice(String),
    /// A virtio-fs path that is not absolute.
    #[error("fs share {0:?}: the path must be absolute")]
    FsPath(PathBuf),
    /// A vcpu_affinity list that is too long or names an impossible CPU.
    #[error(
        "vcpu_affinity: {0} (at most {MAX_VCPUS} entries, each a host CPU 0..={MAX_HOST_CPU})"
    )]
    VcpuAffinity(String),
    /// A tap name that is empty, too long or has odd characters.
    #[error("net tap {0:?} must be 1 to 15 bytes of letters, digits, '-', '_' or '.'")]
    TapName(String),
    /// A MAC address that does not parse or is multicast.
    #[error("net mac {0:?} must be a unicast address like 02:00:00:00:00:01")]
    Mac(String),
    /// An MTU out of range.
    #[error("net mtu {0} is out of range (68..=65535)")]
    Mtu(u16),
    /// A network namespace path that is not absolute.
    #[error("net netns {0:?}: the path must be absolute")]
    NetnsPath(PathBuf),
    /// More devices than interrupt lines.
    #[error("{0} devices are more than the {MAX_DEVICES} the VM has interrupt lines for")]
    TooManyDevices(usize),
}

/// Longest virtio-fs tag (the device's config space holds 36 bytes).
pub const MAX_FS_TAG: usize = 36;
/// Most virtio devices one VM may have (one legacy interrupt line each, 5 to 23).
pub const MAX_DEVICES: usize = 19;

fn plain_name(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Parses `aa:bb:cc:dd:ee:ff` into bytes; `None` when malformed or multicast.
pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        let part = parts.next()?;
        if part.len() != 2 {
            return None;
        }
        *byte = u8::from_str_radix(part, 16).ok()?;
    }
    (parts.next().is_none() && mac[0] & 1 == 0).then_some(mac)
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
        for (field, path) in [
            ("snapshot_dir", &self.snapshot_dir),
            ("restore", &self.restore),
        ] {
            if let Some(p) = path.as_ref().filter(|p| !p.is_absolute()) {
                return Err(VmConfigError::SnapshotPath(field, p.clone()));
            }
        }
        if let Some(vsock) = &self.vsock {
            if vsock.guest_cid < 3 || vsock.guest_cid == u32::MAX {
                return Err(VmConfigError::GuestCid(vsock.guest_cid));
            }
            if vsock.socket.as_os_str().len() > MAX_SOCKET_PATH {
                return Err(VmConfigError::SocketPath(vsock.socket.clone()));
            }
            let ports = &vsock.allowed_guest_ports;
            if ports.len() > MAX_ALLOWED_GUEST_PORTS {
                return Err(VmConfigError::GuestPorts(format!("{} ports", ports.len())));
            }
            if let Some(p) = ports.iter().find(|p| **p == u32::MAX) {
                return Err(VmConfigError::GuestPorts(format!("port {p}")));
            }
        }
        let mut tags = std::collections::HashSet::new();
        for share in &self.fs {
            if !plain_name(&share.tag, MAX_FS_TAG) {
                return Err(VmConfigError::FsTag(share.tag.clone()));
            }
            if !tags.insert(share.tag.as_str()) {
                return Err(VmConfigError::FsTagTwice(share.tag.clone()));
            }
            if !share.path.is_absolute() {
                return Err(VmConfigError::FsPath(share.path.clone()));
            }
        }
        for net in &self.net {
            if !plain_name(&net.tap, 15) {
                return Err(VmConfigError::TapName(net.tap.clone()));
            }
            if parse_mac(&net.mac).is_none() {
                return Err(VmConfigError::Mac(net.mac.clone()));
            }
            if let Some(mtu) = net.mtu.filter(|m| *m < 68) {
                return Err(VmConfigError::Mtu(mtu));
            }
            if let Some(ns) = net.netns.as_ref().filter(|p| !p.is_absolute()) {
                return Err(VmConfigError::NetnsPath(ns.clone()));
            }
        }
        if self.vcpu_affinity.len() > usize::from(MAX_VCPUS) {
            let n = self.vcpu_affinity.len();
            return Err(VmConfigError::VcpuAffinity(format!("{n} entries")));
        }
        if let Some(cpu) = self.vcpu_affinity.iter().find(|c| **c > MAX_HOST_CPU) {
            return Err(VmConfigError::VcpuAffinity(format!("CPU {cpu}")));
        }
        let devices = usize::from(self.vsock.is_some()) + self.fs.len() + self.net.len();
        if devices > MAX_DEVICES {
            return Err(VmConfigError::TooManyDevices(devices));
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
    fn snapshot_fields_are_optional_and_round_trip() {
        let mut c = minimal();
        let json = c.to_json();
        for field in ["snapshot_dir", "restore", "start_paused"] {
            assert!(
                !json.contains(field),
                "{field} is left out by default: {json}"
            );
        }
        c.snapshot_dir = Some("/var/lib/husk/templates/k.tmp".into());
        c.restore = Some("/var/lib/husk/templates/j".into());
        c.start_paused = true;
        assert_eq!(VmConfig::from_json(&c.to_json()), Ok(c.clone()));
        c.validate().unwrap();
        c.restore = Some("relative/dir".into());
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("restore") && e.contains("absolute"), "{e}");
    }

    #[test]
    fn vcpu_affinity_is_optional_bounded_and_round_trips() {
        let mut c = minimal();
        assert!(c.vcpu_affinity.is_empty());
        assert!(!c.to_json().contains("vcpu_affinity"));
        c.vcpu_affinity = vec![1, 0];
        c.validate().unwrap();
        assert_eq!(VmConfig::from_json(&c.to_json()), Ok(c.clone()));
        c.vcpu_affinity = vec![MAX_HOST_CPU + 1];
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("vcpu_affinity: CPU 1024"), "{e}");
        c.vcpu_affinity = vec![0; usize::from(MAX_VCPUS) + 1];
        assert!(matches!(c.validate(), Err(VmConfigError::VcpuAffinity(_))));
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
        let bad_port = r#"{"kernel":"/k","vsock":{"guest_cid":3,"socket":"/s","allowed_guest_ports":[4294967295]}}"#;
        assert!(matches!(
            VmConfig::from_json(bad_port),
            Err(VmConfigError::GuestPorts(_))
        ));
        let many: Vec<u32> = (0..65).collect();
        let too_many = format!(
            r#"{{"kernel":"/k","vsock":{{"guest_cid":3,"socket":"/s","allowed_guest_ports":{many:?}}}}}"#
        );
        assert!(matches!(
            VmConfig::from_json(&too_many),
            Err(VmConfigError::GuestPorts(_))
        ));
        let long = format!(
            r#"{{"kernel":"/k","vsock":{{"guest_cid":3,"socket":"/{}"}}}}"#,
            "a".repeat(100)
        );
        assert!(matches!(
            VmConfig::from_json(&long),
            Err(VmConfigError::SocketPath(_))
        ));
    }

    #[test]
    fn devices_are_validated_by_name() {
        let ok = r#"{"kernel":"/k","fs":[{"tag":"husk","path":"/run/husk/x/shared"}],
            "net":[{"tap":"husk0","mac":"02:00:00:00:00:01","mtu":1500}]}"#;
        let c = VmConfig::from_json(ok).unwrap();
        assert_eq!(c.fs[0].cache, FsCache::Auto);
        assert_eq!(parse_mac(&c.net[0].mac), Some([2, 0, 0, 0, 0, 1]));
        let cases = [
            (
                r#"{"kernel":"/k","fs":[{"tag":"","path":"/s"}]}"#,
                "fs tag \"\"",
            ),
            (
                r#"{"kernel":"/k","fs":[{"tag":"a b","path":"/s"}]}"#,
                "fs tag \"a b\"",
            ),
            (
                r#"{"kernel":"/k","fs":[{"tag":"t","path":"/s"},{"tag":"t","path":"/u"}]}"#,
                "used twice",
            ),
            (
                r#"{"kernel":"/k","fs":[{"tag":"t","path":"rel"}]}"#,
                "must be absolute",
            ),
            (
                r#"{"kernel":"/k","fs":[{"tag":"t","path":"/s","cache":"sometimes"}]}"#,
                "unknown variant",
            ),
            (
                r#"{"kernel":"/k","net":[{"tap":"a-very-long-tap-name","mac":"02:00:00:00:00:01"}]}"#,
                "net tap",
            ),
            (
                r#"{"kernel":"/k","net":[{"tap":"t","mac":"01:00:00:00:00:01"}]}"#,
                "unicast",
            ),
            (
                r#"{"kernel":"/k","net":[{"tap":"t","mac":"02:00:00:00:01"}]}"#,
                "unicast",
            ),
            (
                r#"{"kernel":"/k","net":[{"tap":"t","mac":"02:00:00:00:00:01","mtu":20}]}"#,
                "mtu 20",
            ),
        ];
        for (json, words) in cases {
            let err = VmConfig::from_json(json).expect_err(json).to_string();
            assert!(err.contains(words), "{json}: {err}");
        }
        let many: Vec<String> = (0..20)
            .map(|i| format!(r#"{{"tag":"t{i}","path":"/s"}}"#))
            .collect();
        let json = format!(r#"{{"kernel":"/k","fs":[{}]}}"#, many.join(","));
        assert_eq!(
            VmConfig::from_json(&json),
            Err(VmConfigError::TooManyDevices(20))
        );
    }
}

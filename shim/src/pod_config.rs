//! CRI's `runtime.v1.PodSandboxConfig`, the options of containerd's CreateSandbox: the fields
//! the VM is shaped by, read with [`crate::wire`] (containerd-shim-protos has no CRI types; the
//! field numbers are CRI's api.proto), and the pod settings a VM cannot honour, refused by name.

use std::collections::{BTreeMap, HashMap};

use crate::vm::size::{CRI_CPU_PERIOD, CRI_CPU_QUOTA, CRI_MEMORY};
use crate::wire::{self, Value, WireError};

/// The type URL containerd gives CreateSandbox's options.
pub const TYPE_URL_SUFFIX: &str = "runtime.v1.PodSandboxConfig";

/// CRI's `NamespaceMode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NamespaceMode {
    /// Shared by the pod's containers (CRI's default, 0).
    #[default]
    Pod,
    /// Each container its own.
    Container,
    /// The node's (hostNetwork, hostPID, hostIPC).
    Node,
    /// Another container's.
    Target,
}

impl NamespaceMode {
    fn from_wire(v: u64) -> NamespaceMode {
        match v {
            1 => NamespaceMode::Container,
            2 => NamespaceMode::Node,
            3 => NamespaceMode::Target,
            _ => NamespaceMode::Pod,
        }
    }
}

/// The pod's DNS settings (`DNSConfig`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dns {
    /// `nameserver` lines.
    pub servers: Vec<String>,
    /// The `search` line.
    pub searches: Vec<String>,
    /// The `options` line.
    pub options: Vec<String>,
}

/// What husk reads of a PodSandboxConfig.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PodConfig {
    /// metadata.name, for logs.
    pub name: String,
    /// metadata.namespace, for logs.
    pub namespace: String,
    /// The pod's hostname.
    pub hostname: String,
    /// dns_config, when given.
    pub dns: Option<Dns>,
    /// The pod's annotations.
    pub annotations: HashMap<String, String>,
    /// linux.cgroup_parent.
    pub cgroup_parent: String,
    /// linux.security_context.namespace_options.{network, pid, ipc}.
    pub network: NamespaceMode,
    /// See `network`.
    pub pid: NamespaceMode,
    /// See `network`.
    pub ipc: NamespaceMode,
    /// linux.sysctls.
    pub sysctls: BTreeMap<String, String>,
    /// linux.resources: cpu_period, cpu_quota, memory_limit_in_bytes (0: unset).
    pub cpu_period: i64,
    /// See `cpu_period`.
    pub cpu_quota: i64,
    /// See `cpu_period`.
    pub memory_limit: i64,
}

/// A PodSandboxConfig that could not be read or that asks for what a VM cannot give.
#[derive(Debug, thiserror::Error)]
pub enum PodConfigError {
    /// The options are not a PodSandboxConfig.
    #[error("CreateSandbox options are {0:?}, not CRI's runtime.v1.PodSandboxConfig")]
    Type(String),
    /// Malformed protobuf.
    #[error("PodSandboxConfig: {0}")]
    Wire(#[from] WireError),
    /// A setting husk refuses.
    #[error("{0}")]
    Refused(String),
}

impl PodConfig {
    /// Decodes the options' value (`type_url` must name a PodSandboxConfig).
    pub fn decode(type_url: &str, value: &[u8]) -> Result<PodConfig, PodConfigError> {
        if !type_url.ends_with(TYPE_URL_SUFFIX) {
            return Err(PodConfigError::Type(type_url.to_string()));
        }
        let mut c = PodConfig::default();
        for f in wire::fields(value) {
            match f? {
                (1, Value::Bytes(b)) => c.metadata(b)?,
                (2, Value::Bytes(b)) => c.hostname = wire::string(2, b)?,
                (4, Value::Bytes(b)) => c.dns = Some(dns(b)?),
                (7, Value::Bytes(b)) => {
                    let (k, v) = wire::map_entry(7, b)?;
                    c.annotations.insert(k, v);
                }
                (8, Value::Bytes(b)) => c.linux(b)?,
                _ => {}
            }
        }
        Ok(c)
    }

    fn metadata(&mut self, b: &[u8]) -> Result<(), WireError> {
        for f in wire::fields(b) {
            match f? {
                (1, Value::Bytes(v)) => self.name = wire::string(1, v)?,
                (3, Value::Bytes(v)) => self.namespace = wire::string(3, v)?,
                _ => {}
            }
        }
        Ok(())
    }

    fn linux(&mut self, b: &[u8]) -> Result<(), WireError> {
        for f in wire::fields(b) {
            match f? {
                (1, Value::Bytes(v)) => self.cgroup_parent = wire::string(1, v)?,
                (2, Value::Bytes(v)) => self.security_context(v)?,
                (3, Value::Bytes(v)) => {
                    let (k, val) = wire::map_entry(3, v)?;
                    self.sysctls.insert(k, val);
                }
                (5, Value::Bytes(v)) => self.resources(v)?,
                _ => {}
            }
        }
        Ok(())
    }

    fn security_context(&mut self, b: &[u8]) -> Result<(), WireError> {
        for f in wire::fields(b) {
            if let (1, Value::Bytes(ns)) = f? {
                for g in wire::fields(ns) {
                    match g? {
                        (1, Value::Varint(m)) => self.network = NamespaceMode::from_wire(m),
                        (2, Value::Varint(m)) => self.pid = NamespaceMode::from_wire(m),
                        (3, Value::Varint(m)) => self.ipc = NamespaceMode::from_wire(m),
                        _ => {}
                    }
                }
            }
        }
        Ok(())
    }

    fn resources(&mut self, b: &[u8]) -> Result<(), WireError> {
        for f in wire::fields(b) {
            // int64 fields: negative values travel as ten-byte two's complement varints.
            match f? {
                (1, Value::Varint(v)) => self.cpu_period = v as i64,
                (2, Value::Varint(v)) => self.cpu_quota = v as i64,
                (4, Value::Varint(v)) => self.memory_limit = v as i64,
                _ => {}
            }
        }
        Ok(())
    }

    /// Refuses what a husk VM cannot give the pod, naming the setting.
    pub fn check(&self) -> Result<(), PodConfigError> {
        for (mode, kind, k8s) in [
            (self.network, "network", "hostNetwork"),
            (self.pid, "pid", "hostPID"),
            (self.ipc, "ipc", "hostIPC"),
        ] {
            if mode == NamespaceMode::Node {
                return Err(PodConfigError::Refused(format!(
                    "linux.security_context.namespace_options.{kind} is NODE ({k8s}: true in a \
                     pod spec): a husk VM cannot give a pod the host's {kind} namespace; run it \
                     with runc"
                )));
            }
        }
        if self.pid == NamespaceMode::Target {
            return Err(PodConfigError::Refused(
                "linux.security_context.namespace_options.pid is TARGET, which applies to \
                 containers, not to a pod sandbox"
                    .into(),
            ));
        }
        if let Some(name) = self.sysctls.keys().next() {
            return Err(PodConfigError::Refused(format!(
                "linux.sysctls ({name}, ...): pod-level sysctls are not applied by husk's \
                 sandbox API yet; use the podsandbox sandboxer (the default) for this pod"
            )));
        }
        Ok(())
    }

    /// The annotations the VM is sized by, as CRI gives them to a pause container's spec: the
    /// pod's own plus the `io.kubernetes.cri.sandbox-*` resource figures.
    pub fn sizing_annotations(&self) -> HashMap<String, String> {
        let mut a: HashMap<String, String> = self
            .annotations
            .iter()
            .filter(|(k, _)| k.starts_with("io.husk."))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if self.cpu_period != 0 {
            a.insert(CRI_CPU_PERIOD.into(), self.cpu_period.to_string());
        }
        if self.cpu_quota != 0 {
            a.insert(CRI_CPU_QUOTA.into(), self.cpu_quota.to_string());
        }
        if self.memory_limit != 0 {
            a.insert(CRI_MEMORY.into(), self.memory_limit.to_string());
        }
        a
    }

    /// The pod cgroup path as CRI would write it into a pause container's spec: systemd's
    /// `slice:cri-containerd:id` under a `.slice` parent, else `parent/id`.
    pub fn cgroups_path(&self, sandbox_id: &str) -> Option<String> {
        let parent = self.cgroup_parent.as_str();
        if parent.is_empty() {
            return None;
        }
        Some(if parent.ends_with(".slice") {
            let slice = parent.rsplit('/').next().unwrap_or(parent);
            format!("{slice}:cri-containerd:{sandbox_id}")
        } else {
            format!("{}/{sandbox_id}", parent.trim_end_matches('/'))
        })
    }
}

fn dns(b: &[u8]) -> Result<Dns, WireError> {
    let mut d = Dns::default();
    for f in wire::fields(b) {
        match f? {
            (1, Value::Bytes(v)) => d.servers.push(wire::string(1, v)?),
            (2, Value::Bytes(v)) => d.searches.push(wire::string(2, v)?),
            (3, Value::Bytes(v)) => d.options.push(wire::string(3, v)?),
            _ => {}
        }
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::encode::{bytes, entry, uint};

    const URL: &str = "type.googleapis.com/runtime.v1.PodSandboxConfig";

    fn sample(ns_modes: (u64, u64, u64), sysctl: bool) -> Vec<u8> {
        let mut meta = Vec::new();
        bytes(1, b"web", &mut meta);
        bytes(2, b"uid-1", &mut meta);
        bytes(3, b"default", &mut meta);
        let mut dns = Vec::new();
        bytes(1, b"10.0.0.10", &mut dns);
        bytes(2, b"svc.cluster.local", &mut dns);
        bytes(3, b"ndots:5", &mut dns);
        let mut nso = Vec::new();
        uint(1, ns_modes.0, &mut nso);
        uint(2, ns_modes.1, &mut nso);
        uint(3, ns_modes.2, &mut nso);
        let mut sc = Vec::new();
        bytes(1, &nso, &mut sc);
        let mut res = Vec::new();
        uint(1, 100_000, &mut res);
        uint(2, 50_000, &mut res);
        uint(4, 256 << 20, &mut res);
        let mut linux = Vec::new();
        bytes(1, b"/kubepods/besteffort/pod1", &mut linux);
        bytes(2, &sc, &mut linux);
        if sysctl {
            entry(3, "net.ipv4.ip_forward", "1", &mut linux);
        }
        bytes(5, &res, &mut linux);
        let mut m = Vec::new();
        bytes(1, &meta, &mut m);
        bytes(2, b"web-0", &mut m);
        bytes(3, b"/var/log/pods/x", &mut m);
        bytes(4, &dns, &mut m);
        entry(7, "io.husk.memory", "512", &mut m);
        entry(7, "other", "x", &mut m);
        bytes(8, &linux, &mut m);
        m
    }

    #[test]
    fn a_pod_config_is_read() {
        let c = PodConfig::decode(URL, &sample((1, 1, 0), false)).unwrap();
        assert_eq!((c.name.as_str(), c.namespace.as_str()), ("web", "default"));
        assert_eq!(c.hostname, "web-0");
        let dns = c.dns.clone().unwrap();
        assert_eq!(dns.servers, ["10.0.0.10"]);
        assert_eq!(dns.searches, ["svc.cluster.local"]);
        assert_eq!(dns.options, ["ndots:5"]);
        assert_eq!(c.network, NamespaceMode::Container);
        assert_eq!(c.pid, NamespaceMode::Container);
        assert_eq!(c.ipc, NamespaceMode::Pod);
        c.check().unwrap();
        let a = c.sizing_annotations();
        assert_eq!(a.get("io.husk.memory").map(String::as_str), Some("512"));
        assert!(!a.contains_key("other"));
        assert_eq!(a.get(CRI_MEMORY).map(String::as_str), Some("268435456"));
        assert_eq!(a.get(CRI_CPU_QUOTA).map(String::as_str), Some("50000"));
        assert_eq!(
            c.cgroups_path("sb1").as_deref(),
            Some("/kubepods/besteffort/pod1/sb1")
        );
    }

    #[test]
    fn systemd_parents_give_a_systemd_path() {
        let c = PodConfig {
            cgroup_parent: "kubepods-besteffort-pod1.slice".into(),
            ..Default::default()
        };
        assert_eq!(
            c.cgroups_path("sb1").as_deref(),
            Some("kubepods-besteffort-pod1.slice:cri-containerd:sb1")
        );
        assert_eq!(PodConfig::default().cgroups_path("sb1"), None);
    }

    #[test]
    fn host_namespaces_and_pod_sysctls_are_refused_by_name() {
        for (modes, word) in [
            ((2, 1, 0), "hostNetwork"),
            ((1, 2, 0), "hostPID"),
            ((1, 1, 2), "hostIPC"),
            ((1, 3, 0), "TARGET"),
        ] {
            let e = PodConfig::decode(URL, &sample(modes, false))
                .unwrap()
                .check()
                .unwrap_err();
            assert!(e.to_string().contains(word), "{e}");
        }
        let e = PodConfig::decode(URL, &sample((1, 1, 0), true))
            .unwrap()
            .check()
            .unwrap_err();
        assert!(e.to_string().contains("net.ipv4.ip_forward"), "{e}");
    }

    #[test]
    fn other_types_and_garbage_are_errors() {
        assert!(matches!(
            PodConfig::decode("containerd.runc.v1.Options", &[]),
            Err(PodConfigError::Type(_))
        ));
        assert!(matches!(
            PodConfig::decode(URL, &[0x12, 9, b'a']),
            Err(PodConfigError::Wire(_))
        ));
    }
}

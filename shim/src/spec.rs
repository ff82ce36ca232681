//! The container's OCI spec (`<bundle>/config.json`), kept as JSON so that every field the
//! shim does not touch reaches the agent exactly as containerd wrote it. The shim reads the
//! annotations, hostname and root, finds the host bind mounts to share, and rewrites paths to
//! guest paths (docs/DESIGN.md, "Files on the host, per sandbox").

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::paths;

/// CRI annotation: `sandbox` or `container`.
pub const CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
/// CRI annotation: the pod's sandbox id.
pub const SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";

/// A spec that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// config.json could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// config.json is not a JSON object.
    #[error("{path} is not a valid OCI spec: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// A value the shim needs is malformed.
    #[error("OCI spec: {0}")]
    Invalid(String),
}

/// A bind mount whose host source must be shared with the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostBind {
    /// Index in the spec's `mounts`.
    pub index: usize,
    /// The host path.
    pub source: PathBuf,
    /// Read-only (`ro` in the options).
    pub readonly: bool,
    /// Recursive (`rbind`).
    pub recursive: bool,
}

/// config.json.
#[derive(Debug, Clone, PartialEq)]
pub struct Spec(Value);

/// Host paths the guest has its own version of: binds from these stay guest paths.
const GUEST_OWN: [&str; 3] = ["/dev", "/proc", "/sys"];

impl Spec {
    /// Reads `<bundle>/config.json`.
    pub fn load(bundle: &Path) -> Result<Spec, SpecError> {
        let path = bundle.join("config.json");
        let text = std::fs::read(&path).map_err(|source| SpecError::Read {
            path: path.clone(),
            source,
        })?;
        Spec::parse(&text, &path)
    }

    /// Parses spec JSON (`path` only names it in errors).
    pub fn parse(text: &[u8], path: &Path) -> Result<Spec, SpecError> {
        let v: Value = serde_json::from_slice(text).map_err(|e| SpecError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        if !v.is_object() {
            return Err(SpecError::Parse {
                path: path.to_path_buf(),
                message: "not a JSON object".into(),
            });
        }
        Ok(Spec(v))
    }

    /// The annotations (string values only).
    pub fn annotations(&self) -> HashMap<String, String> {
        self.0
            .get("annotations")
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_string())))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The sandbox this container belongs to: the CRI sandbox id for a pod's container, else
    /// the container itself (a pod sandbox, or a standalone `ctr` container).
    pub fn sandbox_id(&self, own_id: &str) -> String {
        let a = self.annotations();
        match (a.get(CONTAINER_TYPE).map(String::as_str), a.get(SANDBOX_ID)) {
            (Some("container"), Some(sb)) if !sb.is_empty() => sb.clone(),
            _ => own_id.to_string(),
        }
    }

    /// The hostname, if set.
    pub fn hostname(&self) -> Option<String> {
        self.0
            .get("hostname")
            .and_then(Value::as_str)
            .filter(|h| !h.is_empty())
            .map(str::to_string)
    }

    /// `linux.cgroupsPath`, if set (see [`crate::cgroup::path`] for its two forms).
    pub fn cgroups_path(&self) -> Option<String> {
        self.0
            .pointer("/linux/cgroupsPath")
            .and_then(Value::as_str)
            .filter(|p| !p.is_empty())
            .map(str::to_string)
    }

    /// The path of the network namespace to join (`linux.namespaces[type=network].path`), as
    /// CRI (`/var/run/netns/cni-...`) and `ctr run --with-ns network:<path>` set it.
    pub fn network_namespace(&self) -> Option<PathBuf> {
        self.0
            .pointer("/linux/namespaces")?
            .as_array()?
            .iter()
            .find(|n| n.get("type").and_then(Value::as_str) == Some("network"))?
            .get("path")
            .and_then(Value::as_str)
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
    }

    /// Refuses a spec that shares a namespace of the host with the container. Without a
    /// `network`, `ipc` or `pid` entry in `linux.namespaces` the container asks for the host's
    /// (CRI's `hostNetwork`, `hostIPC`, `hostPID`; `ctr run --net-host`), which a VM cannot
    /// give: it would silently get the guest's instead, so the request is refused by name.
    pub fn check_host_namespaces(&self) -> Result<(), SpecError> {
        let kinds: Vec<&str> = self
            .0
            .pointer("/linux/namespaces")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|n| n.get("type").and_then(Value::as_str))
                    .collect()
            })
            .unwrap_or_default();
        for (kind, k8s) in [
            ("network", "hostNetwork"),
            ("ipc", "hostIPC"),
            ("pid", "hostPID"),
        ] {
            if !kinds.contains(&kind) {
                return Err(SpecError::Invalid(format!(
                    "linux.namespaces has no {kind} namespace, so the container would share the \
                     host's ({k8s}: true in a pod spec): a husk VM cannot give a container the \
                     host's {kind} namespace; run it with runc"
                )));
            }
        }
        Ok(())
    }

    /// Adds a read-write bind mount of the host file `source` on `destination`, unless the spec
    /// already mounts something there (CRI's rule for a pod's hosts, hostname and resolv.conf).
    pub fn bind_unless_mounted(&mut self, destination: &str, source: &Path) {
        let Some(obj) = self.0.as_object_mut() else {
            return;
        };
        let mounts = obj
            .entry("mounts")
            .or_insert_with(|| Value::Array(Vec::new()));
        let Some(mounts) = mounts.as_array_mut() else {
            return;
        };
        if mounts
            .iter()
            .any(|m| m.get("destination").and_then(Value::as_str) == Some(destination))
        {
            return;
        }
        mounts.push(serde_json::json!({
            "destination": destination,
            "type": "bind",
            "source": source.display().to_string(),
            "options": ["rbind", "rprivate", "rw"],
        }));
    }

    /// `root.path` (absolute, or relative to the bundle).
    pub fn root_path(&self, bundle: &Path) -> Option<PathBuf> {
        let p = self.0.pointer("/root/path").and_then(Value::as_str)?;
        Some(if Path::new(p).is_absolute() {
            PathBuf::from(p)
        } else {
            bundle.join(p)
        })
    }

    /// The bind mounts whose sources are host paths to share.
    pub fn host_binds(&self) -> Result<Vec<HostBind>, SpecError> {
        let Some(mounts) = self.0.get("mounts").and_then(Value::as_array) else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for (index, m) in mounts.iter().enumerate() {
            let options: Vec<&str> = m
                .get("options")
                .and_then(Value::as_array)
                .map(|o| o.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let is_bind = m.get("type").and_then(Value::as_str) == Some("bind")
                || options.iter().any(|o| *o == "bind" || *o == "rbind");
            if !is_bind {
                continue;
            }
            let source = m.get("source").and_then(Value::as_str).unwrap_or("");
            if !Path::new(source).is_absolute() {
                return Err(SpecError::Invalid(format!(
                    "bind mount {index} has source {source:?}: it must be an absolute host path"
                )));
            }
            if GUEST_OWN
                .iter()
                .any(|g| source == *g || source.starts_with(&format!("{g}/")))
            {
                continue;
            }
            out.push(HostBind {
                index,
                source: PathBuf::from(source),
                readonly: options.contains(&"ro"),
                recursive: options.contains(&"rbind"),
            });
        }
        Ok(out)
    }

    /// Points the spec at guest paths: `root.path` to the shared rootfs, and each shared bind
    /// (by its index in `binds`) to `<shared>/<cid>/mounts/<n>`.
    pub fn rewrite_for_guest(&mut self, cid: &str, binds: &[HostBind]) {
        if let Some(obj) = self.0.as_object_mut() {
            let root = obj
                .entry("root")
                .or_insert_with(|| Value::Object(Default::default()));
            if let Some(root) = root.as_object_mut() {
                root.insert("path".into(), Value::String(paths::guest_rootfs(cid)));
            }
        }
        for (n, b) in binds.iter().enumerate() {
            if let Some(src) = self.0.pointer_mut(&format!("/mounts/{}/source", b.index)) {
                *src = Value::String(paths::guest_mount(cid, n));
            }
        }
    }

    /// The spec as JSON bytes.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(&self.0).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: &str = r#"{
        "ociVersion": "1.0.2",
        "hostname": "web",
        "process": {"args": ["sh"], "cwd": "/"},
        "root": {"path": "rootfs", "readonly": true},
        "annotations": {"io.kubernetes.cri.container-type": "container",
                        "io.kubernetes.cri.sandbox-id": "sb1", "n": 5},
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/data", "type": "bind", "source": "/srv/data", "options": ["rbind", "ro"]},
            {"destination": "/dev/fuse", "type": "bind", "source": "/dev/fuse", "options": ["bind"]},
            {"destination": "/etc/hosts", "source": "/var/lib/x/hosts", "options": ["bind", "rw"]}
        ],
        "linux": {"namespaces": [{"type": "pid"}]},
        "x-unknown": {"kept": true}
    }"#;

    fn spec() -> Spec {
        Spec::parse(SPEC.as_bytes(), Path::new("config.json")).unwrap()
    }

    #[test]
    fn finds_the_network_namespace_path() {
        assert_eq!(spec().network_namespace(), None);
        let s = |ns: &str| {
            Spec::parse(
                format!(r#"{{"linux":{{"namespaces":{ns}}}}}"#).as_bytes(),
                Path::new("c"),
            )
            .unwrap()
            .network_namespace()
        };
        assert_eq!(s(r#"[{"type":"network"}]"#), None);
        assert_eq!(
            s(r#"[{"type":"pid"},{"type":"network","path":"/var/run/netns/cni-1"}]"#),
            Some(PathBuf::from("/var/run/netns/cni-1"))
        );
    }

    #[test]
    fn a_host_namespace_is_refused_by_its_pod_field() {
        let s = |ns: &str| {
            Spec::parse(
                format!(r#"{{"linux":{{"namespaces":{ns}}}}}"#).as_bytes(),
                Path::new("c"),
            )
            .unwrap()
            .check_host_namespaces()
        };
        assert!(s(r#"[{"type":"pid"},{"type":"ipc"},{"type":"network","path":"/x"}]"#).is_ok());
        for (ns, want) in [
            (r#"[{"type":"pid"},{"type":"ipc"}]"#, "hostNetwork"),
            (r#"[{"type":"pid"},{"type":"network"}]"#, "hostIPC"),
            (r#"[{"type":"ipc"},{"type":"network"}]"#, "hostPID"),
            ("[]", "hostNetwork"),
        ] {
            let e = s(ns).unwrap_err().to_string();
            assert!(e.contains(want) && e.contains("runc"), "{ns}: {e}");
        }
        let none = Spec::parse(b"{}", Path::new("x")).unwrap();
        assert!(none.check_host_namespaces().is_err());
    }

    #[test]
    fn reads_what_the_shim_needs() {
        let s = spec();
        assert_eq!(s.sandbox_id("c1"), "sb1");
        assert_eq!(s.hostname().as_deref(), Some("web"));
        assert_eq!(
            s.root_path(Path::new("/b")),
            Some(PathBuf::from("/b/rootfs"))
        );
        assert!(!s.annotations().contains_key("n"));
        let standalone = Spec::parse(b"{}", Path::new("x")).unwrap();
        assert_eq!(standalone.sandbox_id("c1"), "c1");
    }

    #[test]
    fn host_binds_skip_guest_paths_and_keep_options() {
        let b = spec().host_binds().unwrap();
        assert_eq!(
            b,
            vec![
                HostBind {
                    index: 1,
                    source: "/srv/data".into(),
                    readonly: true,
                    recursive: true
                },
                HostBind {
                    index: 3,
                    source: "/var/lib/x/hosts".into(),
                    readonly: false,
                    recursive: false
                },
            ]
        );
        let bad = r#"{"mounts":[{"destination":"/x","type":"bind","source":"rel"}]}"#;
        let e = Spec::parse(bad.as_bytes(), Path::new("x"))
            .unwrap()
            .host_binds()
            .unwrap_err();
        assert!(e.to_string().contains("absolute"), "{e}");
    }

    #[test]
    fn rewrite_points_at_the_share_and_keeps_the_rest() {
        let mut s = spec();
        let binds = s.host_binds().unwrap();
        s.rewrite_for_guest("c1", &binds);
        let v: Value = serde_json::from_slice(&s.to_json()).unwrap();
        assert_eq!(v["root"]["path"], "/run/husk/shared/c1/rootfs");
        assert_eq!(v["root"]["readonly"], true);
        assert_eq!(v["mounts"][1]["source"], "/run/husk/shared/c1/mounts/0");
        assert_eq!(v["mounts"][3]["source"], "/run/husk/shared/c1/mounts/1");
        assert_eq!(v["mounts"][2]["source"], "/dev/fuse");
        assert_eq!(v["mounts"][0]["source"], "proc");
        assert_eq!(v["x-unknown"]["kept"], true);
    }

    #[test]
    fn garbage_is_refused_with_the_path() {
        let e = Spec::parse(b"[1]", Path::new("/b/config.json")).unwrap_err();
        assert!(e.to_string().contains("/b/config.json"));
        assert!(Spec::parse(b"{", Path::new("x")).is_err());
    }
}

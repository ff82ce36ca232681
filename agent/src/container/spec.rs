//! The OCI spec as the agent receives it: parsed, checked, and rewritten for the guest.
//!
//! - `linux.cgroupsPath` becomes `/husk/<container_id>`.
//! - Namespaces (agent.proto, "Namespaces"): a `network` entry with a path is dropped (the pod
//!   network is the guest's root network namespace); `ipc`, `uts` and `pid` entries with a path
//!   join the pod's sandbox container (`io.kubernetes.cri.sandbox-id`) through
//!   `/proc/<its pid>/ns/<kind>`, or become new namespaces when that container is unknown.

use std::path::Path;

use oci_spec::runtime::{LinuxNamespace, LinuxNamespaceType, Process, Spec};

use super::cgroup;
use crate::error::{AgentError, Result};

/// The annotation CRI sets to the pod's sandbox container id.
pub const SANDBOX_ID_ANNOTATION: &str = "io.kubernetes.cri.sandbox-id";

fn invalid(why: impl Into<String>) -> AgentError {
    AgentError::InvalidArgument(why.into())
}

/// Parses and checks `json`, then rewrites it for the guest. `sandbox_pid` gives the init pid
/// of a known container.
pub fn prepare(
    container_id: &str,
    json: &[u8],
    sandbox_pid: impl Fn(&str) -> Option<i32>,
) -> Result<Spec> {
    let mut spec: Spec =
        serde_json::from_slice(json).map_err(|e| invalid(format!("spec is not OCI JSON: {e}")))?;
    if !spec.version().starts_with("1.") {
        return Err(invalid(format!(
            "spec version {:?} is not 1.x",
            spec.version()
        )));
    }
    let root = spec
        .root()
        .as_ref()
        .ok_or_else(|| invalid("spec has no root"))?
        .path()
        .clone();
    if !root.is_absolute() {
        return Err(invalid(format!(
            "root.path {} must be absolute (a guest path)",
            root.display()
        )));
    }
    if !root.is_dir() {
        return Err(invalid(format!(
            "rootfs {} does not exist or is not a directory",
            root.display()
        )));
    }
    check_process(
        spec.process()
            .as_ref()
            .ok_or_else(|| invalid("spec has no process"))?,
    )?;
    let sandbox = spec
        .annotations()
        .as_ref()
        .and_then(|a| a.get(SANDBOX_ID_ANNOTATION))
        .filter(|id| id.as_str() != container_id)
        .and_then(|id| sandbox_pid(id));
    let mut linux = spec
        .linux()
        .clone()
        .ok_or_else(|| invalid("spec has no linux section"))?;
    if let Some(namespaces) = linux.namespaces().clone() {
        linux.set_namespaces(Some(rewrite_namespaces(namespaces, sandbox)));
    }
    linux.set_cgroups_path(Some(cgroup::spec_path(container_id).into()));
    spec.set_linux(Some(linux));
    Ok(spec)
}

/// Parses an exec's OCI Process.
pub fn parse_process(json: &[u8]) -> Result<Process> {
    let p: Process = serde_json::from_slice(json)
        .map_err(|e| invalid(format!("process is not OCI Process JSON: {e}")))?;
    check_process(&p)?;
    Ok(p)
}

fn check_process(p: &Process) -> Result<()> {
    if p.args().as_ref().is_none_or(|a| a.is_empty()) {
        return Err(invalid("process.args is empty"));
    }
    if !Path::new(p.cwd()).is_absolute() {
        return Err(invalid(format!(
            "process.cwd {} is not absolute",
            p.cwd().display()
        )));
    }
    Ok(())
}

/// The namespace rules above. `sandbox` is the sandbox container's init pid, if known.
pub fn rewrite_namespaces(
    namespaces: Vec<LinuxNamespace>,
    sandbox: Option<i32>,
) -> Vec<LinuxNamespace> {
    namespaces
        .into_iter()
        .filter_map(|mut ns| {
            if ns.path().is_none() {
                return Some(ns);
            }
            let kind = match ns.typ() {
                LinuxNamespaceType::Network => return None,
                LinuxNamespaceType::Ipc => "ipc",
                LinuxNamespaceType::Uts => "uts",
                LinuxNamespaceType::Pid => "pid",
                _ => return Some(ns),
            };
            ns.set_path(sandbox.map(|pid| format!("/proc/{pid}/ns/{kind}").into()));
            Some(ns)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec_json(root: &Path, extra: &str) -> Vec<u8> {
        format!(
            r#"{{"ociVersion":"1.0.2","root":{{"path":"{}"}},
            "process":{{"args":["/bin/true"],"cwd":"/","user":{{"uid":0,"gid":0}}}},
            "linux":{{"namespaces":[
              {{"type":"mount"}},
              {{"type":"network","path":"/proc/77/ns/net"}},
              {{"type":"ipc","path":"/proc/77/ns/ipc"}},
              {{"type":"uts","path":"/proc/77/ns/uts"}},
              {{"type":"pid"}}
            ],"cgroupsPath":"kubepods-besteffort.slice:cri-containerd:x"}}{extra}}}"#,
            root.display()
        )
        .into_bytes()
    }

    #[test]
    fn namespaces_and_cgroup_are_rewritten() {
        let d = tempfile::tempdir().unwrap();
        let ann = r#","annotations":{"io.kubernetes.cri.sandbox-id":"sb"}"#;
        let spec = prepare("c1", &spec_json(d.path(), ann), |id| {
            (id == "sb").then_some(42)
        })
        .unwrap();
        let linux = spec.linux().as_ref().unwrap();
        assert_eq!(linux.cgroups_path().as_deref(), Some(Path::new("/husk/c1")));
        let ns = linux.namespaces().as_ref().unwrap();
        assert_eq!(ns.len(), 4, "network entry with a path is dropped: {ns:?}");
        let ipc = ns
            .iter()
            .find(|n| n.typ() == LinuxNamespaceType::Ipc)
            .unwrap();
        assert_eq!(ipc.path().as_deref(), Some(Path::new("/proc/42/ns/ipc")));
        let pid = ns
            .iter()
            .find(|n| n.typ() == LinuxNamespaceType::Pid)
            .unwrap();
        assert!(pid.path().is_none());
    }

    #[test]
    fn unknown_sandbox_means_new_namespaces() {
        let d = tempfile::tempdir().unwrap();
        let spec = prepare("c1", &spec_json(d.path(), ""), |_| Some(1)).unwrap();
        let ns = spec.linux().as_ref().unwrap().namespaces().clone().unwrap();
        assert!(ns.iter().all(|n| n.path().is_none()), "{ns:?}");
    }

    #[test]
    fn bad_specs_are_invalid_arguments_naming_the_problem() {
        let d = tempfile::tempdir().unwrap();
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"{not json".to_vec(), "not OCI JSON"),
            (spec_json(&d.path().join("missing"), ""), "does not exist"),
            (spec_json(Path::new("rel"), ""), "must be absolute"),
            (
                br#"{"ociVersion":"1.0.2","root":{"path":"/"},"linux":{}}"#.to_vec(),
                "no process",
            ),
            (
                br#"{"ociVersion":"1.0.2","root":{"path":"/"},"process":{"args":[],"cwd":"/","user":{"uid":0,"gid":0}},"linux":{}}"#
                    .to_vec(),
                "args is empty",
            ),
        ];
        for (json, want) in cases {
            let e = prepare("c1", &json, |_| None).unwrap_err();
            assert!(matches!(e, AgentError::InvalidArgument(_)), "{e}");
            assert!(e.to_string().contains(want), "{e} !~ {want}");
        }
    }

    #[test]
    fn exec_process_json() {
        assert!(parse_process(br#"{"args":["sh"],"cwd":"/","user":{"uid":0,"gid":0}}"#).is_ok());
        assert!(parse_process(br#"{"args":["sh"],"cwd":"x","user":{"uid":0,"gid":0}}"#).is_err());
        assert!(parse_process(b"[]").is_err());
    }
}

//! The OCI spec as the agent receives it: parsed, checked, and rewritten for the guest.
//!
//! - `linux.cgroupsPath` becomes `/husk/<container_id>`.
//! - Namespaces (agent.proto, "Namespaces"): a `network` entry with a path is dropped (the pod
//!   network is the guest's root network namespace); `ipc`, `uts` and `pid` entries with a path
//!   join the pod's sandbox container (`io.kubernetes.cri.sandbox-id`) through
//!   `/proc/<its pid>/ns/<kind>`; a pod without a sandbox container (containerd's sandbox API)
//!   joins its anchor's instead ([`crate::container::anchor`]).
//! - For a container in the pod's network namespace, the `net.*` sysctls leave the spec; the
//!   agent sets them in the guest's root namespace ([`super::sysctl`]).
//! - `linux.rootfsPropagation` takes libcontainer's names ([`super::propagation`]).

use std::path::Path;

use oci_spec::runtime::{
    LinuxNamespace, LinuxNamespaceType, LinuxSeccomp, LinuxSeccompAction, Process, Spec,
};

use super::cgroup;
use super::propagation;
use super::sysctl::{self, Sysctl};
use crate::error::{AgentError, Result};

/// The annotation CRI sets to the pod's sandbox container id.
pub const SANDBOX_ID_ANNOTATION: &str = "io.kubernetes.cri.sandbox-id";

fn invalid(why: impl Into<String>) -> AgentError {
    AgentError::InvalidArgument(why.into())
}

/// A spec rewritten for the guest, and what the agent does for it outside libcontainer.
#[derive(Debug)]
pub struct Prepared {
    /// The spec libcontainer gets.
    pub spec: Spec,
    /// The pod's network sysctls, for the agent to set ([`sysctl::apply`]).
    pub pod_net_sysctls: Vec<Sysctl>,
}

/// Parses and checks `json`, then rewrites it for the guest. `sandbox_pid` gives the init pid
/// of a known container.
pub fn prepare(
    container_id: &str,
    json: &[u8],
    sandbox_pid: impl Fn(&str) -> Option<i32>,
) -> Result<Prepared> {
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
    let mut process = spec
        .process()
        .clone()
        .ok_or_else(|| invalid("spec has no process"))?;
    check_process(&mut process)?;
    spec.set_process(Some(process));
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
    if let Some(seccomp) = linux.seccomp() {
        check_seccomp(seccomp)?;
    }
    propagation::normalize(&mut linux)?;
    if let Some(label) = linux.mount_label().clone() {
        tracing::warn!(
            container_id,
            label = label.as_str(),
            "linux.mountLabel ignored: the guest kernel has no SELinux"
        );
        linux.set_mount_label(None);
    }
    let mut pod_net_sysctls = Vec::new();
    if let Some(namespaces) = linux.namespaces().clone() {
        let in_pod_net = namespaces
            .iter()
            .any(|n| n.typ() == LinuxNamespaceType::Network && n.path().is_some());
        if in_pod_net {
            pod_net_sysctls = sysctl::take_net(&mut linux);
        }
        linux.set_namespaces(Some(rewrite_namespaces(namespaces, sandbox)));
    }
    linux.set_cgroups_path(Some(cgroup::spec_path(container_id).into()));
    spec.set_linux(Some(linux));
    Ok(Prepared {
        spec,
        pod_net_sysctls,
    })
}

/// Whether CRI marked `spec` as a pod's sandbox container.
pub fn is_sandbox_container(spec: &Spec) -> bool {
    spec.annotations()
        .as_ref()
        .and_then(|a| a.get(super::pause::CONTAINER_TYPE_ANNOTATION))
        .is_some_and(|t| t == "sandbox")
}

/// The sandbox id a spec's annotations name, read without checking the rest of the spec.
pub fn sandbox_id(json: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Annotated {
        #[serde(default)]
        annotations: std::collections::HashMap<String, String>,
    }
    serde_json::from_slice::<Annotated>(json)
        .ok()?
        .annotations
        .remove(SANDBOX_ID_ANNOTATION)
        .filter(|s| !s.is_empty())
}

/// Parses an exec's OCI Process.
pub fn parse_process(json: &[u8]) -> Result<Process> {
    let mut p: Process = serde_json::from_slice(json)
        .map_err(|e| invalid(format!("process is not OCI Process JSON: {e}")))?;
    check_process(&mut p)?;
    Ok(p)
}

/// A filter the guest cannot honour is refused: notify actions hand the container's syscalls
/// to a seccomp agent listening on a host socket, which does not exist inside the VM.
fn check_seccomp(seccomp: &LinuxSeccomp) -> Result<()> {
    if seccomp.default_action() == LinuxSeccompAction::ScmpActNotify
        || seccomp.listener_path().is_some()
        || seccomp
            .syscalls()
            .iter()
            .flatten()
            .any(|s| s.action() == LinuxSeccompAction::ScmpActNotify)
    {
        return Err(invalid(
            "linux.seccomp: SCMP_ACT_NOTIFY and listenerPath (a seccomp agent on the host) are \
             not supported inside a husk VM",
        ));
    }
    Ok(())
}

/// Checks a process and drops the LSM labels the guest kernel cannot apply (AppArmor and
/// SELinux are not built into it: docs/security.md), saying so in the log.
fn check_process(p: &mut Process) -> Result<()> {
    if let Some(profile) = p.apparmor_profile().clone() {
        tracing::warn!(
            profile = profile.as_str(),
            "process.apparmorProfile ignored: the guest kernel has no AppArmor"
        );
        p.set_apparmor_profile(None);
    }
    if let Some(label) = p.selinux_label().clone() {
        tracing::warn!(
            label = label.as_str(),
            "process.selinuxLabel ignored: the guest kernel has no SELinux"
        );
        p.set_selinux_label(None);
    }
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
        .unwrap()
        .spec;
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
        let spec = prepare("c1", &spec_json(d.path(), ""), |_| Some(1))
            .unwrap()
            .spec;
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
    fn seccomp_notify_is_refused_and_lsm_labels_are_dropped() {
        let d = tempfile::tempdir().unwrap();
        let base: serde_json::Value = serde_json::from_slice(&spec_json(d.path(), "")).unwrap();
        let mut notify = base.clone();
        notify["linux"]["seccomp"] = serde_json::json!({"defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_NOTIFY"}]});
        let e = prepare("c1", &serde_json::to_vec(&notify).unwrap(), |_| None).unwrap_err();
        assert!(matches!(e, AgentError::InvalidArgument(_)), "{e}");
        assert!(e.to_string().contains("SCMP_ACT_NOTIFY"), "{e}");
        let mut labelled = base;
        labelled["linux"]["mountLabel"] = "system_u:object_r:x".into();
        labelled["process"]["apparmorProfile"] = "cri-containerd.apparmor.d".into();
        labelled["process"]["selinuxLabel"] = "system_u:system_r:x".into();
        let spec = prepare("c1", &serde_json::to_vec(&labelled).unwrap(), |_| None)
            .unwrap()
            .spec;
        let p = spec.process().as_ref().unwrap();
        assert!(p.apparmor_profile().is_none() && p.selinux_label().is_none());
        assert!(spec.linux().as_ref().unwrap().mount_label().is_none());
    }

    #[test]
    fn net_sysctls_leave_the_spec_only_for_a_container_in_the_pods_network() {
        let d = tempfile::tempdir().unwrap();
        let mut v: serde_json::Value = serde_json::from_slice(&spec_json(d.path(), "")).unwrap();
        v["linux"]["sysctl"] = serde_json::json!({
            "net.ipv4.ping_group_range": "0 2147483647",
            "kernel.msgmax": "8192",
        });
        let p = prepare("c1", &serde_json::to_vec(&v).unwrap(), |_| None).unwrap();
        assert_eq!(
            p.pod_net_sysctls,
            vec![("net.ipv4.ping_group_range".into(), "0 2147483647".into())]
        );
        let left = p.spec.linux().as_ref().unwrap().sysctl().clone().unwrap();
        assert_eq!(left.keys().collect::<Vec<_>>(), vec!["kernel.msgmax"]);

        // A container in a new network namespace of its own: libcontainer sets them there.
        v["linux"]["namespaces"] = serde_json::json!([{"type": "network"}, {"type": "mount"}]);
        let p = prepare("c1", &serde_json::to_vec(&v).unwrap(), |_| None).unwrap();
        assert!(p.pod_net_sysctls.is_empty());
        assert_eq!(
            p.spec
                .linux()
                .as_ref()
                .unwrap()
                .sysctl()
                .as_ref()
                .unwrap()
                .len(),
            2
        );
    }

    #[test]
    fn exec_process_json() {
        assert!(parse_process(br#"{"args":["sh"],"cwd":"/","user":{"uid":0,"gid":0}}"#).is_ok());
        assert!(parse_process(br#"{"args":["sh"],"cwd":"x","user":{"uid":0,"gid":0}}"#).is_err());
        assert!(parse_process(b"[]").is_err());
    }
}

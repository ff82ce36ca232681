//! A pod's sandbox (pause) container, run by a pod anchor ([`crate::container::anchor`])
//! instead of a runner: a CRI sandbox container exists only to hold the pod's namespaces, and
//! libcontainer's create of `/pause` in a fresh runner is the largest single cost of a pod's
//! start in the guest.
//!
//! The anchor is honest about the spec: it creates exactly the namespaces the spec asks for and
//! applies every setting visible outside the container's own mount namespace (cgroup and
//! limits, hostname, sysctls, rlimits, OOM score, user and groups, capabilities,
//! no_new_privileges, seccomp), and its root, which the pod's processes can reach through
//! `/proc/1/root` ([`crate::container::anchor::setup`]). What it does not do is the rest of
//! that mount namespace (mounts, masked and read-only paths, devices) or exec `/pause`: no
//! process ever runs in the sandbox container besides its init, since exec into it is refused
//! ([`crate::container::exec`]). A spec that asks for anything else ([`fits`] names it) goes
//! through a runner like any container.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use nix::sched::CloneFlags;
use oci_spec::runtime::{LinuxNamespaceType, Spec};

use super::process::{HostIo, Process};
use super::runtime::Runtime;
use super::{anchor, cgroup};
use crate::error::{AgentError, Result};
use crate::stdio::pipes::AgentEnds;
use crate::stdio::StdioRequest;

/// The annotation CRI sets to `sandbox` on a pod's sandbox container.
pub const CONTAINER_TYPE_ANNOTATION: &str = "io.kubernetes.cri.container-type";
/// The pause image's entrypoint: a spec that runs anything else runs it, through a runner.
pub const PAUSE_ARGS: [&str; 1] = ["/pause"];

/// The namespaces an anchor creates for `spec`, if an anchor can be the container: `Err` names
/// what sends it to a runner instead.
pub fn fits(spec: &Spec, stdio: &StdioRequest) -> std::result::Result<CloneFlags, String> {
    if !super::spec::is_sandbox_container(spec) {
        return Err(format!(
            "not a CRI sandbox container ({CONTAINER_TYPE_ANNOTATION})"
        ));
    }
    let process = spec.process().as_ref().ok_or("no process")?;
    if process.args().as_deref() != Some(&PAUSE_ARGS.map(String::from)[..]) {
        return Err(format!("process.args is not {PAUSE_ARGS:?}"));
    }
    if stdio.stdin || stdio.stdout || stdio.stderr || stdio.terminal {
        return Err("stdio streams were asked for".into());
    }
    if process.io_priority().is_some()
        || process.scheduler().is_some()
        || process.exec_cpu_affinity().is_some()
    {
        return Err("process.ioPriority, scheduler or execCPUAffinity is set".into());
    }
    if let Some(h) = spec.hooks() {
        let hooks = [
            h.prestart(),
            h.create_runtime(),
            h.create_container(),
            h.start_container(),
            h.poststart(),
            h.poststop(),
        ];
        if hooks
            .iter()
            .any(|l| l.as_ref().is_some_and(|l| !l.is_empty()))
        {
            return Err("the spec has hooks".into());
        }
    }
    let linux = spec.linux().as_ref().ok_or("no linux section")?;
    if linux.uid_mappings().is_some()
        || linux.gid_mappings().is_some()
        || linux.net_devices().is_some()
        || linux.intel_rdt().is_some()
        || linux.memory_policy().is_some()
        || linux.personality().is_some()
        || linux.time_offsets().is_some()
    {
        return Err(
            "linux.uidMappings, gidMappings, netDevices, intelRdt, memoryPolicy, personality \
             or timeOffsets is set"
                .into(),
        );
    }
    let mut flags = CloneFlags::empty();
    let mut own_mount_ns = false;
    for ns in linux.namespaces().iter().flatten() {
        if ns.path().is_some() {
            return Err(format!("it joins a {:?} namespace", ns.typ()));
        }
        flags |= match ns.typ() {
            LinuxNamespaceType::Ipc => CloneFlags::CLONE_NEWIPC,
            LinuxNamespaceType::Uts => CloneFlags::CLONE_NEWUTS,
            LinuxNamespaceType::Pid => CloneFlags::CLONE_NEWPID,
            // Made by the anchor itself, once in its cgroup (setup.rs).
            LinuxNamespaceType::Cgroup => CloneFlags::empty(),
            // Made by the anchor itself around its root (setup.rs).
            LinuxNamespaceType::Mount => {
                own_mount_ns = true;
                CloneFlags::empty()
            }
            other => return Err(format!("it asks for a new {other:?} namespace")),
        };
    }
    if !own_mount_ns {
        return Err("no mount namespace of its own".into());
    }
    if (spec.hostname().is_some() || spec.domainname().is_some())
        && !flags.contains(CloneFlags::CLONE_NEWUTS)
    {
        return Err("a hostname without a UTS namespace of its own".into());
    }
    Ok(flags)
}

/// Runs the sandbox container `id` as an anchor: writes the prepared spec into `bundle` and
/// returns the anchor as the container's init, once it reported ready.
pub async fn create(
    rt: &Runtime,
    id: &str,
    spec: &Spec,
    stdio: StdioRequest,
    namespaces: CloneFlags,
    bundle: &Path,
) -> Result<Arc<Process>> {
    let config = super::create::write_bundle(bundle, spec)?;
    let since = rt.reaper.epoch();
    let started = Instant::now();
    let exe = rt.config.exe.clone();
    let no_pivot = rt.config.no_pivot;
    let pid = tokio::task::spawn_blocking(move || {
        let role = anchor::Role::Sandbox {
            spec: &config,
            no_pivot,
        };
        anchor::spawn(&exe, namespaces, role)
    })
    .await
    .map_err(AgentError::task("pod anchor task"))??;
    let anchor_ms = started.elapsed().as_millis() as u64;
    let process = Process::new(id, "", stdio, cgroup::dir(id));
    process.set_pid(pid);
    process.set_io(HostIo::Pipes(AgentEnds::default()));
    let oom = Arc::clone(&rt.oom);
    let cid = id.to_string();
    process.supervise(rt.reaper.watch(pid, since), move |_| oom.check(&cid));
    // The pod's next container will want a runner: start it while containerd prepares that
    // container on the host (crate::runner::spare).
    rt.runners.prime();
    tracing::info!(
        container_id = id,
        pid,
        anchor_ms,
        "container created (the pod's sandbox, held by an anchor)"
    );
    Ok(process)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shape of containerd's sandbox container spec, after spec::prepare.
    fn sandbox_spec() -> serde_json::Value {
        serde_json::json!({
            "ociVersion": "1.1.0",
            "root": {"path": "/run/x/rootfs", "readonly": true},
            "hostname": "pod-a",
            "process": {
                "args": ["/pause"], "cwd": "/", "user": {"uid": 65535, "gid": 65535},
                "noNewPrivileges": true, "oomScoreAdj": -998,
                "capabilities": {"bounding": ["CAP_CHOWN"], "effective": ["CAP_CHOWN"],
                                 "permitted": ["CAP_CHOWN"]}
            },
            "annotations": {
                "io.kubernetes.cri.container-type": "sandbox",
                "io.kubernetes.cri.sandbox-id": "sb"
            },
            "linux": {
                "cgroupsPath": "/husk/sb",
                "sysctl": {"kernel.shmmni": "4096"},
                "namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"},
                               {"type": "mount"}, {"type": "cgroup"}],
                "maskedPaths": ["/proc/kcore"],
                "seccomp": {"defaultAction": "SCMP_ACT_ERRNO"}
            }
        })
    }

    fn check(v: &serde_json::Value) -> std::result::Result<CloneFlags, String> {
        let spec: Spec = serde_json::from_value(v.clone()).unwrap();
        fits(&spec, &StdioRequest::default())
    }

    #[test]
    fn containerds_sandbox_container_fits() {
        assert_eq!(
            check(&sandbox_spec()).unwrap(),
            CloneFlags::CLONE_NEWIPC | CloneFlags::CLONE_NEWUTS | CloneFlags::CLONE_NEWPID
        );
        // hostPID and hostIPC pods: only the namespaces asked for.
        let mut v = sandbox_spec();
        v["linux"]["namespaces"] = serde_json::json!([{"type": "uts"}, {"type": "mount"}]);
        assert_eq!(check(&v).unwrap(), CloneFlags::CLONE_NEWUTS);
    }

    #[test]
    fn anything_else_goes_to_a_runner_and_says_why() {
        type Edit = fn(&mut serde_json::Value);
        let cases: Vec<(Edit, &str)> = vec![
            (
                |v| v["annotations"] = serde_json::json!({}),
                "not a CRI sandbox",
            ),
            (
                |v| v["process"]["args"] = serde_json::json!(["/pause", "-v"]),
                "process.args",
            ),
            (
                |v| v["hooks"] = serde_json::json!({"prestart": [{"path": "/bin/true"}]}),
                "hooks",
            ),
            (
                |v| v["linux"]["namespaces"] = serde_json::json!([{"type": "network"}]),
                "new Network namespace",
            ),
            (
                |v| v["linux"]["namespaces"] = serde_json::json!([{"type": "user"}]),
                "new User namespace",
            ),
            (
                |v| {
                    v["linux"]["namespaces"] =
                        serde_json::json!([{"type": "ipc", "path": "/proc/9/ns/ipc"}])
                },
                "joins a Ipc namespace",
            ),
            (
                |v| {
                    v["linux"]["namespaces"] =
                        serde_json::json!([{"type": "pid"}, {"type": "mount"}])
                },
                "hostname without a UTS namespace",
            ),
            (
                |v| v["linux"]["namespaces"] = serde_json::json!([{"type": "uts"}]),
                "no mount namespace",
            ),
            (
                |v| v["linux"]["uidMappings"] = serde_json::json!([]),
                "uidMappings",
            ),
            (
                |v| v["process"]["scheduler"] = serde_json::json!({"policy": "SCHED_OTHER"}),
                "scheduler",
            ),
        ];
        for (edit, want) in cases {
            let mut v = sandbox_spec();
            edit(&mut v);
            let why = check(&v).unwrap_err();
            assert!(why.contains(want), "{why} !~ {want}");
        }
        let spec: Spec = serde_json::from_value(sandbox_spec()).unwrap();
        let streams = StdioRequest {
            stdout: true,
            ..Default::default()
        };
        assert!(fits(&spec, &streams).unwrap_err().contains("stdio"));
    }
}
